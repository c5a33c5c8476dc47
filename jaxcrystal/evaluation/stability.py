"""Stability of relaxed crystals against reference structures relaxed with
the same potential (issue 36), and the S.U.N.-style rate.

The references (e.g. diamond and graphite and the lowest-energy training
crystals for carbon) give a convex hull of energy per atom over
composition (pymatgen's `PhaseDiagram`); each relaxed sample's energy
above that hull says how far it is from the most stable known state. A
sample is stable within `margin` eV/atom (0.1, as MatterGen), and S.U.N.
when also unique among the samples and novel against the training set
(`metrics.uniqueness_novelty`, StructureMatcher).

  elemental_references(symbols) -> ASE's reference crystals (+ graphite)
  energies_above_hull(structures, energies, ref_structures, ref_energies) -> [S]
  sun_report(structures, e_hull, train, margin) -> counts and rates
"""
from __future__ import annotations

import math
from typing import Sequence

import ase
import ase.data
import numpy as np
from ase.build import bulk

from jaxcrystal.evaluation import metrics
from jaxcrystal.evaluation import relaxation

STABLE_MARGIN = 0.1  # eV/atom


def elemental_references(symbols: Sequence[str]) -> list[ase.Atoms]:
  """ASE's reference crystal of each element (`ase.build.bulk` at its
  tabulated structure), and graphite beside diamond for carbon."""
  out = []
  for symbol in sorted(set(symbols)):
    try:
      out.append(bulk(symbol))
    except (ValueError, RuntimeError, KeyError):
      continue  # no tabulated crystal (e.g. a gas): the hull lacks it
    if symbol == 'C':
      graphite = ase.Atoms('C4', cell=[[2.46, 0, 0], [-1.23, 2.13, 0], [0, 0, 6.70]],
                           pbc=True, scaled_positions=[[0, 0, 0.25], [0, 0, 0.75],
                                                       [1 / 3, 2 / 3, 0.25],
                                                       [2 / 3, 1 / 3, 0.75]])
      out.append(graphite)
  return out


def energies_above_hull(structures: Sequence[ase.Atoms], energies: Sequence[float],
                        ref_structures: Sequence[ase.Atoms],
                        ref_energies: Sequence[float]) -> np.ndarray:
  """`[S]` energy above the references' hull (eV/atom; negative: below it,
  more stable than every reference) of each structure with energy per atom
  `energies`; NaN where the energy is not finite or the references do not
  span the structure's elements."""
  from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
  from pymatgen.core import Composition
  entries = [PDEntry(Composition(a.get_chemical_formula()), float(e) * len(a))
             for a, e in zip(ref_structures, ref_energies) if np.isfinite(e)]
  diagram = PhaseDiagram(entries) if entries else None
  covered = {str(el) for el in diagram.elements} if diagram is not None else set()
  out = np.full(len(structures), np.nan)
  for k, (atoms, e) in enumerate(zip(structures, energies)):
    if not np.isfinite(e) or not set(atoms.get_chemical_symbols()) <= covered:
      continue
    entry = PDEntry(Composition(atoms.get_chemical_formula()), float(e) * len(atoms))
    out[k] = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)[1]
  return out


def sun_report(structures: Sequence[ase.Atoms], e_hull: np.ndarray,
               train: Sequence[ase.Atoms] | None, margin: float = STABLE_MARGIN,
               workers: int = 1, progress: bool = False) -> dict:
  """Stable (energy above hull <= margin), and of those the unique and
  novel ones: counts and rates over all `structures`."""
  e_hull = np.asarray(e_hull, float)
  known = np.isfinite(e_hull)
  stable = [s for s, e in zip(structures, e_hull) if np.isfinite(e) and e <= margin]
  out = {'margin': margin, 'num_structures': len(structures),
         'hull_known': int(known.sum()), 'stable': len(stable),
         'stable_fraction': len(stable) / len(structures) if structures else math.nan,
         'e_above_hull_mean': float(e_hull[known].mean()) if known.any() else math.nan,
         'e_above_hull_median': float(np.median(e_hull[known])) if known.any() else math.nan}
  if stable and train is not None:
    un = metrics.uniqueness_novelty(stable, train, workers=workers, progress=progress)
    sun = int(round(un['unique_novel'] * len(stable)))
    out.update(stable_unique=int(round(un['uniqueness'] * len(stable))), sun=sun,
               sun_rate=sun / len(structures))
  elif train is not None:
    out.update(stable_unique=0, sun=0, sun_rate=0.0)
  return out


def markdown_table(reports: dict) -> str:
  """`sun_report` results side by side ({label: report}) as markdown."""
  return relaxation.side_by_side(reports, (
      ('hull references', 'hull_references', '{:d}'),
      ('energy above hull, median (eV/atom)', 'e_above_hull_median', '{:.3f}'),
      ('energy above hull, mean (eV/atom)', 'e_above_hull_mean', '{:.3f}'),
      ('stable (within the margin)', 'stable_fraction', '{:.1%}'),
      ('stable and unique', 'stable_unique', '{:d}'),
      ('S.U.N. rate', 'sun_rate', '{:.1%}')))
