"""CIF data blocks to structures, with the project's own checks first.

pymatgen parses CIFs as CDVAE and DiffCSP do, but reports every geometry
problem as "Invalid CIF file with no structures!". Here a block's own
numbers are checked first (cell edges and angles, coordinates, and where
pymatgen fails, overlapping listed sites), each with a message in the
user's terms; pymatgen's own reason is given where it fails after them.
"""
from __future__ import annotations

import re
import warnings

import ase
import numpy as np

from jaxcrystal.evaluation import validation


_CELL_KEYS = ('_cell_length_a', '_cell_length_b', '_cell_length_c',
              '_cell_angle_alpha', '_cell_angle_beta', '_cell_angle_gamma')


def _cif_number(value) -> float:
  """'3.8363(2)' -> 3.8363; NaN for '?', '.', or anything unparseable."""
  text = re.sub(r'\(\d+\)$', '', str(value).strip())
  try:
    return float(text)
  except ValueError:
    return float('nan')


def _raw_cif_checks(raw: dict, overlap_distance: float = 0.0) -> None:
  """The project's checks on a CIF block's own numbers (cell, coordinates,
  and with `overlap_distance` > 0 overlapping listed sites), before pymatgen
  expands it: each failure gets its own message in the user's terms."""
  from pymatgen.core import Lattice
  missing = [k for k in _CELL_KEYS if k not in raw]
  if missing:
    raise validation.StructureError(f'CIF has no {", ".join(missing)}')
  a, b, c, alpha, beta, gamma = (_cif_number(raw[k]) for k in _CELL_KEYS)
  if not np.all(np.isfinite([a, b, c, alpha, beta, gamma])):
    raise validation.StructureError(
        f'non-finite cell parameters (a, b, c = {raw["_cell_length_a"]}, '
        f'{raw["_cell_length_b"]}, {raw["_cell_length_c"]}; angles '
        f'{raw["_cell_angle_alpha"]}, {raw["_cell_angle_beta"]}, '
        f'{raw["_cell_angle_gamma"]})')
  if min(a, b, c) <= 0:
    raise validation.StructureError(
        f'zero-length cell edge (a, b, c = {a:g}, {b:g}, {c:g} A)')
  with np.errstate(all='ignore'), warnings.catch_warnings():
    warnings.simplefilter('ignore')
    matrix = Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix
  volume = float(abs(np.linalg.det(matrix))) if np.all(np.isfinite(matrix)) else 0.0
  if volume <= validation.DEFAULT_MIN_VOLUME:
    raise validation.StructureError(
        f'cell volume {volume:.3g} A^3: the cell vectors are collinear or '
        f'coplanar (angles {alpha:g}, {beta:g}, {gamma:g} degrees)')
  xyz = [raw.get(f'_atom_site_fract_{k}') for k in 'xyz']
  if any(v is None for v in xyz):
    raise validation.StructureError('CIF has no _atom_site_fract_x/y/z loop')
  xyz = [v if isinstance(v, list) else [v] for v in xyz]
  frac = np.array([[_cif_number(v) for v in column] for column in xyz]).T
  labels = raw.get('_atom_site_label', raw.get('_atom_site_type_symbol', []))
  labels = labels if isinstance(labels, list) else [labels]
  bad = np.flatnonzero(~np.all(np.isfinite(frac), axis=1))
  if bad.size:
    k = int(bad[0])
    label = labels[k] if k < len(labels) else k
    raise validation.StructureError(
        f'NaN or non-numeric coordinate at site {label} '
        f'({", ".join(str(col[k]) for col in xyz)})')
  if overlap_distance > 0 and len(frac) > 1:
    sites = ase.Atoms(f'H{len(frac)}', cell=matrix, pbc=True, scaled_positions=frac)
    d = validation.nearest_neighbor_distances(sites)
    if d.min() < overlap_distance:
      i = int(np.argmin(d))
      raise validation.StructureError(
          f'atoms overlap: site {labels[i] if i < len(labels) else i} is '
          f'{d[i]:.3f} A from another site (< {overlap_distance} A; a duplicated '
          'site?)')


def _pymatgen_reason(parser) -> str:
  notes = [re.sub(r'No structure parsed for section \d+ in CIF\.\s*', '', w).strip()
           for w in parser.warnings]
  notes = [n for n in notes if n]
  return 'pymatgen cannot build a structure: ' + ('; '.join(notes) or 'no reason given')


def parse_block(text: str, min_distance: float = 0.0
              ) -> tuple[ase.Atoms, dict]:
  """One CIF data block -> (Atoms, declared formulas), parsed by pymatgen as
  CDVAE and DiffCSP do, after the project's own checks on the block's
  numbers. Raises `StructureError` with the reason in the user's terms."""
  from pymatgen.core import DummySpecies
  from pymatgen.io.ase import AseAtomsAdaptor
  from pymatgen.io.cif import CifParser
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    try:
      parser = CifParser.from_str(text)
    except Exception as err:  # pymatgen's tokenizer raises bare builtins
      raise validation.StructureError(
          f'malformed CIF ({type(err).__name__}: {err}; a loop cut short by '
          'a truncated file?)') from None
    blocks = parser.as_dict()
    if not blocks:
      raise validation.StructureError('no CIF data block')
    raw = next(iter(blocks.values()))
    _raw_cif_checks(raw)
    try:
      structure = parser.parse_structures(primitive=False)[0]
    except Exception:
      structure = None
    if structure is None or not structure.is_ordered:
      # Duplicated sites make pymatgen fail on occupancy or merge them into a
      # disordered site: name the overlap where that is the cause.
      _raw_cif_checks(raw, min_distance)
    if structure is None:
      raise validation.StructureError(_pymatgen_reason(parser))
  if not structure.is_ordered:
    raise validation.StructureError('disordered sites (partial occupancy) are '
                                    'not supported')
  unknown = sorted({str(sp.symbol) for sp in structure.composition
                    if isinstance(sp, DummySpecies)})
  if unknown:
    raise validation.StructureError(f'unknown element symbol {unknown[0]!r} '
                                    '(not in the periodic table)')
  declared = {}
  if '_chemical_formula_sum' in raw:
    z = _cif_number(raw.get('_cell_formula_units_Z', 1))
    declared['_chemical_formula_sum'] = (str(raw['_chemical_formula_sum']),
                                         int(z) if np.isfinite(z) and z >= 1 else 1)
  return AseAtomsAdaptor.get_atoms(structure), declared


def split_blocks(text: str) -> list[tuple[str, str]]:
  """(name, text) of each `data_` block of a CIF file."""
  parts = re.split(r'(?m)^[ \t]*data_', text)
  return [(part.split(None, 1)[0] if part.strip() else f'block {k}',
           'data_' + part) for k, part in enumerate(parts[1:])]
