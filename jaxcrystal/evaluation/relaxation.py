"""Relaxation of generated (or real) crystals with an interatomic potential
through ASE (issue 36): are the samples physical, do they stay put?

Each structure is relaxed in cell and positions (`FrechetCellFilter`, FIRE
or BFGS) until the largest force is under `fmax` eV/A or `max_steps`. Per
structure the record holds: energy per atom before and after (eV/atom),
steps, whether it converged, the RMSD between the structure and its
relaxed self in Angstrom (MatterGen's definition: pymatgen's
`StructureMatcher.get_rms_dist` with loose tolerances, which is normalised
by (V/N)^(1/3), times (V/N)^(1/3) of the two cells' mean volume; NaN where
no alignment is found; unlike MatterGen, the cells are not reduced to
primitive ones first: pymatgen's reduction, at its 0.25 A tolerance,
averages displacements of about that size away and reports 0), the space group (spglib, 0.1 A) and the sorted
coordination numbers before and after, and the failure reason if any:

  'did not converge'  max_steps reached with forces above fmax
  'exploded'          the volume changed by more than `max_volume_ratio`
                      or the energy is not finite
  'atoms merged'      two atoms closer than `merge_distance` after
  'degenerate cell'   under `min_volume_per_atom` before: not relaxed (a
                      potential's neighbour lists grow as 1/(V/N); CHGNet
                      took 23 GB for a sampled carbon cell of 0.18 A^3
                      per atom, and the kernel killed its worker)
  'potential: ...'    the potential raised (its message)

Potentials (`POTENTIALS`): 'emt' (ASE's effective-medium theory; Al, Cu,
Ag, Au, Ni, Pd, Pt and C, H, N, O roughly: for tests and metals), and
'chgnet' (CHGNet, a universal potential whose weights ship in its wheel:
`pip install -e ".[relax]"`).

`relax_all` runs the structures in worker processes and appends each
record to a journal (one JSON line, with the relaxed structure) as it
finishes, so a killed run continues where it stopped (`resume`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Sequence

import ase
import numpy as np
from tqdm.auto import tqdm

from jaxcrystal import errors
from jaxcrystal.evaluation import validation


def _emt(device: str = 'cpu'):
  if device != 'cpu':
    raise errors.UserError(f'--device {device}: EMT runs on the CPU only')
  from ase.calculators.emt import EMT
  return EMT()


def _chgnet(device: str = 'cpu'):
  try:
    from chgnet.model.dynamics import CHGNetCalculator
  except ImportError:
    raise errors.UserError("--potential chgnet needs CHGNet: pip install -e '.[relax]'"
                           ) from None
  import torch
  torch.set_num_threads(1)  # one thread: one worker (or the single process) per core
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return CHGNetCalculator(use_device=device)


# name -> factory(device: 'cpu' | 'cuda') -> an ASE calculator
POTENTIALS: dict[str, Callable] = {'emt': _emt, 'chgnet': _chgnet}
DEVICES = ('cpu', 'cuda')
OPTIMIZERS = ('FIRE', 'BFGS')


@dataclasses.dataclass(frozen=True)
class RelaxConfig:
  """How structures are relaxed.

  Attributes:
    potential: a name of `POTENTIALS`.
    fmax: force threshold of convergence (eV/A).
    max_steps: optimizer steps at most.
    optimizer: 'FIRE' or 'BFGS' (ASE's).
    relax_cell: relax the cell too (`FrechetCellFilter`), else positions only.
    max_volume_ratio: a volume change by more than this factor (either way)
      is an explosion.
    merge_distance: atoms closer than this after relaxing (A) have merged.
    device: where the potential runs, 'cpu' or 'cuda' (CHGNet only).
    min_volume_per_atom: cells with less volume per atom (A^3) are not
      relaxed ('degenerate cell'); no solid at ambient pressure comes near
      2 (diamond, the densest, has 5.7).
  """
  potential: str = 'emt'
  fmax: float = 0.05
  max_steps: int = 300
  optimizer: str = 'FIRE'
  relax_cell: bool = True
  max_volume_ratio: float = 3.0
  merge_distance: float = 0.5
  device: str = 'cpu'
  min_volume_per_atom: float = 2.0

  def calculator(self):
    """A new ASE calculator of `potential` on `device`."""
    return POTENTIALS[self.potential](self.device)

  def validate(self) -> None:
    if self.potential not in POTENTIALS:
      raise errors.UserError(f'--potential {self.potential}: choose one of '
                             f'{sorted(POTENTIALS)}')
    if self.device not in DEVICES:
      raise errors.UserError(f'--device {self.device}: choose one of {DEVICES}')
    if self.device == 'cuda':
      try:
        import torch
        seen = torch.cuda.is_available()
      except ImportError:
        seen = False
      if not seen:
        raise errors.UserError('--device cuda: torch sees no GPU here (no torch, a CPU '
                               'build of it, or no driver); use --device cpu')
    if self.optimizer not in OPTIMIZERS:
      raise errors.UserError(f'--optimizer {self.optimizer}: choose one of {OPTIMIZERS}')
    if not (self.fmax > 0 and self.max_steps >= 1 and self.max_volume_ratio > 1
            and self.merge_distance >= 0 and self.min_volume_per_atom >= 0):
      raise errors.UserError('relaxation: fmax must be > 0, max_steps >= 1, '
                             'max_volume_ratio > 1, merge_distance >= 0 and '
                             'min_volume_per_atom >= 0')


def rmsd_angstrom(a: ase.Atoms, b: ase.Atoms) -> float:
  """RMSD (A) between two structures of the same atoms after alignment
  (see the module docstring); NaN when no alignment is found."""
  from pymatgen.analysis.structure_matcher import StructureMatcher
  from pymatgen.io.ase import AseAtomsAdaptor
  s1, s2 = AseAtomsAdaptor.get_structure(a), AseAtomsAdaptor.get_structure(b)
  matcher = StructureMatcher(ltol=0.5, stol=0.5, angle_tol=10, primitive_cell=False,
                             scale=False, attempt_supercell=True, allow_subset=False)
  try:
    match = matcher.get_rms_dist(s1, s2)
  except Exception:  # pymatgen raises on degenerate lattices
    match = None
  if match is None:
    return math.nan
  volume = (s1.volume + s2.volume) / 2
  return float(match[0] * (volume / len(s1)) ** (1 / 3))


def _coordination(atoms: ase.Atoms) -> list[int] | None:
  try:
    return sorted(int(c) for c in validation.coordination_by_nearest_shell(atoms))
  except Exception:  # too skewed, not finite
    return None


def relax_structure(atoms: ase.Atoms, config: RelaxConfig, calculator) -> tuple[ase.Atoms, dict]:
  """Relax one structure with an ASE `calculator`. Returns (relaxed copy,
  record) as the module docstring describes. Never raises for the
  structure's sake: a failure is the record's `failure`."""
  from ase.filters import FrechetCellFilter
  from ase.optimize import BFGS, FIRE
  started = time.perf_counter()
  work = atoms.copy()
  work.calc = calculator
  n = max(len(work), 1)
  record = {'num_atoms': len(atoms), 'energy_before': math.nan, 'energy_after': math.nan,
            'steps': 0, 'converged': False, 'rmsd': math.nan, 'failure': ''}
  volume_per_atom = abs(atoms.get_volume()) / n if len(atoms) else math.inf
  if not volume_per_atom >= config.min_volume_per_atom:  # NaN too
    record['failure'] = 'degenerate cell'
  else:
    try:
      record['energy_before'] = float(work.get_potential_energy()) / n
      target = FrechetCellFilter(work) if config.relax_cell else work
      optimizer = {'FIRE': FIRE, 'BFGS': BFGS}[config.optimizer](target, logfile=None)
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        record['converged'] = bool(optimizer.run(fmax=config.fmax, steps=config.max_steps))
      record['steps'] = int(optimizer.get_number_of_steps())
      record['energy_after'] = float(work.get_potential_energy()) / n
    except Exception as err:  # the potential's own failure, named
      record['failure'] = f'potential: {type(err).__name__}: {err}'.splitlines()[0][:200]
  relaxed = ase.Atoms(numbers=work.numbers, cell=work.cell[:], positions=work.positions,
                      pbc=True, info=dict(atoms.info))
  volume_ratio = abs(relaxed.get_volume()) / max(abs(atoms.get_volume()), 1e-12)
  if not record['failure']:
    if (not np.isfinite(record['energy_after']) or not np.isfinite(relaxed.positions).all()
        or not 1 / config.max_volume_ratio <= volume_ratio <= config.max_volume_ratio):
      record['failure'] = 'exploded'
    elif len(relaxed) > 1 and validation.min_interatomic_distance(relaxed) < config.merge_distance:
      record['failure'] = 'atoms merged'
    elif not record['converged']:
      record['failure'] = 'did not converge'
  if record['failure'] in ('', 'did not converge'):
    record['rmsd'] = rmsd_angstrom(atoms, relaxed)
  record['volume_ratio'] = float(volume_ratio)
  record['space_group_before'] = validation.space_group(atoms)[0]
  record['space_group_after'] = validation.space_group(relaxed)[0]
  before, after = _coordination(atoms), _coordination(relaxed)
  record['coordination_kept'] = before is not None and before == after
  record['seconds'] = time.perf_counter() - started
  return relaxed, record


# ----------------------------------------------------------------------------
# Many structures, in worker processes, journaled.

_WORKER: dict = {}


# Thread pools of the numerical libraries, one thread each in a worker: a
# spawned worker reads these when it imports numpy and torch, before the
# initializer runs. Two workers on two cores with the default pools (one
# thread per core each, spinning) ran CHGNet 3.5 times slower per step than
# one process alone.
_ONE_THREAD = {name: '1' for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS',
                                      'MKL_NUM_THREADS')}


@contextlib.contextmanager
def _one_thread_children():
  """The environment of processes started inside: `_ONE_THREAD` set."""
  saved = {name: os.environ.get(name) for name in _ONE_THREAD}
  os.environ.update(_ONE_THREAD)
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


def _init_worker(config: RelaxConfig) -> None:
  _WORKER['config'] = config
  try:
    _WORKER['calculator'] = config.calculator()
  except Exception as err:  # kept for the first job: a failing initializer respawns forever
    _WORKER['error'] = err if isinstance(err, errors.UserError) else errors.UserError(
        f'--potential {config.potential}: cannot load it: {type(err).__name__}: '
        f'{str(err).splitlines()[0] if str(err) else ""}')


def _relax_job(job):
  if 'error' in _WORKER:  # the potential did not load: the run stops, in one line
    raise _WORKER['error']
  index, atoms = job
  relaxed, record = relax_structure(atoms, _WORKER['config'], _WORKER['calculator'])
  return index, relaxed, record


def _line(index: int, relaxed: ase.Atoms, record: dict) -> str:
  payload = dict(record, index=index, numbers=relaxed.numbers.tolist(),
                 cell=np.asarray(relaxed.cell[:]).tolist(),
                 positions=relaxed.positions.tolist())
  return json.dumps(payload, allow_nan=True)


def read_journal(path: str | Path) -> dict[int, tuple[ase.Atoms, dict]]:
  """{index: (relaxed structure, record)} of a journal; a last line cut
  short by a kill is ignored (it is relaxed again)."""
  out = {}
  path = Path(path)
  if not path.is_file():
    return out
  for line in path.read_text().splitlines():
    try:
      entry = json.loads(line)
    except json.JSONDecodeError:
      continue
    atoms = ase.Atoms(numbers=entry.pop('numbers'), cell=entry.pop('cell'),
                      positions=entry.pop('positions'), pbc=True)
    out[int(entry['index'])] = (atoms, entry)
  return out


def relax_all(structures: Sequence[ase.Atoms], config: RelaxConfig, journal: str | Path,
              workers: int = 1, progress: bool = True,
              desc: str = 'relaxing') -> tuple[list[ase.Atoms], list[dict]]:
  """Relax every structure (`relax_structure`), `workers` processes at a
  time, appending each finished one to `journal` (JSON lines, flushed and
  synced); structures the journal already holds are not relaxed again.
  Returns (relaxed structures, records) in input order; each record's
  `index` is its structure's position."""
  config.validate()
  journal = Path(journal)
  done = read_journal(journal)
  todo = [(i, a) for i, a in enumerate(structures) if i not in done]
  if todo:
    with open(journal, 'a') as sink, tqdm(total=len(structures), initial=len(done),
                                          desc=desc, disable=not progress) as bar:
      def keep(index, relaxed, record):
        sink.write(_line(index, relaxed, record) + '\n')
        sink.flush()
        os.fsync(sink.fileno())
        done[index] = (relaxed, dict(record, index=index))
        bar.update(1)
      if workers <= 1:
        _init_worker(config)
        for job in todo:
          keep(*_relax_job(job))
      else:
        # An executor, not multiprocessing.Pool: a worker the kernel kills
        # (out of memory) breaks it with an error, where a Pool waits forever.
        with _one_thread_children(), ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context('spawn'),
            initializer=_init_worker, initargs=(config,)) as pool:
          futures = {pool.submit(_relax_job, job): job[0] for job in todo}
          try:
            for future in as_completed(futures):
              keep(*future.result())
          except BrokenProcessPool:
            lost = sorted(i for f, i in futures.items() if i not in done)
            raise errors.UserError(
                f'{journal}: a relaxation worker died (killed, out of memory?) with '
                f'{len(lost)} structures left, among them the one it was relaxing '
                f'(positions {lost[:workers * 2]}...); {len(done)} are journaled and '
                '--resume continues') from None
  order = sorted(done)
  if order != list(range(len(structures))):
    raise errors.DataError(f'{journal}: holds entries for other structures than these '
                           f'{len(structures)}; relax them into a new folder')
  return [done[i][0] for i in order], [done[i][1] for i in order]


def summarize(records: Sequence[dict]) -> dict:
  """Means over the structures that relaxed without failure (RMSD, energy
  before and after, steps), the shares that kept their space group and
  coordination, and the failures counted by reason."""
  ok = [r for r in records if not r['failure']]
  failures: dict[str, int] = {}
  for r in records:
    if r['failure']:
      key = r['failure'].split(':')[0]
      failures[key] = failures.get(key, 0) + 1

  def mean(key, rows=ok):
    values = [r[key] for r in rows if np.isfinite(r[key])]
    return float(np.mean(values)) if values else math.nan
  return {
      'num_structures': len(records), 'relaxed': len(ok), 'failures': failures,
      'rmsd_mean': mean('rmsd'), 'rmsd_median': (
          float(np.median([r['rmsd'] for r in ok if np.isfinite(r['rmsd'])]))
          if any(np.isfinite(r['rmsd']) for r in ok) else math.nan),
      'rmsd_unaligned': sum(1 for r in ok if not np.isfinite(r['rmsd'])),
      'energy_before_mean': mean('energy_before'), 'energy_after_mean': mean('energy_after'),
      'steps_mean': mean('steps'),
      'seconds_total': float(sum(r.get('seconds', 0.0) for r in records)),
      'space_group_kept': (float(np.mean([r['space_group_before'] == r['space_group_after']
                                          for r in ok])) if ok else math.nan),
      'coordination_kept': (float(np.mean([r['coordination_kept'] for r in ok]))
                            if ok else math.nan),
  }


def markdown_table(summaries: dict) -> str:
  """`summarize` results side by side ({label: summary}) as markdown."""
  rows = (('structures', 'num_structures', '{:d}'), ('relaxed without failure', 'relaxed', '{:d}'),
          ('RMSD mean (A)', 'rmsd_mean', '{:.3f}'), ('RMSD median (A)', 'rmsd_median', '{:.3f}'),
          ('not aligned for RMSD', 'rmsd_unaligned', '{:d}'),
          ('energy before (eV/atom)', 'energy_before_mean', '{:.3f}'),
          ('energy after (eV/atom)', 'energy_after_mean', '{:.3f}'),
          ('optimizer steps', 'steps_mean', '{:.1f}'),
          ('relaxing seconds, summed over workers', 'seconds_total', '{:.0f}'),
          ('space group kept', 'space_group_kept', '{:.1%}'),
          ('coordination kept', 'coordination_kept', '{:.1%}'))
  table = side_by_side(summaries, rows)
  return table + '| failures | ' + ' | '.join(
      ', '.join(f'{k}: {v}' for k, v in summaries[label]['failures'].items()) or 'none'
      for label in summaries) + ' |\n'


def side_by_side(summaries: dict, rows: Sequence[tuple[str, str, str]]) -> str:
  """A markdown table with one column per label of `summaries` ({label:
  {key: value}}) and one line per (title, key, format) of `rows`; 'n/a'
  for a missing or non-finite value."""
  labels = list(summaries)
  lines = ['| | ' + ' | '.join(labels) + ' |', '|---|' + '---|' * len(labels)]
  for title, key, fmt in rows:
    cells = []
    for label in labels:
      value = summaries[label].get(key, math.nan)
      cells.append('n/a' if isinstance(value, float) and not np.isfinite(value)
                   else fmt.format(value))
    lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def compare_pairs(pairs: Sequence[tuple]) -> dict:
  """CSP: each ((relaxed sample, record), (relaxed true structure, record))
  pair: the sample's relaxed energy minus the true one's (eV/atom; near 0
  or below: the same minimum or a lower one), and the RMSD between the two
  relaxed structures (A, `rmsd_angstrom`; NaN: no alignment, a different
  structure). Returns the per-pair lists and their summary."""
  rows = []
  for (sample, s_record), (true, t_record) in pairs:
    ok = not s_record['failure'] and not t_record['failure']
    rows.append({'energy_difference': (s_record['energy_after'] - t_record['energy_after'])
                 if ok else math.nan,
                 'rmsd_between_relaxed': rmsd_angstrom(sample, true) if ok else math.nan})
  de = np.array([r['energy_difference'] for r in rows], float)
  rmsd = np.array([r['rmsd_between_relaxed'] for r in rows], float)
  known = np.isfinite(de)
  return {'num_pairs': len(rows), 'compared': int(known.sum()),
          'energy_difference_mean': float(de[known].mean()) if known.any() else math.nan,
          'energy_difference_median': float(np.median(de[known])) if known.any() else math.nan,
          'abs_energy_difference_mean': float(np.abs(de[known]).mean()) if known.any() else math.nan,
          'within_10_mev': float(np.mean(np.abs(de[known]) <= 0.01)) if known.any() else math.nan,
          'aligned': float(np.mean(np.isfinite(rmsd[known]))) if known.any() else math.nan,
          'rmsd_between_relaxed_median': (float(np.nanmedian(rmsd[known]))
                                          if np.isfinite(rmsd[known]).any() else math.nan),
          'pairs': rows}


def pairs_table(report: dict) -> str:
  """`compare_pairs` as markdown."""
  return side_by_side({'relaxed sample - relaxed true structure': report}, (
      ('pairs compared', 'compared', '{:d}'),
      ('energy difference, mean (eV/atom)', 'energy_difference_mean', '{:.4f}'),
      ('energy difference, median (eV/atom)', 'energy_difference_median', '{:.4f}'),
      ('mean abs. energy difference (eV/atom)', 'abs_energy_difference_mean', '{:.4f}'),
      ('within 10 meV/atom', 'within_10_mev', '{:.1%}'),
      ('aligned by StructureMatcher', 'aligned', '{:.1%}'),
      ('RMSD between relaxed, median (A)', 'rmsd_between_relaxed_median', '{:.3f}')))
