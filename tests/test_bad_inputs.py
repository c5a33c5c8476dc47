"""A corpus of broken inputs, flags and folders, each with its exact outcome.

Everything broken is made here from good data (truncations, zero and
collinear cells, NaN, duplicate sites, unknown elements, missing columns,
partial JSON lines); nothing is committed as a blob. Each case asserts the
message that names the file, row (and id) and reason, the skip report, or
the refusal. Command-line cases assert one line on stderr and exit code 2.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import ase
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from helpers import quadratic_run
from helpers import write_cdvae_csv

from jaxcrystal import errors
from jaxcrystal.data import datasets
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import outputs
from jaxcrystal.data import readers
from jaxcrystal.evaluation import evaluate as evaluation
from jaxcrystal.evaluation import validation
from jaxcrystal.generative import request
from jaxcrystal.generative import train
from jaxcrystal.geometry import spacegroup
from jaxcrystal.training import checkpoints
from jaxcrystal.training import state as state_lib

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'
SCRIPTS = ROOT / 'experiments'


def cif_of(atoms) -> str:
  """CIF text as pymatgen writes it (and the CDVAE CSVs hold)."""
  return str(CifWriter(AseAtomsAdaptor.get_structure(atoms)))


def good_structures():
  """Four distinct crystals: Al4, NaCl (8 atoms), C8, Fe2."""
  builtin = datasets.builtin_structures()
  nacl = bulk('NaCl', 'rocksalt', a=5.64, cubic=True)
  return [builtin[0], nacl, builtin[17], builtin[7]]


def atom_lines(cif: str) -> list[str]:
  return [line for line in cif.splitlines()
          if re.match(r'\s+[A-Z][a-z]?\s+[A-Z][a-z]?\d+\s+1\s', line)]


# ----------------------------------------------------------------------------
# Corrupted rows of a CDVAE CSV: (mutation of row 1's CIF, formula) -> reason


def _replace_cell(cif, **values):
  for key, value in values.items():
    cif = re.sub(rf'(_cell_{key}\s+)\S+', rf'\g<1>{value}', cif)
  return cif


def _nan_coordinate(cif):
  line = atom_lines(cif)[2]
  parts = line.split()
  parts[3] = 'nan'
  return cif.replace(line, '  ' + '  '.join(parts))


def _duplicate_site(cif):
  first, second = atom_lines(cif)[:2]
  p1, p2 = first.split(), second.split()
  p2[3:6] = p1[3:6]
  return cif.replace(second, '  ' + '  '.join(p2))


def _cut_in_atom_list(cif):
  return cif[:cif.index(atom_lines(cif)[-1])]


def _cut_mid_line(cif):
  last = atom_lines(cif)[-1]
  return cif[:cif.index(last) + len(last) // 2]


def _unknown_element(cif):
  return re.sub(r'(?m)^(\s+)Cl(\s+)Cl(\d+)', r'\1Og\2Og\3', cif)


ROW_CASES = {
    'corrupt_cif': (lambda cif: 'data_broken\n_cell_length_a 3\nthis is not a cif',
                    r'CIF has no _cell_length_b'),
    'zero_length_cell': (lambda cif: _replace_cell(cif, length_b=0.0),
                         r'zero-length cell edge \(a, b, c = 5.64, 0, 5.64 A\)'),
    'collinear_cell': (lambda cif: _replace_cell(cif, angle_alpha=0.0, angle_beta=0.0,
                                                 angle_gamma=0.0),
                       r'collinear or coplanar \(angles 0, 0, 0 degrees\)'),
    'nan_coordinate': (_nan_coordinate, r'NaN or non-numeric coordinate at site'),
    'duplicate_site': (_duplicate_site,
                       r'atoms overlap: site \w+ is 0.000 A from another site'),
    'cif_cut_in_atom_list': (_cut_in_atom_list,
                             r"7 atoms \(\w+\) but the CIF declares "
                             r"_chemical_formula_sum 'Na4 Cl4'.*truncated file"),
    'cif_cut_mid_line': (_cut_mid_line, r'malformed CIF'),
    'unknown_element': (_unknown_element,
                        r'element Og \(Z = 118\) is outside Z = 1..100'),
    'absurd_cell': (lambda cif: _replace_cell(cif, length_c=1000.0),
                    r'cell edge of 1000 A exceeds 100 A: not a bulk crystal'),
    'not_an_element': (lambda cif: re.sub(r'(?m)^(\s+)Cl(\s+)Cl(\d+)', r'\1Qq\2Qq\3', cif),
                       r"unknown element symbol 'Qq' \(not in the periodic table\)"),
}


@pytest.fixture
def good_csv(tmp_path):
  """A clean CSV of four crystals with a formula column; returns (path, texts)."""
  rows = [(f'id-{k}', cif_of(a), a.get_chemical_formula(mode='reduce'))
          for k, a in enumerate(good_structures())]
  path = tmp_path / 'good.csv'
  write_cdvae_csv(path, rows)
  return path, rows


def _write_with_row1(tmp_path, rows, cif=None, formula=None):
  rows = list(rows)
  mid, text, form = rows[1]
  rows[1] = ('bad', cif if cif is not None else text,
             formula if formula is not None else form)
  path = tmp_path / 'broken.csv'
  write_cdvae_csv(path, rows)
  return path


def test_the_good_csv_loads_whole(good_csv):
  path, rows = good_csv
  structures, report = readers.read_structures(path)
  assert [s.info['material_id'] for s in structures] == [r[0] for r in rows]
  assert not report.skipped and [len(s) for s in structures] == [4, 8, 8, 2]


@pytest.mark.parametrize('case', sorted(ROW_CASES))
def test_bad_csv_row_is_named_or_skipped_and_reported(case, good_csv, tmp_path):
  mutate, reason = ROW_CASES[case]
  _, rows = good_csv
  path = _write_with_row1(tmp_path, rows, cif=mutate(rows[1][1]))
  with pytest.raises(readers.DataError) as err:
    readers.read_structures(path)
  message = str(err.value)
  assert message.startswith(f'{path}, row 1 (bad): '), message
  assert re.search(reason, message), message
  assert 'Invalid CIF file with no structures' not in message
  assert '\n' not in message
  kept, report = readers.read_structures(path, skip_bad=True)
  assert [s.info['row'] for s in kept] == [0, 2, 3]
  assert [(s.row, s.identifier) for s in report.skipped] == [(1, 'bad')]
  assert re.search(reason, report.skipped[0].reason)
  assert 'row 1 (bad)' in report.summary()


def test_formula_column_is_checked(good_csv, tmp_path):
  _, rows = good_csv
  path = _write_with_row1(tmp_path, rows, formula='NaCl2')
  with pytest.raises(readers.DataError,
                     match=r"row 1 \(bad\): atoms Cl4Na4 do not match the formula "
                           r"column 'NaCl2'"):
    readers.read_structures(path)


def _cut_row_short(text):
  lines = text.splitlines(keepends=True)  # the last physical line is '",Fe\n'
  return ''.join(lines[:-1]) + lines[-1].rsplit(',', 1)[0] + '\n'


# Damage to a whole CSV file: (mutation of its text, message, rows kept by
# skip_bad; None where the file as a whole is refused).
FILE_CASES = {
    'cut_inside_quoted_cif': (lambda t: t[:t.rindex('_cell_length_b')],
                              r'row 3 \(3\): the file ends inside this row', 3),
    'cut_inside_last_field': (lambda t: t[:-3], r'row 3 \(id-3\): the file ends '
                              r'inside this row \(no final newline\)', 3),
    'row_cut_short': (_cut_row_short,
                      r'row 3 \(id-3\): row has 3 of 4 columns: cut short', 3),
    'extra_field': (lambda t: t.rstrip('\n') + ',surplus\n',
                    r'row 3 \(id-3\): row has more fields', 3),
    'no_cif_column': (lambda t: t.replace(',cif,', ',structure,', 1),
                      r'no "cif" column', None),
}


@pytest.mark.parametrize('case', sorted(FILE_CASES))
def test_damaged_csv_file(case, good_csv, tmp_path):
  mutate, pattern, kept = FILE_CASES[case]
  path, _ = good_csv
  damaged = tmp_path / 'damaged.csv'
  damaged.write_text(mutate(path.read_text()))
  with pytest.raises(readers.DataError) as err:
    readers.read_structures(damaged)
  assert str(err.value).startswith(f'{damaged}') and re.search(pattern, str(err.value))
  if kept is not None:
    structures, report = readers.read_structures(damaged, skip_bad=True)
    assert len(structures) == kept and [s.row for s in report.skipped] == [3]


def test_cif_files_take_the_same_path(tmp_path):
  nacl = good_structures()[1]
  blocks = [cif_of(nacl), _nan_coordinate(cif_of(nacl)), cif_of(nacl)]
  path = tmp_path / 'three.cif'
  path.write_text('\n'.join(blocks))
  with pytest.raises(readers.DataError,
                     match=r'three\.cif, row 1 \(\w+\): NaN or non-numeric '
                           r'coordinate'):
    readers.read_structures(path)
  kept, report = readers.read_structures(path, skip_bad=True)
  assert len(kept) == 2 and report.skipped[0].row == 1


def test_extxyz_truncated_nan_flat_and_over_budget(tmp_path):
  good = bulk('Cu', 'fcc', a=3.6, cubic=True) * (2, 1, 1)
  path = tmp_path / 'frames.extxyz'
  ase.io.write(path, [good] * 3, format='extxyz')
  lines = path.read_text().splitlines(keepends=True)
  cut = tmp_path / 'cut.extxyz'
  cut.write_text(''.join(lines[:-3]))
  with pytest.raises(readers.DataError,
                     match=r'cut\.extxyz, row 2 \(2\): cannot be read .*truncated'):
    readers.read_structures(cut)
  nan, flat = good.copy(), good.copy()
  nan.positions[3, 1] = np.nan
  flat.cell[2] = flat.cell[0]
  bad = tmp_path / 'bad.extxyz'
  ase.io.write(bad, [good, nan, flat], format='extxyz')
  kept, report = readers.read_structures(bad, skip_bad=True)
  assert len(kept) == 1
  assert report.skipped[0].reason == 'NaN or infinite coordinates'
  assert re.fullmatch(r'cell volume \S+ A\^3 is zero or negative', report.skipped[1].reason)
  with pytest.raises(readers.DataError, match=r'row 0 \(0\): 8 atoms exceed the '
                                              r'budget of 4'):
    readers.read_structures(path, max_atoms=4)


def test_generated_samples_are_read_as_they_are(tmp_path):
  """NaN samples score as invalid from extxyz just as from npz."""
  good = datasets.builtin_structures()[:3]
  broken = good[1].copy()
  broken.positions[0] = np.nan
  samples = [good[0], broken, good[2]]
  io_lib.write_extxyz(tmp_path / 's.extxyz', samples)
  io_lib.write_npz(tmp_path / 's.npz', samples)
  from_xyz = evaluation.read_samples(tmp_path / 's.extxyz')
  from_npz = evaluation.read_samples(tmp_path / 's.npz')
  assert len(from_xyz) == len(from_npz) == 3
  valid = [validation.summary_arrays(s)['valid'].tolist() for s in (from_xyz, from_npz)]
  assert valid[0] == valid[1] == [True, False, True]


# ----------------------------------------------------------------------------
# Compositions files, skip reports and pairing by row


def test_compositions_from_a_file_with_a_bad_row(good_csv, tmp_path):
  _, rows = good_csv
  path = _write_with_row1(tmp_path, rows, cif=_duplicate_site(rows[1][1]))
  config = train.TrainConfig()
  with pytest.raises(readers.DataError, match=r'row 1 \(bad\): atoms overlap'):
    request.compositions_for_request(config, compositions_from=str(path))
  comps, lattices, source_rows, report = request.compositions_for_request(
      config, compositions_from=str(path), samples_per_composition=2, skip_bad=True)
  assert source_rows == [0, 0, 2, 2, 3, 3] and lattices is None
  assert [len(c) for c in comps] == [4, 4, 8, 8, 2, 2]
  assert [(s.row, s.identifier) for s in report.skipped] == [(1, 'bad')]
  # The same file read for evaluation with the same skip pairs every sample
  # with its own row, though positions shifted past the skipped one.
  targets, _ = readers.read_structures(path, skip_bad=True)
  samples = [targets[[0, 2, 3].index(r)].copy() for r in source_rows]
  for s, r in zip(samples, source_rows):
    s.info['source_row'] = r
  groups = evaluation.group_predictions(samples, targets)
  assert [[s.info['source_row'] for s in g] for g in groups] == [[0, 0], [2, 2], [3, 3]]
  skipped = json.loads(readers.skip_reports_json([report]))
  assert skipped[0]['skipped'][0]['row'] == 1 and 'overlap' in skipped[0]['skipped'][0]['reason']


# ----------------------------------------------------------------------------
# Output folders


def test_output_folder_refuses_then_replaces_whole(tmp_path):
  out = tmp_path / 'samples'
  structures = datasets.builtin_structures()
  with outputs.output_folder(out) as staging:
    io_lib.write_cifs(staging / 'cifs', structures[:20])
  assert len(list((out / 'cifs').iterdir())) == 20
  with pytest.raises(errors.OutputExistsError, match='already holds files.*--overwrite'):
    with outputs.output_folder(out):
      pass
  with outputs.output_folder(out, overwrite=True) as staging:
    io_lib.write_cifs(staging / 'cifs', structures[:5])
  assert len(list((out / 'cifs').iterdir())) == 5  # not 20: the old run went first
  assert not (out / outputs.MARKER).exists()


def test_a_failing_run_leaves_no_output_folder(tmp_path):
  out = tmp_path / 'eval'
  with pytest.raises(RuntimeError):
    with outputs.output_folder(out) as staging:
      (staging / 'metrics.json').write_text('{}')
      raise RuntimeError('figure failed')
  assert not out.exists() and not list(tmp_path.iterdir())


def test_sampling_killed_mid_write_leaves_a_folder_readers_refuse(tmp_path):
  """kill -9 while the CIFs are written: no --out appears, and the staging
  folder is marked and refused by every reader."""
  out = tmp_path / 'samples'
  compositions = tmp_path / 'compositions.extxyz'
  io_lib.write_extxyz(compositions, datasets.builtin_structures()[:6])
  driver = textwrap.dedent(f'''
      import os, runpy, signal, sys
      sys.path.insert(0, {str(SCRIPTS)!r})
      from jaxcrystal.data import io
      real = io.write_cifs
      def write_then_die(directory, structures, prefix='structure'):
        real(directory, list(structures)[:2], prefix)
        os.kill(os.getpid(), signal.SIGKILL)
      io.write_cifs = write_then_die
      sys.argv = ['sample.py', '--checkpoint={FIXTURES / "legacy_run_csp"}',
                  '--which=latest', '--compositions_from={compositions}',
                  '--out={out}', '--noprogress']
      runpy.run_path({str(SCRIPTS / "sample.py")!r}, run_name='__main__')
  ''')
  done = subprocess.run([sys.executable, '-c', driver], capture_output=True,
                        text=True, timeout=300, cwd=ROOT)
  assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
  assert not out.exists()
  staging = tmp_path / '.samples.partial'
  assert (staging / outputs.MARKER).is_file() and (staging / 'samples.npz').is_file()
  with np.load(staging / 'samples.npz') as written:  # each sample's file row
    assert written['source_row'].tolist() == list(range(6))
  with pytest.raises(errors.IncompleteOutputError, match='did not finish'):
    evaluation.read_samples(staging / 'samples.npz')
  with pytest.raises(errors.IncompleteOutputError):
    readers.read_structures(staging / 'samples.extxyz')
  with pytest.raises(readers.DataError, match='no such file'):
    evaluation.read_samples(out / 'samples.npz')


# ----------------------------------------------------------------------------
# Training: resume checks, damaged logs, non-finite updates, strict JSON


def test_train_step_does_not_apply_a_non_finite_update():
  optimizer = optax.sgd(float('inf'))
  state = state_lib.initial_state({'w': jnp.ones(3)}, optimizer, jax.random.PRNGKey(0))
  loss_fn = lambda rng, p, batch: (jnp.sum((p['w'] - batch) ** 2), {})
  new, metrics = state_lib.make_train_step(loss_fn, optimizer, 0.9)(
      state, jnp.full(3, 2.0))
  assert bool(metrics['finite']) and not bool(metrics['update_finite'])
  np.testing.assert_array_equal(new.params['w'], np.ones(3))
  np.testing.assert_array_equal(new.ema_params['w'], np.ones(3))
  ok, metrics = state_lib.make_train_step(loss_fn, optax.sgd(0.1), 0.9)(
      state_lib.initial_state({'w': jnp.ones(3)}, optax.sgd(0.1),
                              jax.random.PRNGKey(0)), jnp.full(3, 2.0))
  assert bool(metrics['update_finite'])
  np.testing.assert_allclose(ok.params['w'], 1.2)  # w - 0.1 * 2 (w - 2)


def test_non_finite_update_stops_the_run_naming_the_step(tmp_path):
  with pytest.raises(errors.NonFiniteUpdateError,
                     match=r'training step 1: the update would make the parameters '
                           r'NaN or infinite'):
    quadratic_run(tmp_path / 'inf', lr=float('inf'))
  assert not list((tmp_path / 'inf').glob('checkpoints/*'))  # nothing non-finite saved
  summary, _ = quadratic_run(tmp_path / 'ok', lr=0.1)
  assert summary['final_step'] == 6


def test_resume_refuses_changes_that_alter_results_and_records_others(tmp_path):
  workdir = tmp_path / 'run'
  quadratic_run(workdir, lr=0.1, steps=4)
  stored = (workdir / 'config.json').read_text()
  with pytest.raises(errors.ConfigChangedError,
                     match=r"--resume would change the results \(lr: 0.1 -> 0.2\)"):
    quadratic_run(workdir, lr=0.2, steps=4, resume=True)
  assert (workdir / 'config.json').read_text() == stored  # the record stays true
  with pytest.raises(errors.OutputExistsError, match='pass --resume'):
    quadratic_run(workdir, lr=0.1, steps=4)
  summary, messages = quadratic_run(workdir, lr=0.1, steps=6, resume=True)
  assert summary['final_step'] == 6
  assert 'changed on resume: train_steps: 4 -> 6' in messages
  log = [json.loads(line) for line in (workdir / 'resume_log.jsonl').read_text().splitlines()]
  assert log == [{'step': 4, 'changes': {'train_steps': [4, 6]}}]


def test_resume_into_a_different_model_is_one_clear_error(tmp_path):
  """A checkpoint that does not fit the model (a config.json that does not
  describe it, e.g. code changed in between): orbax's mismatch is reported
  in one line, not hundreds."""
  workdir = tmp_path / 'run'
  quadratic_run(workdir, lr=0.1, steps=4)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'the latest checkpoint does not fit') as err:
    quadratic_run(workdir, lr=0.1, steps=6, resume=True, size=5)
  assert '\n' not in str(err.value)


def test_partial_metrics_line_is_dropped_with_a_warning(tmp_path):
  workdir = tmp_path / 'run'
  quadratic_run(workdir, lr=0.1, steps=4)
  metrics = workdir / 'metrics.jsonl'
  with open(metrics, 'a') as f:
    f.write('{"step": 5, "split": "tra')  # killed while writing
  summary, messages = quadratic_run(workdir, lr=0.1, steps=6, resume=True)
  assert any('dropped the partial last line 5' in m for m in messages)
  assert [r['step'] for r in checkpoints.read_metrics(metrics)] == [1, 2, 3, 4, 5, 6]
  lines = metrics.read_text().splitlines()
  metrics.write_text('\n'.join(lines[:2] + ['{oops'] + lines[2:]) + '\n')
  with pytest.raises(errors.UserError, match=r'metrics\.jsonl, line 3: not JSON'):
    checkpoints.read_metrics(metrics)


def _strict_load(text):
  def refuse(token):
    raise ValueError(f'non-standard JSON token {token}')
  return json.loads(text, parse_constant=refuse)


def test_json_is_strict_and_files_follow_the_umask(tmp_path):
  count = io_lib.write_json_atomic(tmp_path / 'a.json', {
      'x': float('nan'), 'y': [1.0, float('inf')], 'z': np.float32(2.0)})
  assert count == 2
  assert _strict_load((tmp_path / 'a.json').read_text()) == {'x': None, 'y': [1.0, None],
                                                             'z': 2.0}
  line, count = io_lib.json_line({'loss': float('-inf')})
  assert count == 1 and _strict_load(line) == {'loss': None}
  old = os.umask(0o027)
  try:
    io_lib.write_text_atomic(tmp_path / 'b.txt', 'x')
    io_lib.write_extxyz(tmp_path / 'c.extxyz', datasets.builtin_structures()[:1])
  finally:
    os.umask(old)
  for name in ('b.txt', 'c.extxyz'):
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o640


def test_library_chatter_is_counted_not_shown(capfd):
  """spglib prints straight to file descriptor 2 from C; it is counted."""
  lines = []
  with spacegroup.capture_c_stderr(lines):
    os.write(2, b'spglib: ssm_get_exact_positions failed.\n')
    os.write(2, b'spglib: ssm_get_exact_positions failed.\n')
    os.write(2, b'something else\n')
  captured = capfd.readouterr()
  assert len(lines) == 2 and 'ssm_get_exact' not in captured.err
  assert 'something else' in captured.err  # other messages still reach the user
  # A cell on which spglib itself prints (seed 11: found by search, stable).
  rng = np.random.default_rng(11)
  pos = np.concatenate([np.zeros((1, 3)), rng.normal(0, 0.05, (7, 3)) + 0.5]) % 1
  messy = ase.Atoms('C8', cell=np.eye(3) * 3, scaled_positions=pos, pbc=True)
  messages = []
  validation.space_group(messy, messages=messages)
  assert messages and all(m.startswith('spglib: ') for m in messages)
  assert 'spglib' not in capfd.readouterr().err


# ----------------------------------------------------------------------------
# Command lines: one line on stderr, exit code 2


def _run(script, *args, timeout=300):
  done = subprocess.run([sys.executable, str(SCRIPTS / script), *args],
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  return done.returncode, lines


CLI_CASES = {
    'batch_size_zero': (['--batch_size=0'], r'^error: flag --batch_size=0: '
                        r'--batch_size must be >= 1$'),
    'element_beyond_model': (['--formula=Og2O'], r"^error: flag --formula=Og2O: "
                             r"--formula: 'Og2O': element Og \(Z = 118\) is outside"),
    'not_a_formula': (['--formula=Xx2'], r"^error: flag --formula=Xx2: --formula: "
                      r"'Xx2' is not a chemical formula"),
    'nan_step': (['--sampler.step_lr=nan'], r'^error: flag --sampler\.step_lr=nan: '),
    'flow_sampler_on_a_score_run': (['--formula=Al4', '--sampler=heun'],
                                    r"^error: sampler 'heun' runs flow models; this "
                                    r"is a score model \(task 'csp'\): use one of "
                                    r"\['ddim', 'pc'\]$"),
    'more_steps_than_trained': (['--formula=Al4', '--sample_steps=100000'],
                                r'^error: sampler steps \(--sample_steps\) must be in '
                                r'1\.\.\d+ for this model'),
    'training_steps_flag': (['--formula=Al4', '--num_steps=50'],
                            r"^error: flag --num_steps=50: --num_steps is the model's T, "
                            r"set in training; the sampler's steps are --sample_steps$"),
    'stray_argument': (['--formula=Al4', 'extra'], r'^error: unexpected arguments: extra'),
    'zero_count': (['--formula=H0'], r"^error: flag --formula=H0: --formula: 'H0': an "
                   r"element with a zero count$"),
    'beyond_an_integer': (['--num_samples=99999999999999999999999'],
                          r'^error: flag --num_samples=\d+: --num_samples must be <= '),
    'beyond_the_size_budget': (['--formula=C70'], r"^error: --formula C70: a structure "
                               r"of 70 atoms, more than this model's budget of 64 "
                               r"\(set by its training data\); --max_atoms=70"),
    'bad_which': (['--formula=Al4', '--which=newest'], r"^error: flag --which=newest: "
                  r"--which must be 'best', 'best_quality', 'latest' or a checkpoint's step$"),
    'malformed_condition': (['--condition=heat_ref'], r'^error: flag '
                            r'--condition=\[.heat_ref.\]: --condition=heat_ref: give '
                            r'NAME=VALUE with a finite number'),
    'condition_of_an_unconditioned_model': (
        ['--formula=Al4', '--condition=heat_ref=-0.5'],
        r'^error: --condition heat_ref: the model is not conditioned on it; it was '
        r'trained without conditions$'),
    'elements_of_a_csp_model': (['--formula=Al4', '--elements=Al'],
                                r'^error: --elements constrains de novo samples; '
                                r'this request fixes the atom types \(a csp model\)$'),
    'symmetrize_tolerance_out_of_range': (
        ['--formula=Al4', '--symmetrize=5'],
        r'^error: flag --symmetrize=5\.0: --symmetrize must be 0 \(off\) or a '
        r'tolerance in \[0\.001, 1\] Angstrom$'),
    'missing_checkpoint': (['--checkpoint=/nonexistent'], r'^error: flag '
                           r'--checkpoint=/nonexistent: --checkpoint must be a '
                           r'training workdir or a model file \(\.jcm\)$'),
}


@pytest.mark.parametrize('case', sorted(CLI_CASES))
def test_sample_flags_are_refused_in_one_line(case, tmp_path):
  args, pattern = CLI_CASES[case]
  base = [f'--checkpoint={FIXTURES / "legacy_run_csp"}', f'--out={tmp_path / "o"}']
  code, lines = _run('sample.py', *base, *args)
  assert code == 2 and len(lines) == 1, lines
  assert re.search(pattern, lines[0]), lines[0]


def test_user_errors_after_parsing_are_one_line(tmp_path):
  """A bad training file, a folder of the wrong kind, an occupied --out."""
  good = bulk('Cu', 'fcc', a=3.6, cubic=True)
  nan = good.copy()
  nan.positions[0, 0] = np.nan
  ase.io.write(tmp_path / 'train.extxyz', [good, nan], format='extxyz')
  code, lines = _run('train_ddpm.py', f'--workdir={tmp_path / "w"}',
                     f'--train_data={tmp_path / "train.extxyz"}', '--noprogress')
  assert code == 2 and lines == [
      f'error: {tmp_path / "train.extxyz"}, row 1 (1): NaN or infinite coordinates']
  code, lines = _run('heal_vacancy.py', f'--denoiser={FIXTURES / "legacy_run_csp"}',
                     f'--out={tmp_path / "h"}')
  assert code == 2 and len(lines) == 1
  assert 'its config.json is not that of a denoiser run' in lines[0]
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'old.cif').write_text('x')
  code, lines = _run('evaluate.py', f'--samples={tmp_path / "train.extxyz"}',
                     f'--test_csv={tmp_path / "train.extxyz"}', '--task=dng',
                     f'--out={tmp_path / "full"}')
  assert code == 2 and lines == [
      f'error: --out {tmp_path / "full"} already holds files from an earlier run; '
      'pass --overwrite to replace them, or choose another folder']


def test_resume_with_a_changed_learning_rate_is_refused(tmp_path):
  """The command line on a real run: the refusal lists the differing field."""
  workdir = tmp_path / 'run'
  shutil.copytree(FIXTURES / 'legacy_run_csp', workdir)
  config = json.loads((workdir / 'config.json').read_text())
  model, optim = config['model'], config['optim']
  flags = [f'--workdir={workdir}', '--resume', '--noprogress',
           f'--task={model["task"]}', f'--network.hidden={model["hidden"]}',
           f'--network.num_layers={model["num_layers"]}',
           f'--network.num_freqs={model["num_freqs"]}',
           f'--network.time_dim={model["time_dim"]}', f'--num_steps={model["num_steps"]}',
           f'--batch_size={config["batch_size"]}', f'--seed={config["seed"]}',
           f'--optim.warmup_steps={optim["warmup_steps"]}',
           f'--optim.ema_decay={optim["ema_decay"]}',
           f'--optim.learning_rate={optim["learning_rate"] * 2}',
           '--skip_bad' if config['skip_bad'] else '--noskip_bad']
  code, lines = _run('train_ddpm.py', *flags)
  assert code == 2 and len(lines) == 1, lines
  assert f'optim.learning_rate: {optim["learning_rate"]} -> {optim["learning_rate"] * 2}' \
      in lines[0]
  assert lines[0].startswith(f'error: {workdir}: --resume would change the results')
  assert json.loads((workdir / 'config.json').read_text()) == config
