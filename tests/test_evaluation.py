"""Evaluation pipeline: grouping, the evaluate.py CLI, and every figure."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import rattled

from jaxcrystal.data import datasets
from jaxcrystal.generative import model as model_lib
from jaxcrystal.evaluation import evaluate as evaluation
from jaxcrystal.data import io as io_lib
from jaxcrystal.plotting import process_views
from jaxcrystal.plotting import structure_plots
from jaxcrystal.evaluation import validation

ROOT = Path(__file__).resolve().parents[1]


def test_group_predictions_pairs_by_row_never_by_position():
  test = datasets.builtin_structures()[:3]
  for row, t in enumerate(test):
    t.info['row'] = row
  samples = [s.copy() for s in test for _ in range(2)]
  for j, s in enumerate(samples):
    s.info['source_row'] = j // 2
  groups = evaluation.group_predictions(samples, test)
  assert [len(g) for g in groups] == [2, 2, 2]
  # Reordered samples land with their own rows, not by position.
  reordered = evaluation.group_predictions(samples[::-1], test)
  assert [[s.info['source_row'] for s in g] for g in reordered] == [[0, 0], [1, 1], [2, 2]]
  # A row without samples, a sample of a row the file lacks, no rows at all.
  with pytest.raises(evaluation.PairingError, match='1 test rows have no samples, first row 2'):
    evaluation.group_predictions(samples[:4], test)
  stray = samples[0].copy()
  stray.info['source_row'] = 9
  with pytest.raises(evaluation.PairingError, match='sample 6 was made for row 9'):
    evaluation.group_predictions(samples + [stray], test)
  bare = [s.copy() for s in test]
  for s in bare:
    s.info.pop('source_row', None)
  with pytest.raises(evaluation.PairingError, match='3 of 3 samples do not record'):
    evaluation.group_predictions(bare, test)
  # Files without rows (DiffCSP's) pair by position only when asked.
  assert len(evaluation.group_predictions(bare, test, by_position=True)) == 3
  with pytest.raises(ValueError, match='not a multiple'):
    evaluation.group_predictions(bare[:-1] + bare, test, by_position=True)
  wrong = [datasets.builtin_structures()[10]] + samples[1:]  # Fe2 where Al4 is due
  wrong[0].info['source_row'] = 0
  with pytest.raises(ValueError, match='test row 0 has composition Fe2'):
    evaluation.group_predictions(wrong, test)


def test_random_subset_is_a_seeded_subset_in_file_order():
  test = datasets.builtin_structures()
  for row, t in enumerate(test):
    t.info['row'] = row
  picked, rows = evaluation.random_subset(test, 5, seed=3)
  assert len(picked) == 5 and len(set(rows.tolist())) == 5
  assert np.all(np.diff(rows) > 0)
  assert [p.get_chemical_formula() for p in picked] == [
      test[i].get_chemical_formula() for i in rows]
  again, rows_again = evaluation.random_subset(test, 5, seed=3)
  np.testing.assert_array_equal(rows, rows_again)
  assert not np.array_equal(rows, evaluation.random_subset(test, 5, seed=4)[1])
  everything, all_rows = evaluation.random_subset(test, 0)
  assert len(everything) == len(test) and all_rows.tolist() == list(range(len(test)))
  with pytest.raises(ValueError, match='asked for 99 rows'):
    evaluation.random_subset(test, 99)
  # K samples per target, in the order group_predictions expects.
  comps, source_rows = evaluation.csp_compositions(picked, 3)
  assert len(comps) == 15
  np.testing.assert_array_equal(comps[3], picked[1].numbers)
  assert source_rows[3] == rows[1]  # the target's file row
  report = evaluation.markdown_report(
      dict(task='csp', k=1, match_rate=0.5, rmse=0.1, test_rows_evaluated=5,
           test_rows_in_file=len(test), target_seed=3), 'perov_5')
  assert f'random subset of 5 of the {len(test)} test rows (seed 3)' in report


def test_evaluate_cli_csp_end_to_end(tmp_path):
  # Low-symmetry targets: StructureMatcher reduces an ideal fcc cell to its
  # one-atom primitive cell, which a noisy 4-atom prediction cannot match.
  test = rattled(datasets.builtin_structures(), 0.3, 5)
  io_lib.write_extxyz(tmp_path / 'test.extxyz', test)
  # K = 2: a badly perturbed and a mildly perturbed prediction per test row.
  bad, good = rattled(test, 0.08, 0), rattled(test, 0.01, 1)
  io_lib.write_npz(tmp_path / 'samples.npz', [s for pair in zip(bad, good) for s in pair],
                   source_row=np.repeat(np.arange(len(test)), 2))
  cmd = [sys.executable, str(ROOT / 'experiments' / 'evaluate.py'),
         f'--samples={tmp_path / "samples.npz"}', f'--test_csv={tmp_path / "test.extxyz"}',
         '--task=csp', f'--out={tmp_path / "out"}', '--workers=1', '--noprogress']
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  assert result['k'] == 2 and result['match_rate_k'] >= 0.9
  # The first prediction of each pair is the worse one: best of 2 beats it.
  assert result['match_rate'] <= result['match_rate_k']
  assert 0 < result['rmse_k'] < result['rmse']
  table = (tmp_path / 'out' / 'metrics.md').read_text()
  assert '| jaxcrystal | ' in table and 'DiffCSP (published' in table
  for name in ('batch_analysis.png', 'real_vs_generated.png'):
    assert (tmp_path / 'out' / name).stat().st_size > 10_000
  # (A missing --samples file is one line: tests/test_fuzz_scripts.py.)


def test_evaluate_cli_dng_without_uniqueness(tmp_path):
  builtin = datasets.builtin_structures()
  broken = builtin[0].copy()
  broken.positions[1] = broken.positions[0]  # overlapping: structurally invalid
  io_lib.write_extxyz(tmp_path / 'ref.extxyz', builtin)
  io_lib.write_npz(tmp_path / 'samples.npz', builtin + [broken])
  cmd = [sys.executable, str(ROOT / 'experiments' / 'evaluate.py'),
         f'--samples={tmp_path / "samples.npz"}', f'--test_csv={tmp_path / "ref.extxyz"}',
         '--task=dng', '--dataset=carbon_24', '--workers=1', '--noprogress']
  done = subprocess.run(cmd + [f'--out={tmp_path / "a"}', '--nounique_novel'],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads((tmp_path / 'a' / 'metrics.json').read_text())
  assert result['struct_validity'] == pytest.approx(21 / 22)
  assert result['cov_recall'] == 1.0 and 'uniqueness' not in result
  assert '## DNG on carbon_24' in (tmp_path / 'a' / 'metrics.md').read_text()
  too_many = subprocess.run(cmd + [f'--out={tmp_path / "c"}', '--subset=99'],
                            capture_output=True, text=True, timeout=120)
  assert too_many.returncode != 0 and 'asked for 99 rows' in too_many.stderr


@pytest.fixture(scope='module')
def tiny_spec():
  return model_lib.build(model_lib.ModelConfig(num_steps=20).with_network(
      hidden=16, num_layers=1, num_freqs=4, time_dim=8))


def test_forward_snapshots_follow_the_schedule(tiny_spec):
  diamond = datasets.builtin_structures()[14]
  frames, labels = process_views.forward_snapshots(jax.random.PRNGKey(0), tiny_spec,
                                                   diamond)
  assert len(frames) == len(labels) == 5 and labels[0].startswith('t = 0')
  np.testing.assert_allclose(frames[0].positions, diamond.positions)
  def moved_by(frame):  # largest periodic fractional displacement
    d = frame.get_scaled_positions() - diamond.get_scaled_positions()
    return np.abs(d - np.round(d)).max()
  moved = [moved_by(f) for f in frames[1:]]
  assert moved[0] < 0.05 and moved[-1] > 0.1  # small noise first, then large
  assert not np.allclose(frames[-1].cell[:], diamond.cell[:])  # the lattice is noised too


def test_sampling_trajectory_ends_at_a_sample(tiny_spec, keys):
  from jaxcrystal.data import batch as batch_lib
  diamond = datasets.builtin_structures()[14]
  params = tiny_spec.init_params(next(keys),
                                 batch_lib.to_device(batch_lib.batch_from_atoms([diamond])))
  frames, labels = process_views.sampling_trajectory(next(keys), tiny_spec, params,
                                                     diamond.numbers)
  assert len(frames) == 5 and labels[-1].startswith('step 20 of 20')
  assert all(len(f) == 8 for f in frames)
  assert not np.allclose(frames[0].positions, frames[-1].positions)


def test_every_figure_is_written(tmp_path, tiny_spec):
  real = datasets.builtin_structures()
  generated = rattled(real, 0.3, 0)
  generated[0].positions[1] = generated[0].positions[0]  # one invalid sample
  sched = tiny_spec.processes['lattice'].schedule
  paths = [
      structure_plots.plot_schedule(sched.betas, sched.alpha_bars,
                                    tiny_spec.processes['coords'].schedule.sigmas,
                                    tmp_path / 'schedule.png'),
      structure_plots.plot_structure_snapshots(real[:3], ['a', 'b', 'c'],
                                               tmp_path / 'snapshots.png', 'x'),
      structure_plots.plot_real_vs_generated(
          real, generated, np.linspace(0, 6, 10), {'g': np.ones(10)}, {'rate': 0.5},
          tmp_path / 'real_vs_generated.png'),
      structure_plots.plot_batch_analysis(validation.summary_arrays(generated),
                                          generated, tmp_path / 'batch.png'),
  ]
  for path in paths:
    assert path.stat().st_size > 10_000
  with pytest.raises(ValueError, match='3 frames and 2 labels'):
    structure_plots.plot_structure_snapshots(real[:3], ['a', 'b'], tmp_path / 'x.png', '')
