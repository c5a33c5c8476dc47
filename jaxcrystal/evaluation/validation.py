"""Host-side checks and summaries of single structures (numpy/ASE).

`check_structure` is what loaders call on every row; `structure_summary` gives
the per-structure fields written to `.npz` and JSON summaries.
"""
from __future__ import annotations

import dataclasses

import ase
import numpy as np

from jaxcrystal import errors
from jaxcrystal.geometry import spacegroup

# 1 atomic mass unit per Angstrom^3 in g/cm^3.
AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660

DEFAULT_MIN_DISTANCE = 0.5  # Angstrom, the field's structural-validity cutoff
DEFAULT_MIN_VOLUME = 1e-3   # Angstrom^3; anything smaller is a degenerate cell
MAX_CELL_EDGE = 100.0       # Angstrom; longer: a unit error or vacuum, not a bulk crystal
MAX_IMAGES = 20000          # image budget of one coordination count


class StructureError(errors.UserError, ValueError):
  """A structure that cannot be used, with the reason."""


def check_structure(atoms: ase.Atoms,
                    min_distance: float = DEFAULT_MIN_DISTANCE,
                    max_atoms: int | None = None,
                    max_edge: float | None = None) -> None:
  """Raise `StructureError` naming the problem, or return None if usable.

  Checks, in order: non-empty, finite cell and positions, 3D periodicity,
  positive volume, cell edges up to `max_edge` Angstrom (readers pass
  `MAX_CELL_EDGE`; generated samples are judged without it), atom count
  within `max_atoms`, and no pair of atoms (over all periodic images)
  closer than `min_distance` Angstrom.
  """
  if len(atoms) == 0:
    raise StructureError('no atoms')
  cell = np.asarray(atoms.cell[:], float)
  if not np.all(np.isfinite(cell)):
    raise StructureError('non-finite lattice')
  if not np.all(np.isfinite(atoms.positions)):
    raise StructureError('NaN or infinite coordinates')
  if not np.all(atoms.pbc):
    raise StructureError(f'not periodic in 3D (pbc={atoms.pbc.tolist()})')
  vol = float(np.linalg.det(cell))
  if vol <= DEFAULT_MIN_VOLUME:
    raise StructureError(f'cell volume {vol:.4g} A^3 is zero or negative')
  longest = float(np.linalg.norm(cell, axis=1).max())
  if max_edge is not None and longest > max_edge:
    raise StructureError(
        f'cell edge of {longest:.4g} A exceeds {max_edge:g} A: not a bulk '
        'crystal (lengths in another unit? a slab or molecule in a vacuum box?)')
  if max_atoms is not None and len(atoms) > max_atoms:
    raise StructureError(f'{len(atoms)} atoms exceed the budget of {max_atoms}')
  dmin = min_interatomic_distance(atoms)
  if dmin < min_distance:
    raise StructureError(
        f'atoms overlap: minimum distance {dmin:.3f} A < {min_distance} A')


def nearest_neighbor_distances(atoms: ase.Atoms) -> np.ndarray:
  """Distance from each atom to its nearest other atom or own periodic image,
  `[N]` Angstrom. Robust for any cell, however skewed or sparse: pairs by the
  minimum image (ASE's Minkowski-reduced search) and images by the shortest
  vector of the reduced lattice; no search radius to grow."""
  from ase.geometry import find_mic
  from ase.geometry.minkowski_reduction import minkowski_reduce
  n = len(atoms)
  cell = np.asarray(atoms.cell[:], float)
  shortest = np.linalg.norm(minkowski_reduce(cell)[0], axis=1).min()
  nearest = np.full(n, shortest)
  if n > 1:
    pos = atoms.positions
    i, j = np.triu_indices(n, 1)
    _, d = find_mic(pos[j] - pos[i], cell, pbc=True)
    np.minimum.at(nearest, i, d)
    np.minimum.at(nearest, j, d)
  return nearest


def min_interatomic_distance(atoms: ase.Atoms) -> float:
  """Smallest distance between two atoms over all periodic images (Angstrom).
  O(N^2) pairs: meant for crystals of up to a few hundred atoms."""
  return float(nearest_neighbor_distances(atoms).min())


def coordination_by_nearest_shell(atoms: ase.Atoms,
                                  shell_tolerance: float = 0.1) -> np.ndarray:
  """Per-atom coordination: neighbours within (1 + tol) x the atom's nearest
  neighbour distance. With tol = 0.1 this separates fcc (12), bcc (8; the
  second shell is 15 % further) and diamond (4). Returns `[N]` int."""
  cut = nearest_neighbor_distances(atoms) * (1.0 + shell_tolerance)
  radius = float(cut.max()) + 1e-6
  spacings = atoms.cell.volume / np.linalg.norm(
      np.cross(atoms.cell[[1, 2, 0]], atoms.cell[[2, 0, 1]]), axis=1)
  images = np.prod(2 * np.ceil(radius / spacings) + 1)
  if images > MAX_IMAGES:
    raise StructureError(f'cell too skewed or sparse for a coordination count '
                         f'({images:.3g} periodic images within {radius:.3g} A)')
  counts = np.zeros(len(atoms), int)
  for d in image_distances(atoms, radius):
    counts += (d <= cut[:, None, None]).sum((1, 2))
  return counts


def image_distances(atoms: ase.Atoms, radius: float):
  """Yield chunks `[N, N, m]` of the distances (Angstrom) from atom i to the
  images of atom j under m cell shifts, over a grid of shifts that holds
  every image within `radius` (positions wrapped into the cell); an atom's
  distance to itself (no shift) is inf. numpy: for crystals of tens of
  atoms, where it is many times faster than a neighbour-list search."""
  cell = np.asarray(atoms.cell[:], float)
  spacings = abs(np.linalg.det(cell)) / np.linalg.norm(
      np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
  reps = np.ceil(radius / spacings).astype(int) + 1  # +1: wrapped positions
  grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reps], indexing='ij'),
                  -1).reshape(-1, 3)
  shifts = grid @ cell
  zero = int(np.flatnonzero(~grid.any(1))[0])
  pos = (atoms.get_scaled_positions(wrap=True) % 1.0) @ cell
  n = len(atoms)
  chunk = max(1, 4_000_000 // max(n * n * 3, 1))
  for start in range(0, len(shifts), chunk):
    part = shifts[start:start + chunk]
    d = np.linalg.norm(pos[None, :, None, :] - pos[:, None, None, :] + part[None, None],
                       axis=-1)
    if start <= zero < start + len(part):
      d[np.arange(n), np.arange(n), zero - start] = np.inf
    yield d


def density_g_cm3(atoms: ase.Atoms) -> float:
  """Mass density in g/cm^3."""
  return float(atoms.get_masses().sum() / atoms.get_volume() *
               AMU_PER_A3_TO_G_PER_CM3)


@dataclasses.dataclass
class StructureSummary:
  """Per-structure physics summary (units in the field names' docs)."""
  n_atoms: int
  volume: float            # Angstrom^3
  volume_per_atom: float   # Angstrom^3
  density: float           # g/cm^3
  min_distance: float      # Angstrom, periodic
  mean_coordination: float
  valid: bool
  reason: str              # '' when valid
  space_group: int         # international number by spglib; 0 if undetermined
  space_group_symbol: str  # Hermann-Mauguin symbol; '' if undetermined
  symmetry_messages: int   # lines spglib's C code printed (silenced, counted)


def _safe_mean_coordination(atoms, shell_tolerance, reason) -> float:
  """Mean coordination, or NaN where it is meaningless (overlapping atoms)
  or too costly to count (absurdly skewed cells of a failed sample)."""
  if reason:
    return float('nan')
  try:
    return float(coordination_by_nearest_shell(atoms, shell_tolerance).mean())
  except StructureError:
    return float('nan')


def space_group(atoms: ase.Atoms, symprec: float = 0.1,
                messages: list | None = None) -> tuple[int, str]:
  """(international number, Hermann-Mauguin symbol) by spglib with tolerance
  `symprec` Angstrom (0.1, as CDVAE/DiffCSP analyses); (0, '') when spglib
  finds none, as for an overlapping or degenerate sample. What spglib prints
  on the way is appended to `messages` instead of the terminal."""
  dataset = spacegroup.symmetry_dataset(atoms, symprec, messages)
  if dataset is None:
    return 0, ''
  return int(dataset.number), str(dataset.international)


def summary_arrays(structures) -> dict[str, np.ndarray]:
  """`structure_summary` of every structure as arrays `[S]` keyed by field."""
  summaries = [structure_summary(a) for a in structures]
  fields = [f.name for f in dataclasses.fields(StructureSummary)]
  out = {name: np.array([getattr(s, name) for s in summaries]) for name in fields}
  out['reason'] = out['reason'].astype(str)
  out['space_group_symbol'] = out['space_group_symbol'].astype(str)
  out['valid'] = out['valid'].astype(bool)
  return out


def structure_summary(atoms: ase.Atoms,
                      min_distance: float = DEFAULT_MIN_DISTANCE,
                      shell_tolerance: float = 0.1) -> StructureSummary:
  """Summarise one structure; never raises on bad geometry (reports it)."""
  try:
    check_structure(atoms, min_distance)
    reason = ''
  except StructureError as err:
    reason = str(err)
  finite = np.all(np.isfinite(atoms.positions)) and np.all(
      np.isfinite(atoms.cell[:]))
  vol = float(abs(np.linalg.det(atoms.cell[:]))) if finite else float('nan')
  usable = finite and vol > DEFAULT_MIN_VOLUME and len(atoms) > 0
  messages = []
  sg_number, sg_symbol = (space_group(atoms, messages=messages)
                          if usable and not reason else (0, ''))
  return StructureSummary(
      n_atoms=len(atoms), volume=vol,
      volume_per_atom=vol / max(len(atoms), 1),
      density=density_g_cm3(atoms) if usable else float('nan'),
      min_distance=(min_interatomic_distance(atoms)
                    if usable and len(atoms) else float('nan')),
      mean_coordination=_safe_mean_coordination(atoms, shell_tolerance, reason),
      valid=not reason, reason=reason,
      space_group=sg_number, space_group_symbol=sg_symbol,
      symmetry_messages=len(messages))
