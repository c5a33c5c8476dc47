"""Writing structures and results: atomic files, strict JSON, extxyz, CIF,
`.npz`, ASE databases and LAMMPS dumps. Reading is `jaxcrystal.data.readers`.

Writers are atomic: they write a temporary file beside the target and rename
it, so a crash never leaves a half-written file; files get the permissions
the umask gives (not the 0600 of a bare temporary file). JSON is strict:
NaN and infinities are written as null and counted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import ase
import ase.io
import numpy as np

from jaxcrystal.evaluation import validation


# ----------------------------------------------------------------------------
# Atomic writing


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
  """Yield a temporary path beside `path`; rename it onto `path` on success.
  The file gets the mode a plain `open` would give (0666 less the umask)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                             dir=path.parent)
  os.close(fd)
  try:
    yield Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, 'rb+') as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def file_sha256(path: str | os.PathLike) -> str:
  """Hex sha256 of a file's bytes: the provenance runs and samples record."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def write_text_atomic(path, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text)


def strict_json(obj) -> tuple[object, int]:
  """(`obj` with every NaN or infinity replaced by None, how many were).
  numpy scalars and arrays become plain numbers and lists."""
  count = 0

  def clean(x):
    nonlocal count
    if isinstance(x, dict):
      return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [clean(v) for v in x]
    if isinstance(x, np.ndarray):
      return clean(x.tolist())
    if isinstance(x, np.generic):
      x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
      count += 1
      return None
    return x
  return clean(obj), count


def json_line(record: dict) -> tuple[str, int]:
  """One strict JSON line (with newline) and its count of non-finite values."""
  clean, count = strict_json(record)
  return json.dumps(clean, allow_nan=False, default=str) + '\n', count


def write_json_atomic(path, obj) -> int:
  """Write strict JSON; returns how many non-finite numbers became null."""
  clean, count = strict_json(obj)
  write_text_atomic(path, json.dumps(clean, indent=2, sort_keys=True,
                                     allow_nan=False, default=str))
  return count


# ----------------------------------------------------------------------------
# Structures as arrays


def atoms_to_arrays(structures: Sequence[ase.Atoms]) -> dict:
  n = np.array([len(a) for a in structures], np.int64)
  return dict(
      num_atoms=n,
      lattices=np.array([a.cell[:] for a in structures]).reshape(-1, 3, 3),
      frac_coords=np.concatenate([a.get_scaled_positions(wrap=False)
                                  for a in structures]) if len(n) else
      np.zeros((0, 3)),
      atom_types=np.concatenate([a.numbers for a in structures]) if len(n)
      else np.zeros(0, np.int64))


def arrays_to_atoms(arrays) -> list[ase.Atoms]:
  n = arrays['num_atoms']
  offsets = np.concatenate([[0], np.cumsum(n)])
  return [ase.Atoms(numbers=arrays['atom_types'][offsets[k]:offsets[k + 1]],
                    cell=arrays['lattices'][k], pbc=True,
                    scaled_positions=arrays['frac_coords'][offsets[k]:offsets[k + 1]])
          for k in range(len(n))]


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
  """Write `npz_arrays(structures, **extra)` to `.npz`; returns the dict."""
  arrays = npz_arrays(structures, **extra)
  save_npz(path, arrays)
  return arrays


def save_npz(path, arrays: dict) -> None:
  """Write a dict of arrays to `.npz`, atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)


def npz_arrays(structures: Sequence[ase.Atoms], **extra) -> dict:
  """Structures and their physics summary (validation) as the arrays of
  `write_npz`.

  Fields (S structures, T atoms in total), in the layout DiffCSP's outputs use:
  `frac_coords [T, 3]`, `atom_types [T]`, `num_atoms [S]`, `lattices [S, 3, 3]`
  (Angstrom), `lengths [S, 3]`, `angles [S, 3]` (degrees), `valid [S]`,
  `min_distance [S]` (Angstrom), `density [S]` (g/cm^3), `volume [S]`
  (Angstrom^3), `volume_per_atom [S]`, `mean_coordination [S]`, `reason [S]`
  (why invalid, '' if valid), `space_group [S]` and `space_group_symbol [S]`
  (spglib, symprec 0.1 A; 0 and '' when undetermined), `symmetry_messages [S]`
  (lines spglib printed, silenced); plus any `extra` arrays (e.g.
  `source_row [S]`, the compositions file row of each sample).
  """
  arrays = atoms_to_arrays(structures)
  summary = validation.summary_arrays(structures)
  summary.pop('n_atoms')  # num_atoms already holds it
  arrays.update(
      lengths=np.array([a.cell.lengths() for a in structures]).reshape(-1, 3),
      angles=np.array([a.cell.angles() for a in structures]).reshape(-1, 3),
      **summary)
  arrays.update(extra)
  return arrays


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
