"""Structures in and out: CDVAE CSVs, any ASE format, a parse cache, writers.

Readers validate every structure (`validation.check_structure`). A bad one
raises `DataError` naming the file and row, or, with `skip_bad=True`, is left
out and listed in the returned `LoadReport`. Writers are atomic: they write a
temporary file beside the target and rename it, so a crash never leaves a
half-written file.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import ase
import ase.io
import numpy as np
from tqdm.auto import tqdm

from jaxcrystal.evaluation import validation

CACHE_VERSION = 1


class DataError(ValueError):
  """A file or row that cannot be read, with where and why."""


@dataclasses.dataclass
class SkippedRow:
  row: int            # 0-based data row (CSV) or frame index (other formats)
  identifier: str     # material_id or frame label
  reason: str


@dataclasses.dataclass
class LoadReport:
  """What a loader read and what it left out."""
  path: str
  num_read: int = 0
  skipped: list[SkippedRow] = dataclasses.field(default_factory=list)
  from_cache: bool = False

  def summary(self) -> str:
    text = f'{self.path}: {self.num_read} structures'
    if self.from_cache:
      text += ' (from cache)'
    if self.skipped:
      text += f', {len(self.skipped)} skipped:'
      for s in self.skipped[:20]:
        text += f'\n  row {s.row} ({s.identifier}): {s.reason}'
      if len(self.skipped) > 20:
        text += f'\n  ... and {len(self.skipped) - 20} more'
    return text


# ----------------------------------------------------------------------------
# Atomic writing


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
  """Yield a temporary path beside `path`; rename it onto `path` on success."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                             dir=path.parent)
  os.close(fd)
  try:
    yield Path(tmp)
    with open(tmp, 'rb+') as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def write_text_atomic(path, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text)


def write_json_atomic(path, obj) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=float))


# ----------------------------------------------------------------------------
# Readers


def _standardize(atoms: ase.Atoms, niggli: bool, primitive: bool) -> ase.Atoms:
  if primitive:
    from pymatgen.io.ase import AseAtomsAdaptor
    s = AseAtomsAdaptor.get_structure(atoms).get_primitive_structure()
    info = dict(atoms.info)
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.info.update(info)
  if niggli:
    from ase.build import niggli_reduce
    atoms = atoms.copy()
    niggli_reduce(atoms)
  atoms.wrap()
  return atoms


def _parse_cif(text: str) -> ase.Atoms:
  """CIF text -> Atoms with pymatgen's parser, as CDVAE and DiffCSP do."""
  import warnings
  from pymatgen.core import Structure
  from pymatgen.io.ase import AseAtomsAdaptor
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    structure = Structure.from_str(text, fmt='cif')
  return AseAtomsAdaptor.get_atoms(structure)


def _handle_bad(report: LoadReport, skip_bad: bool, row: int, ident: str,
                reason: str, where: str) -> None:
  if not skip_bad:
    raise DataError(f'{where}, row {row} ({ident}): {reason}')
  report.skipped.append(SkippedRow(row, ident, reason))


def _cache_file(path: Path, cache_dir: str | os.PathLike, options: dict) -> Path:
  stat = path.stat()
  key = json.dumps([CACHE_VERSION, str(path.resolve()), stat.st_size,
                    stat.st_mtime_ns, options], sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:24]
  return Path(cache_dir) / f'{path.stem}-{digest}.npz'


def _atoms_to_arrays(structures: Sequence[ase.Atoms]) -> dict:
  n = np.array([len(a) for a in structures], np.int64)
  return dict(
      num_atoms=n,
      lattices=np.array([a.cell[:] for a in structures]).reshape(-1, 3, 3),
      frac_coords=np.concatenate([a.get_scaled_positions(wrap=False)
                                  for a in structures]) if len(n) else
      np.zeros((0, 3)),
      atom_types=np.concatenate([a.numbers for a in structures]) if len(n)
      else np.zeros(0, np.int64))


def _arrays_to_atoms(arrays) -> list[ase.Atoms]:
  n = arrays['num_atoms']
  offsets = np.concatenate([[0], np.cumsum(n)])
  return [ase.Atoms(numbers=arrays['atom_types'][offsets[k]:offsets[k + 1]],
                    cell=arrays['lattices'][k], pbc=True,
                    scaled_positions=arrays['frac_coords'][offsets[k]:offsets[k + 1]])
          for k in range(len(n))]


def read_cdvae_csv(path: str | os.PathLike, *, skip_bad: bool = False,
                   niggli: bool = False, primitive: bool = False,
                   max_atoms: int | None = None,
                   min_distance: float = validation.DEFAULT_MIN_DISTANCE,
                   cache_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> tuple[list[ase.Atoms], LoadReport]:
  """Read a CDVAE-format CSV (one CIF string per row in column `cif`).

  Each returned `Atoms` carries `info['row']`, `info['material_id']` and the
  CSV's other columns (numbers parsed as floats).

  Args:
    path: the CSV file.
    skip_bad: skip unusable rows and report them instead of raising.
    niggli, primitive: standardise cells on load (primitive first).
    max_atoms: reject (or skip) structures with more atoms.
    min_distance: overlap threshold in Angstrom.
    cache_dir: if given, parsed structures are cached there as `.npz`, keyed
      on the file's path, size, mtime and these options.
    progress: show a progress bar.

  Raises:
    DataError: missing file, missing `cif` column, or a bad row.
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(f'{path}: no such file')
  options = dict(niggli=niggli, primitive=primitive, max_atoms=max_atoms,
                 min_distance=min_distance, skip_bad=skip_bad)
  cache = _cache_file(path, cache_dir, options) if cache_dir else None
  if cache is not None and cache.is_file():
    return _read_cache(cache, path)

  csv.field_size_limit(sys.maxsize)
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  if rows and 'cif' not in rows[0]:
    raise DataError(f'{path}: no "cif" column (columns: {list(rows[0])})')
  report = LoadReport(str(path))
  structures = []
  for k, row in enumerate(tqdm(rows, desc=f'reading {path.name}',
                               disable=not progress, leave=False)):
    ident = str(row.get('material_id', k))
    try:
      atoms = _standardize(_parse_cif(row['cif']), niggli, primitive)
    except Exception as err:  # pymatgen raises many types on corrupt CIF
      _handle_bad(report, skip_bad, k, ident,
                  f'unparseable CIF ({type(err).__name__}: {err})', str(path))
      continue
    try:
      validation.check_structure(atoms, min_distance, max_atoms)
    except validation.StructureError as err:
      _handle_bad(report, skip_bad, k, ident, str(err), str(path))
      continue
    atoms.info.update(_row_info(row, k))
    structures.append(atoms)
  report.num_read = len(structures)
  if cache is not None:
    _write_cache(cache, structures, report)
  return structures, report


def _row_info(row: dict, k: int) -> dict:
  info = {'row': k}
  for key, value in row.items():
    if key in ('cif', '', None):
      continue
    try:
      info[key] = float(value)
    except (TypeError, ValueError):
      info[key] = value
  info['material_id'] = str(row.get('material_id', k))
  return info


def _write_cache(cache: Path, structures, report: LoadReport) -> None:
  arrays = _atoms_to_arrays(structures)
  infos = json.dumps([a.info for a in structures], default=str)
  skipped = json.dumps([dataclasses.asdict(s) for s in report.skipped])
  with atomic_path(cache) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, infos=np.array(infos), skipped=np.array(skipped), **arrays)


def _read_cache(cache: Path, path: Path):
  with np.load(cache) as data:
    structures = _arrays_to_atoms(data)
    infos = json.loads(str(data['infos']))
    skipped = [SkippedRow(**s) for s in json.loads(str(data['skipped']))]
  for atoms, info in zip(structures, infos):
    atoms.info.update(info)
  return structures, LoadReport(str(path), len(structures), skipped, True)


def read_structures(path: str | os.PathLike, *, index=':', format: str | None = None,
                    skip_bad: bool = False, max_atoms: int | None = None,
                    min_distance: float = validation.DEFAULT_MIN_DISTANCE,
                    niggli: bool = False, primitive: bool = False
                    ) -> tuple[list[ase.Atoms], LoadReport]:
  """Read any file ASE reads (extxyz, CIF, POSCAR, ...), or a CDVAE CSV.

  Frames are validated like CSV rows; `row` in errors is the frame index.
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(f'{path}: no such file')
  if path.suffix.lower() == '.csv' and format is None:
    return read_cdvae_csv(path, skip_bad=skip_bad, max_atoms=max_atoms,
                          min_distance=min_distance, niggli=niggli,
                          primitive=primitive, progress=False)
  try:
    frames = ase.io.read(path, index=index, format=format)
  except Exception as err:
    raise DataError(f'{path}: cannot be read ({type(err).__name__}: {err})'
                    ) from err
  frames = frames if isinstance(frames, list) else [frames]
  report = LoadReport(str(path))
  out = []
  for k, atoms in enumerate(frames):
    try:
      validation.check_structure(atoms, min_distance, max_atoms)
    except validation.StructureError as err:
      _handle_bad(report, skip_bad, k, str(atoms.info.get('material_id', k)),
                  str(err), str(path))
      continue
    atoms = _standardize(atoms, niggli, primitive)
    atoms.info.setdefault('row', k)
    out.append(atoms)
  report.num_read = len(out)
  return out, report


# ----------------------------------------------------------------------------
# Writers


def write_extxyz(path, structures: Iterable[ase.Atoms]) -> None:
  """Write structures (with their `info` and arrays) to an extxyz file."""
  structures = list(structures)
  with atomic_path(path) as tmp:
    ase.io.write(tmp, structures, format='extxyz')


def write_ase_db(path, structures: Iterable[ase.Atoms]) -> None:
  """Write structures to an ASE database (SQLite), atomically; `info` keys
  with plain values become key-value pairs."""
  import ase.db
  with atomic_path(path) as tmp:
    with ase.db.connect(str(tmp), type='db', append=False) as db:
      for atoms in structures:
        pairs = {k: v for k, v in atoms.info.items()
                 if isinstance(v, (int, float, str, bool)) and k.isidentifier()}
        db.write(atoms, **pairs)


def write_cifs(directory, structures: Iterable[ase.Atoms],
               prefix: str = 'structure') -> list[Path]:
  """Write one CIF per structure into `directory` (`{prefix}_{k:05d}.cif`)."""
  directory = Path(directory)
  paths = []
  for k, atoms in enumerate(structures):
    path = directory / f'{prefix}_{k:05d}.cif'
    with atomic_path(path) as tmp:
      ase.io.write(tmp, atoms, format='cif')
    paths.append(path)
  return paths


def write_npz(path, structures: Sequence[ase.Atoms], **extra) -> dict:
  """Write structures and their physics summary to `.npz`.

  Fields (S structures, T atoms in total), in the layout DiffCSP's outputs use:
  `frac_coords [T, 3]`, `atom_types [T]`, `num_atoms [S]`, `lattices [S, 3, 3]`
  (Angstrom), `lengths [S, 3]`, `angles [S, 3]` (degrees), `valid [S]`,
  `min_distance [S]` (Angstrom), `density [S]` (g/cm^3), `volume [S]`
  (Angstrom^3), `volume_per_atom [S]`, `mean_coordination [S]`, `reason [S]`
  (why invalid, '' if valid), `space_group [S]` and `space_group_symbol [S]`
  (spglib, symprec 0.1 A; 0 and '' when undetermined); plus any `extra` arrays.
  Returns the dict written.
  """
  arrays = _atoms_to_arrays(structures)
  summary = validation.summary_arrays(structures)
  summary.pop('n_atoms')  # num_atoms already holds it
  arrays.update(
      lengths=np.array([a.cell.lengths() for a in structures]).reshape(-1, 3),
      angles=np.array([a.cell.angles() for a in structures]).reshape(-1, 3),
      **summary)
  arrays.update(extra)
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)
  return arrays


def read_npz(path) -> list[ase.Atoms]:
  """Structures from a `write_npz` file (or DiffCSP's eval `.npz` layout)."""
  with np.load(path) as data:
    return _arrays_to_atoms(data)


def write_lammps_dump(path, frames: Sequence[ase.Atoms],
                      timesteps: Sequence[int] | None = None) -> None:
  """LAMMPS text dump trajectory (`lammps-dump-text`), read by OVITO and ASE.

  Cells are rotated into LAMMPS' upper-triangular convention (a along x, b in
  xy) by ASE's `Prism`; positions are rotated with them. Columns:
  `id type element x y z`, type numbered by atomic number order.
  """
  from ase.calculators.lammps.coordinatetransform import Prism
  frames = list(frames)
  timesteps = list(range(len(frames))) if timesteps is None else list(timesteps)
  species = sorted({int(z) for f in frames for z in f.numbers})
  type_of = {z: k + 1 for k, z in enumerate(species)}
  lines = []
  for step, atoms in zip(timesteps, frames):
    prism = Prism(atoms.cell[:])
    xhi, yhi, zhi, xy, xz, yz = prism.get_lammps_prism()
    pos = prism.vector_to_lammps(atoms.positions, wrap=False)
    xlo_b = min(0.0, xy, xz, xy + xz)
    xhi_b = xhi + max(0.0, xy, xz, xy + xz)
    ylo_b, yhi_b = min(0.0, yz), yhi + max(0.0, yz)
    lines += ['ITEM: TIMESTEP', str(int(step)), 'ITEM: NUMBER OF ATOMS',
              str(len(atoms)), 'ITEM: BOX BOUNDS xy xz yz pp pp pp',
              f'{xlo_b:.10f} {xhi_b:.10f} {xy:.10f}',
              f'{ylo_b:.10f} {yhi_b:.10f} {xz:.10f}',
              f'0.0 {zhi:.10f} {yz:.10f}', 'ITEM: ATOMS id type element x y z']
    symbols = atoms.get_chemical_symbols()
    for k in range(len(atoms)):
      x, y, z = pos[k]
      lines.append(f'{k + 1} {type_of[int(atoms.numbers[k])]} {symbols[k]} '
                   f'{x:.8f} {y:.8f} {z:.8f}')
  write_text_atomic(path, '\n'.join(lines) + '\n')
