"""Outputs never destroy inputs or foreign files; one writer per output;
provenance checked by content (issue 29).

Each case here reproduces a defect found by trying the scripts as a new user
would: `--overwrite` deleting a trained run, the samples being evaluated, a
user's data folder or the current directory; two writers in one folder;
`--resume` onto changed data or settings; samples scored against another
file.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import quadratic_run

from jaxcrystal import errors
from jaxcrystal.data import datasets
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import outputs
from jaxcrystal.evaluation import evaluate as evaluation

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'
SCRIPTS = ROOT / 'experiments'


def _write(folder, kind='samples', names=('a.txt',)):
  with outputs.output_folder(folder, overwrite=True, kind=kind) as staging:
    for name in names:
      (staging / name).write_text(name)


def _tree(folder):
  return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob('*'))


# ----------------------------------------------------------------------------
# --overwrite replaces only its own kind of folder


def test_overwrite_replaces_only_its_own_kind_holding_nothing_else(tmp_path):
  out = tmp_path / 'out'
  _write(out, names=('a.txt', 'b.txt'))
  assert outputs.read_owner(out)['kind'] == 'samples'
  assert outputs.read_owner(out)['entries'] == ['a.txt', 'b.txt']
  _write(out, names=('c.txt',))                       # same kind: replaced whole
  assert _tree(out) == [outputs.OWNER, 'c.txt']
  with pytest.raises(errors.OutputExistsError, match=r'holds samples .*not evaluation'):
    _write(out, kind='evaluation')
  (out / 'notes.md').write_text('mine')               # a file jaxcrystal did not write
  with pytest.raises(errors.OutputExistsError,
                     match=r'also holds files jaxcrystal did not write there \(notes\.md\)'):
    _write(out)
  assert (out / 'notes.md').read_text() == 'mine' and (out / 'c.txt').is_file()
  user = tmp_path / 'mydata'
  user.mkdir()
  (user / 'train.csv').write_text('x')
  with pytest.raises(errors.OutputExistsError, match='was not written by jaxcrystal'):
    _write(user)
  assert _tree(user) == ['train.csv']


def test_overwrite_never_touches_an_input_or_the_current_directory(tmp_path, monkeypatch):
  run = tmp_path / 'run'
  _write(run, kind='samples')
  inputs = {'--checkpoint': str(run)}
  for out, why in [(run, r'is --checkpoint .* an input of this command'),
                   (tmp_path, r'holds --checkpoint'),]:
    with pytest.raises(errors.OutputExistsError, match=why):
      outputs.check_writable(out, True, kind='samples', inputs=inputs)
  inner = run / 'inner'
  _write(inner)
  with pytest.raises(errors.OutputExistsError, match=r'lies inside --checkpoint'):
    outputs.check_writable(inner, True, kind='samples', inputs=inputs)
  monkeypatch.chdir(run)
  for out in ('.', str(tmp_path)):
    with pytest.raises(errors.OutputExistsError, match='is the current directory or holds it'):
      outputs.check_writable(out, True, kind='samples')
  assert (run / 'a.txt').is_file()


def test_unwritable_outputs_are_refused_before_any_work(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(errors.OutputExistsError, match=r'file is a file, not a folder'):
    outputs.check_writable(tmp_path / 'file' / 'out', False)
  with pytest.raises(errors.OutputExistsError, match=r'is a file, not a folder'):
    outputs.check_writable(tmp_path / 'file', False)
  with pytest.raises(errors.OutputExistsError, match='is empty'):
    outputs.check_writable('', False)
  if os.geteuid() != 0:  # root writes anywhere
    locked = tmp_path / 'locked'
    locked.mkdir(mode=0o500)
    with pytest.raises(errors.OutputExistsError, match='permission denied'):
      outputs.check_writable(locked / 'out', False)


def test_a_failed_replacement_keeps_the_old_results(tmp_path):
  out = tmp_path / 'out'
  _write(out, names=('old.txt',))
  with pytest.raises(RuntimeError):
    with outputs.output_folder(out, overwrite=True, kind='samples') as staging:
      (staging / 'new.txt').write_text('x')
      raise RuntimeError('plot failed')
  assert _tree(out) == [outputs.OWNER, 'old.txt']
  assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


# ----------------------------------------------------------------------------
# One writer per output


def test_a_second_writer_refuses_at_once_and_staging_is_always_marked(tmp_path):
  out = tmp_path / 'out'
  inside, release = threading.Event(), threading.Event()
  seen = {}

  def first():
    with outputs.output_folder(out, kind='samples') as staging:
      seen['marked'] = (staging / outputs.MARKER).is_file()
      (staging / 'a.txt').write_text('first')
      inside.set()
      release.wait(30)
  writer = threading.Thread(target=first)
  writer.start()
  assert inside.wait(30)
  try:
    with pytest.raises(errors.OutputExistsError,
                       match=rf'another command \(pid {os.getpid()}\) is writing it now'):
      with outputs.output_folder(out, kind='samples'):
        pass
    staging = tmp_path / '.out.partial'
    assert (staging / outputs.MARKER).is_file() and (staging / 'a.txt').read_text() == 'first'
  finally:
    release.set()
    writer.join()
  assert seen['marked'] and (out / 'a.txt').read_text() == 'first'
  assert not (out / outputs.MARKER).exists() and not (out / outputs.LOCK).exists()


def test_a_killed_writers_staging_is_cleared_by_the_next(tmp_path):
  out = tmp_path / 'out'
  code = ('import os, sys\nfrom jaxcrystal.data import outputs\n'
          f'with outputs.output_folder({str(out)!r}, kind="samples") as s:\n'
          '  (s / "half.txt").write_text("x")\n  os._exit(9)\n')
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, timeout=120)
  assert done.returncode == 9
  staging = tmp_path / '.out.partial'
  assert (staging / outputs.MARKER).is_file() and not out.exists()
  assert not outputs.is_locked(staging)          # the lock died with its process
  _write(out, names=('whole.txt',))
  assert _tree(out) == [outputs.OWNER, 'whole.txt'] and not staging.exists()


def test_two_trainings_in_one_workdir_refuse(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  holder = outputs.lock_folder(workdir, '--workdir', str(workdir))
  try:
    with pytest.raises(errors.OutputExistsError, match='is writing it now'):
      quadratic_run(workdir, lr=0.1, steps=2)
  finally:
    holder.release()
  summary, _ = quadratic_run(workdir, lr=0.1, steps=2)
  assert summary['final_step'] == 2


# ----------------------------------------------------------------------------
# Training workdirs


def test_training_overwrite_refuses_foreign_folders_and_inputs(tmp_path):
  data = tmp_path / 'mydata'
  data.mkdir()
  (data / 'train.csv').write_text('x')
  (data / 'notes.txt').write_text('y')
  with pytest.raises(errors.OutputExistsError, match=r'holds --train_data'):
    quadratic_run(data, lr=0.1, steps=2, overwrite=True,
                  inputs={'--train_data': str(data / 'train.csv')})
  with pytest.raises(errors.OutputExistsError, match='was not written by jaxcrystal'):
    quadratic_run(data, lr=0.1, steps=2, overwrite=True)
  with pytest.raises(errors.OutputExistsError, match='already holds files that are not a run'):
    quadratic_run(data, lr=0.1, steps=2)
  assert _tree(data) == ['notes.txt', 'train.csv']
  run = tmp_path / 'run'
  quadratic_run(run, lr=0.1, steps=2)
  assert outputs.read_owner(run)['kind'] == 'run'
  (run / 'my_analysis.ipynb').write_text('{}')
  with pytest.raises(errors.OutputExistsError, match=r'did not write there \(my_analysis'):
    quadratic_run(run, lr=0.1, steps=2, overwrite=True)
  (run / 'my_analysis.ipynb').unlink()
  summary, _ = quadratic_run(run, lr=0.2, steps=2, overwrite=True)
  assert summary['final_step'] == 2
  assert json.loads((run / 'config.json').read_text())['lr'] == 0.2


def test_resume_checks_the_configuration_before_the_first_checkpoint(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  io_lib.write_json_atomic(run / 'config.json', {'lr': 0.1, 'train_steps': 4})
  (run / 'metrics.jsonl').write_text('')  # killed before its first checkpoint
  with pytest.raises(errors.ConfigChangedError, match=r'lr: 0.1 -> 0.2'):
    quadratic_run(run, lr=0.2, steps=4, resume=True)
  assert json.loads((run / 'config.json').read_text())['lr'] == 0.1
  with pytest.raises(errors.OutputExistsError, match='no checkpoint yet.*--resume'):
    quadratic_run(run, lr=0.1, steps=4)
  summary, messages = quadratic_run(run, lr=0.1, steps=4, resume=True)
  assert summary['final_step'] == 4 and any('no checkpoint yet' in m for m in messages)
  (run / 'config.json').unlink()
  with pytest.raises(errors.NotARunError, match='no config.json, so --resume cannot check'):
    quadratic_run(run, lr=0.1, steps=6, resume=True)


def test_resume_refuses_changed_data_by_content(tmp_path):
  run = tmp_path / 'run'
  config = lambda sha: {'lr': 0.1, 'train_steps': 4, 'data': {'train_data_sha256': sha}}
  quadratic_run(run, lr=0.1, steps=2, config=config('a' * 64))
  with pytest.raises(errors.ConfigChangedError,
                     match=r'train_data: the file has changed since the run began '
                           r'\(sha256 aaaaaaaaaaaa\.\.\. -> bbbbbbbbbbbb\.\.\.\)'):
    quadratic_run(run, lr=0.1, steps=4, config=config('b' * 64), resume=True)
  # A run stored before data hashes were recorded takes them on resume.
  stored = json.loads((run / 'config.json').read_text())
  del stored['data']
  io_lib.write_json_atomic(run / 'config.json', stored)
  summary, _ = quadratic_run(run, lr=0.1, steps=4, config=config('b' * 64), resume=True)
  assert summary['final_step'] == 4
  assert json.loads((run / 'config.json').read_text())['data']['train_data_sha256'] == 'b' * 64


# ----------------------------------------------------------------------------
# Samples know the file they were made for


def test_evaluation_refuses_samples_made_for_another_file(tmp_path):
  from jaxcrystal.generative import generate
  structures = datasets.builtin_structures()[:3]
  made_for, other = tmp_path / 'test.extxyz', tmp_path / 'other.extxyz'
  io_lib.write_extxyz(made_for, structures)
  io_lib.write_extxyz(other, structures[::-1])
  out = tmp_path / 'samples'
  with outputs.output_folder(out, kind='samples') as staging:
    summary = generate.write_samples(staging, structures, made_for=str(made_for))
  assert summary['made_for']['sha256'] == io_lib.file_sha256(made_for)
  found = evaluation.check_made_for(out / 'samples.npz', made_for)
  assert found['check'] == 'same file'
  for samples in (out / 'samples.npz', out / 'samples.extxyz'):  # npz, or summary.json
    with pytest.raises(errors.UserError, match=r'were made for .*test\.extxyz .*not '
                       r'.*other\.extxyz.*--allow_other_test_file'):
      evaluation.check_made_for(samples, other)
  found = evaluation.check_made_for(out / 'samples.npz', other, allow_other=True)
  assert found['check'].startswith('overridden')
  io_lib.write_extxyz(tmp_path / 'bare.extxyz', structures)  # DiffCSP's outputs etc.
  assert evaluation.check_made_for(tmp_path / 'bare.extxyz', other)['check'] == 'not recorded'


# ----------------------------------------------------------------------------
# The command lines of the reported defects


def _run(script, *args, timeout=300):
  done = subprocess.run([sys.executable, str(SCRIPTS / script), *args],
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  return done.returncode, lines


def test_commands_refuse_to_overwrite_their_inputs(tmp_path):
  run = tmp_path / 'run'
  shutil.copytree(FIXTURES / 'legacy_run_csp', run)
  before = _tree(run)
  code, lines = _run('sample.py', f'--checkpoint={run}', f'--out={run}', '--overwrite',
                     '--formula=Al4', '--num_samples=2')
  assert code == 2 and len(lines) == 1, lines
  assert re.search(r'--out .*run is --checkpoint .*an input of this command', lines[0])
  assert _tree(run) == before
  data = tmp_path / 'mydata'
  data.mkdir()
  io_lib.write_extxyz(data / 'train.extxyz', datasets.builtin_structures()[:4])
  code, lines = _run('train_ddpm.py', f'--workdir={data}', '--overwrite',
                     f'--train_data={data / "train.extxyz"}', '--noprogress')
  assert code == 2 and len(lines) == 1, lines
  assert 'holds --train_data' in lines[0] and _tree(data) == ['train.extxyz']
  code, lines = _run('evaluate.py', f'--samples={data / "train.extxyz"}',
                     f'--test_csv={data / "train.extxyz"}', '--task=dng',
                     f'--out={data}', '--overwrite')
  assert code == 2 and 'holds --samples' in lines[0], lines
  code, lines = _run('evaluate.py', f'--samples={data / "train.extxyz"}',
                     f'--test_csv={data / "train.extxyz"}', '--task=dng',
                     f'--out={data / "train.extxyz" / "eval"}')
  assert code == 2 and lines == [f'error: --out {data / "train.extxyz" / "eval"}: '
                                 f'{data / "train.extxyz"} is a file, not a folder']
  assert np.all([p.is_file() for p in data.iterdir()])
