"""Damaged crystals for healing: supercells, vacancies, displacements, and
the measurements of a healed structure (host-side, numpy/ASE).

All displacements are Cartesian (Angstrom). An "ideal" structure is the
undamaged reference whose sites healing should restore.
"""
from __future__ import annotations

import dataclasses

import ase
import numpy as np
from ase.build import bulk

VACANCY_EMPTY_RADIUS = 1.0  # Angstrom: no atom this close to the removed site


def supercell(symbol: str = 'Pt', structure: str = 'fcc', a: float | None = None,
              repeat: int | tuple[int, int, int] = 3) -> ase.Atoms:
  """A cubic supercell of ASE's prototype (`structure`: fcc, bcc, sc, diamond,
  ...; `a` in Angstrom, ASE's reference value if None)."""
  try:
    unit = bulk(symbol, structure, a=a, cubic=True)
  except Exception as err:
    raise ValueError(f'cannot build {structure} {symbol} (a={a}): {err}') from err
  reps = (repeat,) * 3 if isinstance(repeat, int) else tuple(repeat)
  return unit * reps


def remove_atom(atoms: ase.Atoms, index: int) -> tuple[ase.Atoms, np.ndarray]:
  """Copy of `atoms` without atom `index`; returns (atoms, removed site [3])."""
  if not 0 <= index < len(atoms):
    raise IndexError(f'atom {index} not in a structure of {len(atoms)} atoms')
  site = atoms.positions[index].copy()
  out = atoms.copy()
  del out[index]
  return out, site


def neighbors_of_site(atoms: ase.Atoms, site: np.ndarray, radius: float) -> np.ndarray:
  """Indices of atoms within `radius` A of a point (minimum image)."""
  from ase.geometry import find_mic
  _, d = find_mic(atoms.positions - site, atoms.cell[:], pbc=True)
  return np.flatnonzero(d < radius)


def damage(rng: np.random.Generator, ideal: ase.Atoms, sigma: float,
           site: np.ndarray | None = None, site_radius: float = 3.0,
           site_displacement: float = 0.0) -> ase.Atoms:
  """Thermal-like Gaussian displacements (std `sigma` A per coordinate) of
  every atom; if `site` is given, atoms within `site_radius` of it are instead
  displaced by `site_displacement` A in random directions (irradiation-like
  damage around a vacancy)."""
  out = ideal.copy()
  disp = rng.normal(0.0, sigma, out.positions.shape)
  if site is not None and site_displacement > 0:
    near = neighbors_of_site(ideal, site, site_radius)
    direction = rng.normal(size=(len(near), 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    disp[near] = site_displacement * direction
  out.positions += disp
  return out


def displacement_from_ideal(atoms: ase.Atoms, ideal: ase.Atoms,
                            remove_translation: bool = True) -> np.ndarray:
  """Minimum-image displacement of each atom from its ideal site, `[N, 3]` A.
  With `remove_translation`, the mean displacement (a rigid shift, which a
  translation-invariant model cannot see) is subtracted."""
  from ase.geometry import find_mic
  d, _ = find_mic(atoms.positions - ideal.positions, ideal.cell[:], pbc=True)
  return d - d.mean(0) if remove_translation else d


def rmsd(atoms: ase.Atoms, ideal: ase.Atoms) -> float:
  """Root-mean-square displacement from the ideal sites (A), translation removed."""
  d = displacement_from_ideal(atoms, ideal)
  return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))


@dataclasses.dataclass
class HealingReport:
  """What healing achieved (lengths in Angstrom)."""
  rmsd_before: float
  rmsd_after: float
  max_displacement_after: float
  vacancy_empty: bool
  closest_to_vacancy: float
  vacancy_neighbor_coordination: list[int]
  steps: int

  @property
  def improvement(self) -> float:
    return self.rmsd_before / max(self.rmsd_after, 1e-12)


def healing_report(damaged: ase.Atoms, healed: ase.Atoms, ideal: ase.Atoms,
                   vacancy_site: np.ndarray | None, steps: int,
                   neighbor_radius: float | None = None) -> HealingReport:
  """Measure a healing run against the ideal sites.

  `vacancy_neighbor_coordination` counts, for each ideal first neighbour of
  the vacancy, the atoms within the first-shell radius of it after healing.
  """
  from ase.geometry import find_mic
  from ase.neighborlist import neighbor_list
  after = displacement_from_ideal(healed, ideal)
  closest, coordination = float('inf'), []
  if vacancy_site is not None:
    _, d = find_mic(healed.positions - vacancy_site, ideal.cell[:], pbc=True)
    closest = float(d.min())
    if neighbor_radius is None:  # midway between first and second shells
      _, d_ideal = find_mic(ideal.positions - vacancy_site, ideal.cell[:], pbc=True)
      shells = np.unique(np.round(d_ideal, 2))
      neighbor_radius = float(shells[:2].mean()) if len(shells) > 1 else shells[0] * 1.2
    first = np.flatnonzero(
        find_mic(ideal.positions - vacancy_site, ideal.cell[:], pbc=True)[1]
        < neighbor_radius)
    i = neighbor_list('i', healed, neighbor_radius)
    counts = np.bincount(i, minlength=len(healed))
    coordination = counts[first].tolist()
  return HealingReport(
      rmsd_before=rmsd(damaged, ideal), rmsd_after=rmsd(healed, ideal),
      max_displacement_after=float(np.linalg.norm(after, axis=1).max()),
      vacancy_empty=closest >= VACANCY_EMPTY_RADIUS, closest_to_vacancy=closest,
      vacancy_neighbor_coordination=coordination, steps=steps)
