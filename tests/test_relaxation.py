"""Relaxation through ASE (issue 36), with ASE's EMT potential: energies go
down, the RMSD is the displacement, each failure has its reason, and a
killed run's journal is continued, not redone. Then CHGNet, the universal
potential of the measurements: symmetry restored, PBE's lattice constant,
its own energies, worker processes, and a GPU asked of a machine without."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from jaxcrystal import errors
from jaxcrystal.data import outputs
from jaxcrystal.evaluation import relaxation

ROOT = Path(__file__).resolve().parents[1]


def _rattled(seed, scale=0.05):
  atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
  atoms.positions += np.random.default_rng(seed).normal(0, scale, atoms.positions.shape)
  return atoms


def test_a_rattled_crystal_relaxes_back_and_the_rmsd_is_its_displacement():
  atoms = _rattled(0)
  config = relaxation.RelaxConfig(relax_cell=False, fmax=0.01)
  relaxed, record = relaxation.relax_structure(atoms, config, relaxation.POTENTIALS['emt']())
  assert record['converged'] and not record['failure'] and record['seconds'] > 0
  assert record['energy_after'] < record['energy_before']
  assert record['space_group_after'] == 225
  # the cell is kept: the RMSD is the atoms' displacement, net drift removed
  moved = relaxed.positions - atoms.positions
  moved -= moved.mean(0)
  expected = np.sqrt(np.mean(np.sum(moved ** 2, -1)))
  assert record['rmsd'] == pytest.approx(expected, rel=0.05)
  np.testing.assert_array_equal(relaxed.cell[:], atoms.cell[:])


def test_the_cell_relaxes_to_the_potentials_lattice_constant():
  atoms = bulk('Cu', 'fcc', a=3.8, cubic=True)
  relaxed, record = relaxation.relax_structure(atoms, relaxation.RelaxConfig(fmax=0.005),
                                               relaxation.POTENTIALS['emt']())
  # EMT's Cu sits at about 3.59 A
  assert record['converged'] and relaxed.cell.cellpar()[0] == pytest.approx(3.59, abs=0.02)
  assert record['space_group_before'] == record['space_group_after'] == 225
  assert record['coordination_kept'] and record['volume_ratio'] < 1


def test_failures_are_named():
  emt = relaxation.POTENTIALS['emt']()
  _, record = relaxation.relax_structure(_rattled(1), relaxation.RelaxConfig(max_steps=1), emt)
  assert record['failure'] == 'did not converge' and np.isfinite(record['rmsd'])
  _, record = relaxation.relax_structure(
      _rattled(1), relaxation.RelaxConfig(merge_distance=3.0), emt)
  assert record['failure'] == 'atoms merged'
  uranium = bulk('U', 'fcc', a=4.0)
  _, record = relaxation.relax_structure(uranium, relaxation.RelaxConfig(), emt)
  assert record['failure'].startswith('potential: NotImplementedError')
  summary = relaxation.summarize([record])
  assert summary['failures'] == {'potential': 1} and summary['relaxed'] == 0
  with pytest.raises(errors.UserError, match="--potential nope: choose one of"):
    relaxation.RelaxConfig(potential='nope').validate()


def test_a_killed_run_continues_from_its_journal(tmp_path, monkeypatch):
  structures = [_rattled(s) for s in range(3)]
  config = relaxation.RelaxConfig(relax_cell=False)
  journal = tmp_path / 'relax.jsonl'
  first, records = relaxation.relax_all(structures, config, journal, progress=False)
  lines = journal.read_text().splitlines()
  assert [json.loads(x)['index'] for x in lines] == [0, 1, 2]
  # killed after the first structure, in the middle of writing the second
  journal.write_text(lines[0] + '\n' + lines[1][:40])
  calls = []
  real = relaxation.relax_structure
  monkeypatch.setattr(relaxation, 'relax_structure',
                      lambda atoms, *a: calls.append(1) or real(atoms, *a))
  again, records_again = relaxation.relax_all(structures, config, journal, progress=False)
  assert len(calls) == 2  # the first was not relaxed again
  for a, b in zip(first, again):
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-9)
  assert [r['index'] for r in records_again] == [0, 1, 2]
  assert records_again[0]['energy_after'] == records[0]['energy_after']
  with pytest.raises(errors.DataError, match='holds entries for other structures'):
    relaxation.relax_all(structures[:2], config, journal, progress=False)


def test_a_resumable_output_keeps_its_work_and_is_continued(tmp_path):
  out = tmp_path / 'out'
  with pytest.raises(KeyboardInterrupt):
    with outputs.output_folder(out, kind='relaxation', resumable=True) as staging:
      (staging / 'relax.jsonl').write_text('{"index": 0}\n')
      raise KeyboardInterrupt
  left = outputs.partial(out)
  assert left is not None and (left / 'relax.jsonl').is_file() and not out.exists()
  # Without --resume (or --overwrite) the killed run's work is not cleared.
  with pytest.raises(errors.OutputExistsError, match=r'did not finish left its results in '
                     r'.*pass --resume to continue it'):
    with outputs.output_folder(out, kind='relaxation', resumable=True):
      pass
  assert (left / 'relax.jsonl').read_text() == '{"index": 0}\n'
  with outputs.output_folder(out, kind='relaxation', resumable=True, resume=True) as staging:
    assert (staging / 'relax.jsonl').read_text() == '{"index": 0}\n'
  assert (out / 'relax.jsonl').is_file() and outputs.partial(out) is None
  # A finished run has nothing to resume: refused, not started again.
  with pytest.raises(errors.OutputExistsError, match='that run finished, so there is '
                     'nothing to resume'):
    with outputs.output_folder(out, kind='relaxation', resumable=True, resume=True):
      pass
  assert (out / 'relax.jsonl').is_file()


def test_relax_cli_end_to_end_and_its_refusal_of_a_left_run(tmp_path):
  samples = [_rattled(s) for s in range(2)]
  samples[1].positions[1] = samples[1].positions[0] + [0.3, 0, 0]  # overlapping
  ase.io.write(tmp_path / 's.extxyz', samples)
  ase.io.write(tmp_path / 'ref.extxyz', [bulk('Cu', 'fcc', a=3.6, cubic=True)])
  run = lambda *args: subprocess.run(
      [sys.executable, str(ROOT / 'experiments' / 'relax.py'), *args, '--workers=1',
       '--noprogress'], capture_output=True, text=True, timeout=300, cwd=ROOT)
  res = run(f'--samples={tmp_path / "s.extxyz"}', f'--reference={tmp_path / "ref.extxyz"}',
            f'--out={tmp_path / "out"}')
  assert res.returncode == 0, res.stderr[-2000:]
  summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  assert summary['generated']['num_structures'] == 2
  assert summary['reference']['relaxed'] == 1
  # fcc Cu is ASE's reference crystal of Cu: the real one sits on the hull
  assert summary['reference']['stability']['e_above_hull_median'] == pytest.approx(0, abs=1e-3)
  assert 'S.U.N. rate' in (tmp_path / 'out' / 'summary.md').read_text()
  assert len(ase.io.read(tmp_path / 'out' / 'relaxed.extxyz', ':')) == 2
  for name in ('energy.png', 'rmsd.png'):
    assert (tmp_path / 'out' / name).stat().st_size > 1000
  res = run(f'--samples={tmp_path / "s.extxyz"}', f'--out={tmp_path / "out"}', '--resume')
  lines = res.stderr.strip().splitlines()
  assert res.returncode == 2 and len(lines) == 1 and 'nothing to resume' in lines[0], res.stderr
  # A killed run (here: a copy of the finished one, marked unfinished) is
  # resumed only with the configuration its journal was written with.
  shutil.copytree(tmp_path / 'out', tmp_path / '.again.partial')
  (tmp_path / '.again.partial' / outputs.MARKER).write_text('x')
  (tmp_path / '.again.partial' / outputs.OWNER).unlink()
  again = lambda *extra: run(f'--samples={tmp_path / "s.extxyz"}',
                             f'--reference={tmp_path / "ref.extxyz"}',
                             f'--out={tmp_path / "again"}', '--resume', *extra)
  res = again('--fmax=0.2')
  lines = res.stderr.strip().splitlines()
  assert res.returncode == 2 and len(lines) == 1, res.stderr
  assert "--resume would change the results (fmax: 0.05 -> 0.2)" in lines[0]
  assert lines[0].endswith('or start a new --out')
  res = again('--max_structures=5')  # more structures than it had: allowed
  assert res.returncode == 0, res.stderr[-2000:]
  for name in ('relax.jsonl', 'reference.jsonl'):  # nothing was relaxed again
    assert (tmp_path / 'again' / name).read_text() == (tmp_path / 'out' / name).read_text()
  (tmp_path / '.left.partial').mkdir()
  (tmp_path / '.left.partial' / outputs.MARKER).write_text('x')
  res = run(f'--samples={tmp_path / "s.extxyz"}', f'--out={tmp_path / "left"}')
  lines = res.stderr.strip().splitlines()
  assert res.returncode == 2 and len(lines) == 1, res.stderr
  assert 'pass --resume to continue it, or --overwrite to start afresh' in lines[0]


def test_worker_processes_start_with_one_thread_per_library(monkeypatch):
  # Two workers with the default pools (a thread per core each) ran CHGNet
  # 3.5 times slower per step than one process: each worker starts with one.
  import multiprocessing
  import os
  monkeypatch.setenv('OPENBLAS_NUM_THREADS', '8')
  monkeypatch.delenv('MKL_NUM_THREADS', raising=False)
  with relaxation._one_thread_children():
    with multiprocessing.get_context('spawn').Pool(1) as pool:
      seen = pool.map(os.getenv, ['OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'])
  assert seen == ['1', '1', '1']
  assert os.environ['OPENBLAS_NUM_THREADS'] == '8' and 'MKL_NUM_THREADS' not in os.environ


def test_energy_above_the_hull_and_the_sun_rate():
  from jaxcrystal.evaluation import stability
  from jaxcrystal.evaluation import validation
  diamond, graphite = stability.elemental_references(['C', 'C'])
  assert validation.space_group(diamond)[0] == 227
  assert validation.space_group(graphite)[0] == 194
  cu, pt = bulk('Cu', 'fcc', a=3.6), bulk('Pt', 'fcc', a=3.9)
  cupt = ase.Atoms('CuPt', cell=np.eye(3) * 2.7, pbc=True,
                   scaled_positions=[[0, 0, 0], [.5, .5, .5]])
  refs, ref_e = [diamond, graphite, cu, pt, cupt], [-9.0, -9.1, -1.0, -2.0, -2.0]
  samples = [graphite, diamond, cupt, cupt, bulk('Fe')]
  e = stability.energies_above_hull(samples, [-8.9, -9.2, -1.95, np.nan, -3.0], refs, ref_e)
  np.testing.assert_allclose(e[:3], [0.2, -0.1, 0.05], atol=1e-9)
  assert np.isnan(e[3]) and np.isnan(e[4])  # no energy; Fe not spanned
  report = stability.sun_report(samples, e, train=[diamond], margin=0.1)
  # stable: diamond (below the hull) and CuPt; diamond is not novel
  assert report['stable'] == 2 and report['hull_known'] == 3
  assert report['stable_unique'] == 2 and report['sun'] == 1
  assert report['sun_rate'] == pytest.approx(1 / 5)


def test_pairs_compare_each_relaxed_sample_with_its_true_structure():
  emt = relaxation.POTENTIALS['emt']()
  config = relaxation.RelaxConfig(fmax=0.01)
  fcc, fcc_record = relaxation.relax_structure(bulk('Cu', 'fcc', a=3.6, cubic=True), config, emt)
  near, near_record = relaxation.relax_structure(_rattled(2), config, emt)
  # bcc in its own cell (with the cell free, EMT's bcc Cu slides to fcc)
  bcc, bcc_record = relaxation.relax_structure(
      bulk('Cu', 'bcc', a=2.87, cubic=True), relaxation.RelaxConfig(relax_cell=False), emt)
  report = relaxation.compare_pairs([((near, near_record), (fcc, fcc_record)),
                                     ((bcc, bcc_record), (fcc, fcc_record))])
  same, other = report['pairs']
  assert abs(same['energy_difference']) < 0.005 and same['rmsd_between_relaxed'] < 0.05
  assert other['energy_difference'] > 0.01  # EMT's bcc Cu lies above its fcc
  assert report['within_10_mev'] == 0.5 and report['compared'] == 2
  assert 'within 10 meV/atom | 50.0%' in relaxation.pairs_table(report)


# ----------------------------------------------------------------------------
# CHGNet (the [relax] extra, which the README's test command installs): the
# universal potential the measurements use, run here on the CPU.

def _magnesia(a=4.35, rattle=0.05, seed=0):
  atoms = bulk('MgO', 'rocksalt', a=a, cubic=True)
  atoms.positions += np.random.default_rng(seed).normal(0, rattle, atoms.positions.shape)
  return atoms


def test_chgnet_relaxes_rattled_rock_salt_back_to_its_cubic_cell():
  config = relaxation.RelaxConfig(potential='chgnet', fmax=0.02)
  atoms = _magnesia()
  relaxed, record = relaxation.relax_structure(atoms, config, config.calculator())
  assert record['converged'] and not record['failure'], record
  assert record['energy_after'] < record['energy_before']
  assert record['space_group_before'] != 225 and record['space_group_after'] == 225
  # CHGNet learned PBE, whose MgO is about 4.25 A (experiment 4.21)
  a, b, c, *_ = relaxed.cell.cellpar()
  assert 4.18 < a < 4.32 and a == pytest.approx(b, abs=0.01) == pytest.approx(c, abs=0.01)
  # the record's energy is CHGNet's own prediction of the relaxed structure
  from chgnet.model import CHGNet
  from pymatgen.io.ase import AseAtomsAdaptor
  direct = CHGNet.load(verbose=False).predict_structure(
      AseAtomsAdaptor.get_structure(relaxed), task='e')['e']
  assert record['energy_after'] == pytest.approx(float(direct), abs=2e-3)


def test_chgnet_in_worker_processes_from_the_command_line(tmp_path):
  samples = [_magnesia(rattle=0.03), _magnesia(a=4.15, rattle=0.06, seed=1)]
  ase.io.write(tmp_path / 's.extxyz', samples)
  res = subprocess.run(
      [sys.executable, str(ROOT / 'experiments' / 'relax.py'), f'--samples={tmp_path / "s.extxyz"}',
       '--potential=chgnet', '--workers=2', '--noprogress', '--noelemental_references',
       f'--out={tmp_path / "out"}'], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert res.returncode == 0, res.stderr[-2000:]
  records = [json.loads(line) for line in (tmp_path / 'out' / 'relax.jsonl').open()]
  assert sorted(r['index'] for r in records) == [0, 1]
  assert all(r['converged'] and r['space_group_after'] == 225 for r in records)
  # both relax to one minimum, whatever cell they started from
  energies = [r['energy_after'] for r in records]
  assert energies[0] == pytest.approx(energies[1], abs=2e-3)
  import torch
  if not torch.cuda.is_available():
    res = subprocess.run(
        [sys.executable, str(ROOT / 'experiments' / 'relax.py'), f'--samples={tmp_path / "s.extxyz"}',
         '--potential=chgnet', '--device=cuda', '--noprogress', f'--out={tmp_path / "gpu"}'],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and 'torch sees no GPU' in lines[0], res.stderr


def test_a_potential_that_cannot_load_in_the_workers_stops_the_run_in_one_error(
    tmp_path, monkeypatch):
  # CHGNet loads here, in the parent, but a broken install shadows it in
  # the spawned workers (they import this one first): before, their failing
  # initializer was respawned without end.
  import chgnet.model.dynamics  # noqa: F401
  (tmp_path / 'chgnet').mkdir()
  (tmp_path / 'chgnet' / '__init__.py').write_text("raise ImportError('broken install')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  config = relaxation.RelaxConfig(potential='chgnet')
  with pytest.raises(errors.UserError, match=r"^--potential chgnet needs CHGNet"):
    relaxation.relax_all([_rattled(0), _rattled(1)], config, tmp_path / 'j.jsonl',
                         workers=2, progress=False)
  assert not (tmp_path / 'j.jsonl').read_text()  # nothing relaxed, nothing recorded


def test_chgnet_batched_predictions_equal_single_ones(tmp_path):
  """The batching benchmark (benchmark_relax_batching.py, in its own process
  like every torch-heavy test here: torch's thread pools stay out of the
  test process, whose JAX programs once hung beside them): batched CHGNet
  energies and forces are the single-structure ones."""
  ase.io.write(tmp_path / 's.extxyz', [_magnesia(rattle=0.05, seed=s) for s in range(3)])
  res = subprocess.run(
      [sys.executable, str(ROOT / 'experiments' / 'benchmark_relax_batching.py'),
       f'--structures={tmp_path / "s.extxyz"}', '--count=3', '--batch_sizes=2,3',
       '--repeats=1', f'--out={tmp_path / "rows.json"}'],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert res.returncode == 0, res.stderr[-2000:]
  rows = json.loads((tmp_path / 'rows.json').read_text())
  assert [r['batch_size'] for r in rows] == [1, 2, 3]
  for r in rows:
    assert r['seconds_per_structure'] > 0
    assert r['max_energy_difference'] < 1e-4 and r['max_force_difference'] < 1e-4, r


def test_a_degenerate_cell_is_a_failure_the_potential_never_sees():
  # A sampled carbon cell of 0.18 A^3 per atom made CHGNet build neighbour
  # lists of 23 GB until the kernel killed the worker.
  class Refuses(EMT):
    def calculate(self, *args, **kwargs):
      raise AssertionError('the potential was called')
  atoms = _rattled(0)
  atoms.set_cell(atoms.cell[:] * 0.3, scale_atoms=True)  # V/N = 11.8 * 0.027
  config = relaxation.RelaxConfig()
  relaxed, record = relaxation.relax_structure(atoms, config, Refuses())
  assert record['failure'] == 'degenerate cell' and record['steps'] == 0
  np.testing.assert_array_equal(relaxed.positions, atoms.positions)
  fine = relaxation.relax_structure(_rattled(0), config, EMT())[1]
  assert fine['failure'] == '' and fine['converged']
  assert relaxation.summarize([record, fine])['failures'] == {'degenerate cell': 1}


def test_a_worker_killed_mid_structure_stops_the_run_instead_of_hanging(tmp_path, monkeypatch):
  # A stand-in CHGNet whose calculator kills its own process, as the
  # kernel's out-of-memory killer did: multiprocessing.Pool waited forever.
  (tmp_path / 'chgnet' / 'model').mkdir(parents=True)
  (tmp_path / 'chgnet' / '__init__.py').write_text('')
  (tmp_path / 'chgnet' / 'model' / '__init__.py').write_text('')
  (tmp_path / 'chgnet' / 'model' / 'dynamics.py').write_text(
      'import os, signal\n'
      'from ase.calculators.emt import EMT\n'
      'class CHGNetCalculator(EMT):\n'
      '  def __init__(self, use_device=None):\n'
      '    super().__init__()\n'
      '  def calculate(self, *args, **kwargs):\n'
      '    os.kill(os.getpid(), signal.SIGKILL)\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  config = relaxation.RelaxConfig(potential='chgnet')
  with pytest.raises(errors.UserError, match=r'a relaxation worker died \(killed, out of '
                     r'memory\?\) with 2 structures left.*--resume continues$'):
    relaxation.relax_all([_rattled(0), _rattled(1)], config, tmp_path / 'j.jsonl',
                         workers=2, progress=False)
