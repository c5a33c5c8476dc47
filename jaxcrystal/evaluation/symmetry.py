"""Symmetrized samples and space-group distributions (`sample.py
--symmetrize TOL`, issue 35).

Generated crystals come out with positions a little off their symmetric
sites, so spglib at a tight tolerance calls most of them P1. Symmetrizing
refines each sample within a tolerance (Angstrom) and writes the
standardised primitive cell (spglib `standardize_cell`, idealised): the
structure a researcher takes on to DFT. Raw samples stay what the papers'
metrics score; the symmetrized ones are written beside them.

  symmetrize(atoms, symprec) -> (refined atoms or None, space group number)
  space_group_shares(numbers) -> {number: share}
  space_group_table({label: numbers}) -> rows of the most common groups
  write_space_group_report(outdir, {label: numbers}, symprec): json, md, png
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import ase
import numpy as np
from tqdm.auto import tqdm

from jaxcrystal.data import io as io_lib
from jaxcrystal.evaluation import validation
from jaxcrystal.geometry import spacegroup
from jaxcrystal.plotting import plots

# Tolerances (Angstrom) `--symmetrize` accepts: below, spglib finds nothing
# but P1 in float32 samples; above, distinct sites merge.
SYMPREC_RANGE = (1e-3, 1.0)


def symmetrize(atoms: ase.Atoms, symprec: float) -> tuple[ase.Atoms | None, int]:
  """The standardised primitive cell of `atoms` with positions refined to
  the space group spglib finds within `symprec` Angstrom, and that group's
  number. (None, 0) where spglib finds none (overlapping atoms, a
  degenerate cell). The refined cell may hold fewer atoms than a sample
  that is a supercell of it."""
  import spglib
  dataset = spacegroup.symmetry_dataset(atoms, symprec)
  if dataset is None:
    return None, 0
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', DeprecationWarning)
      with spacegroup.capture_c_stderr([]):
        refined = spglib.standardize_cell(spacegroup.spglib_cell(atoms), to_primitive=True,
                                          no_idealize=False, symprec=symprec)
  except Exception:  # spglib raises on degenerate cells in recent versions
    return None, 0
  if refined is None:
    return None, 0
  lattice, frac, numbers = refined
  out = ase.Atoms(numbers=numbers, cell=lattice, scaled_positions=frac, pbc=True)
  return out, int(dataset.number)


def symmetrize_all(structures: Sequence[ase.Atoms], symprec: float,
                   progress: bool = True) -> tuple[list[ase.Atoms], dict]:
  """`symmetrize` each structure. Returns (structures, arrays): the refined
  structure, or the raw one unchanged where spglib found no group (its
  `info['symmetrized']` False); arrays `space_group [S]` (0: none found),
  `symmetrized [S]` bool and `atoms_before`/`atoms_after [S]`."""
  out, groups, done = [], [], []
  for atoms in tqdm(structures, desc='symmetrizing', disable=not progress):
    refined, number = symmetrize(atoms, symprec)
    done.append(refined is not None)
    refined = refined if refined is not None else atoms.copy()
    refined.info = {**atoms.info, 'symmetrized': done[-1], 'space_group': number,
                    'symprec': symprec}
    out.append(refined)
    groups.append(number)
  return out, {'space_group': np.array(groups, int), 'symmetrized': np.array(done, bool),
               'atoms_before': np.array([len(a) for a in structures], int),
               'atoms_after': np.array([len(a) for a in out], int)}


def space_groups(structures: Sequence[ase.Atoms], symprec: float,
                 progress: bool = True, desc: str = 'space groups') -> np.ndarray:
  """`[S]` space-group numbers by spglib within `symprec` (0: none found)."""
  return np.array([validation.space_group(a, symprec)[0]
                   for a in tqdm(structures, desc=desc, disable=not progress)], int)


def space_group_shares(numbers: Sequence[int]) -> dict[int, float]:
  """{space group number: share of the structures}, 0 for those spglib
  found no group of; most common first."""
  numbers = np.asarray(numbers, int)
  if not numbers.size:
    return {}
  values, counts = np.unique(numbers, return_counts=True)
  order = np.argsort(-counts, kind='stable')
  return {int(values[i]): float(counts[i] / numbers.size) for i in order}


def non_p1_share(numbers: Sequence[int]) -> float:
  """Share of structures in a group other than P1 (1); those with no group
  found (0) count as P1."""
  numbers = np.asarray(numbers, int)
  return float(np.mean(numbers > 1)) if numbers.size else float('nan')


def space_group_table(sets: Mapping[str, Sequence[int]], top: int = 10) -> list[dict]:
  """Rows {space_group, symbol, label: share, ...} for the `top` groups most
  common over all `sets` ({label: numbers}), then one row 'other'."""
  shares = {label: space_group_shares(v) for label, v in sets.items()}
  pooled: dict[int, float] = {}
  for table in shares.values():
    for number, share in table.items():
      pooled[number] = pooled.get(number, 0.0) + share
  chosen = sorted(pooled, key=lambda n: -pooled[n])[:top]
  rows = [{'space_group': n, 'symbol': group_symbol(n),
           **{label: table.get(n, 0.0) for label, table in shares.items()}}
          for n in chosen]
  rest = {label: 1.0 - sum(table.get(n, 0.0) for n in chosen) if table else 0.0
          for label, table in shares.items()}
  if any(v > 1e-9 for v in rest.values()):
    rows.append({'space_group': -1, 'symbol': 'other', **rest})
  return rows


def group_symbol(number: int) -> str:
  """Hermann-Mauguin symbol of a space group number ('none' for 0)."""
  if number <= 0:
    return 'none'
  import spglib
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    return str(spglib.get_spacegroup_type(hall_number(number)).international_short)


def hall_number(number: int) -> int:
  """The first Hall number (1..530) of international number `number` (the
  standard setting spglib's database lists first)."""
  import spglib
  if not _HALL:
    with warnings.catch_warnings():  # spglib's deprecation notice, per call
      warnings.simplefilter('ignore', DeprecationWarning)
      for hall in range(1, 531):
        _HALL.setdefault(int(spglib.get_spacegroup_type(hall).number), hall)
  return _HALL[number]


_HALL: dict[int, int] = {}


def markdown_table(rows: Sequence[dict], labels: Sequence[str]) -> str:
  """`space_group_table` rows as a markdown table of percentages."""
  lines = ['| space group | ' + ' | '.join(labels) + ' |',
           '|---|' + '---|' * len(labels)]
  for row in rows:
    name = (f"{row['symbol']} ({row['space_group']})" if row['space_group'] > 0
            else row['symbol'])
    lines.append(f'| {name} | ' + ' | '.join(f'{100 * row[k]:.1f} %' for k in labels)
                 + ' |')
  return '\n'.join(lines) + '\n'


def write_space_group_report(outdir, sets: Mapping[str, Sequence[int]],
                             symprec: float, top: int = 10) -> dict:
  """Write `space_groups.json` (shares, non-P1 share per set), `.md` (the
  table) and `.png` (bar chart) of `sets` ({label: numbers}, e.g. raw,
  symmetrized, training data) into `outdir`; return the JSON's content."""
  outdir = Path(outdir)
  rows = space_group_table(sets, top)
  labels = list(sets)
  report = {'symprec': symprec,
            'num_structures': {k: int(len(v)) for k, v in sets.items()},
            'non_p1_share': {k: non_p1_share(v) for k, v in sets.items()},
            'table': rows}
  io_lib.write_json_atomic(outdir / 'space_groups.json', report)
  io_lib.write_text_atomic(outdir / 'space_groups.md', (
      f'Space groups by spglib within {symprec:g} A (non-P1: '
      + ', '.join(f'{k} {100 * v:.1f} %' for k, v in report['non_p1_share'].items())
      + ')\n\n' + markdown_table(rows, labels)))
  names = [f"{r['symbol']} ({r['space_group']})" if r['space_group'] > 0 else r['symbol']
           for r in rows]
  plots.plot_shares(names, {k: [r[k] for r in rows] for k in labels},
                    outdir / 'space_groups.png',
                    title=f'Space groups (spglib, {symprec:g} A)')
  return report
