"""Runs that go wrong stop in one line (issue 29): training that diverges,
sampling beyond the model's size budget, damaged checkpoints."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import quadratic_run

from jaxcrystal import errors
from jaxcrystal.plotting import plots

FIXTURES = Path(__file__).resolve().parent / 'fixtures'


def test_a_diverging_run_stops_naming_the_step_and_saves_nothing_after(tmp_path):
  """From step 2 on every loss is infinite (as when an exploding model's
  outputs overflow) and its step is skipped."""
  workdir = tmp_path / 'run'
  with pytest.raises(errors.TrainingDivergedError,
                     match=r'training step 5: 3 of the last 5 steps were skipped .*'
                           r'diverged .*the last good checkpoint is step 4 in '):
    quadratic_run(workdir, lr=0.1, steps=30,
                  target=lambda step: 2.0 if step < 2 else float('inf'))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2', '4']
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['skipped'] for r in records] == [0, 0, 1, 2, 3]
  summary, _ = quadratic_run(tmp_path / 'ok', lr=0.1, steps=30)  # a healthy run
  assert summary['skipped_steps'] == 0 and summary['final_step'] == 30


def test_training_curve_tolerates_missing_values(tmp_path):
  records = [{'step': 1, 'split': 'train', 'loss': 1.0, 'coords': None},
             {'step': 2, 'split': 'train', 'loss': None, 'coords': 0.5},
             {'step': 3, 'split': 'train', 'loss': float('nan')},
             {'step': 3, 'split': 'val', 'loss': 0.7}]
  path = plots.plot_training_curve(records, tmp_path / 'curve.png', keys=('loss', 'coords'))
  assert path.stat().st_size > 1000
  assert np.isfinite(records[0]['loss'])


def test_a_damaged_checkpoint_is_one_line_naming_the_others(tmp_path):
  from jaxcrystal.generative import generate
  from jaxcrystal.training import checkpoints
  run = tmp_path / 'run'
  shutil.copytree(FIXTURES / 'legacy_run_csp', run)
  for data in (run / 'best').rglob('ocdbt.process_0/d/*'):
    data.write_bytes(data.read_bytes()[:20])          # cut short
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=r'run: the checkpoint of step 30 \(best\) cannot be read '
                           r'\(.*\); other checkpoints: --which=20, --which=30$') as err:
    generate.load_run(run, 'best')
  assert '\n' not in str(err.value)
  assert generate.load_run(run, 'latest')[3] == 30     # the others still load
  (run / 'checkpoints' / '20' / 'state' / '_METADATA').write_text('garbage')
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=r'step 20 \(20\) cannot be read \(JSONDecodeError.*'
                           r'--which=best \(step 30\), --which=30'):
    generate.load_run(run, '20')


def test_sampling_refuses_a_structure_beyond_the_budget():
  from jaxcrystal.data import readers
  from jaxcrystal.generative import generate
  assert len(readers.parse_formula('C5000O5000')) == readers.MAX_FORMULA_ATOMS
  with pytest.raises(ValueError, match='more than 10000 atoms'):
    readers.parse_formula('C5000O5000H')
  generate.check_size_budget([[6] * 20, [6] * 8], 20, 'x')
  with pytest.raises(errors.UserError, match=r"^--formula C21: a structure of 21 atoms, "
                     r"more than this model's budget of 20"):
    generate.check_size_budget([[6] * 21], 20, '--formula C21')
