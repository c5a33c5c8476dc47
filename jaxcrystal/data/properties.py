"""Properties of crystals that a model is conditioned on or a regressor
predicts: data columns by name, and properties computed from the structure.

  element_set(atoms) -> [NUM_ELEMENTS] multi-hot (index Z - 1)
  parse_element_set('Li-Fe-O') -> the same, from text
  property_values(structures, names) -> {name: [S] or [S, K] float32}

`DERIVED_PROPERTIES` are computed where a row has no column of that name;
`VECTOR_PROPERTIES` are vectors (the others are numbers, NaN where unknown);
`DEFAULT_ENCODERS` says how a condition on each is encoded unless told.
"""
from __future__ import annotations

import re
from typing import Sequence

import ase
import ase.data
import numpy as np

from jaxcrystal.geometry import spacegroup

NUM_ELEMENTS = 100  # type classes of the models: atomic numbers 1..100


def element_set(atoms: ase.Atoms) -> np.ndarray:
  """`[NUM_ELEMENTS]` float32 multi-hot of the elements a crystal holds
  (index Z - 1): its chemical system."""
  return element_set_of(atoms.numbers)


def element_set_of(numbers) -> np.ndarray:
  """`element_set` of atomic numbers `numbers: [K] int` (1..NUM_ELEMENTS)."""
  out = np.zeros(NUM_ELEMENTS, np.float32)
  out[np.clip(np.asarray(numbers, int) - 1, 0, NUM_ELEMENTS - 1)] = 1.0
  return out


def parse_element_set(text: str) -> np.ndarray:
  """`element_set` of a chemical system written 'Li-Fe-O' (or 'Li,Fe,O');
  ValueError naming a symbol that is not an element the models know."""
  out = np.zeros(NUM_ELEMENTS, np.float32)
  symbols = [s for s in re.split(r'[-,\s]+', text.strip()) if s]
  if not symbols:
    raise ValueError(f'{text!r} names no element (write e.g. Li-Fe-O)')
  for symbol in symbols:
    z = ase.data.atomic_numbers.get(symbol)
    if z is None or not 1 <= z <= NUM_ELEMENTS:
      raise ValueError(f'{symbol!r} in {text!r} is not an element of 1..{NUM_ELEMENTS}')
    out[z - 1] = 1.0
  return out


# Tolerance (Angstrom) of the derived space_group, as the field's analyses
# (CDVAE, DiffCSP) and `evaluation.validation.space_group` use.
SPACE_GROUP_SYMPREC = 0.1


def space_group_number(atoms: ase.Atoms, symprec: float = SPACE_GROUP_SYMPREC) -> float:
  """International space group number (1..230) spglib finds within
  `symprec` Angstrom; NaN (unknown) where it finds none."""
  dataset = spacegroup.symmetry_dataset(atoms, symprec)
  return float(dataset.number) if dataset is not None else float('nan')


# Properties every crystal has, computed from its structure where its data
# row has no column of that name: {name: atoms -> number or vector}.
DERIVED_PROPERTIES = {
    'num_elements': lambda atoms: len(set(atoms.numbers.tolist())),
    'num_atoms': len,
    'chemical_system': element_set,
    'space_group': space_group_number,
}
# How `--condition NAME` encodes a property by default: {name: (encoder,
# its settings)}; the others are scalars.
DEFAULT_ENCODERS = {
    'chemical_system': ('element_set', {}),
    'space_group': ('categorical', {'num_classes': 231}),  # class = number
}
# Properties whose value is a vector: {name: its length}; the others are numbers.
VECTOR_PROPERTIES = {'chemical_system': NUM_ELEMENTS}


def property_values(structures: Sequence[ase.Atoms], properties) -> dict:
  """{name: [S] float32} of each structure's `info[name]` (NaN: none), or
  for a name of `DERIVED_PROPERTIES` that a structure's info lacks, the
  value computed from the structure; `[S, K]` for `VECTOR_PROPERTIES`
  (a row of NaN: unknown)."""
  def value(atoms, name):
    if name not in atoms.info and name in DERIVED_PROPERTIES:
      return DERIVED_PROPERTIES[name](atoms)
    if name in VECTOR_PROPERTIES:
      return _vector(atoms.info.get(name), VECTOR_PROPERTIES[name])
    return _number(atoms.info.get(name))
  out = {}
  for name in properties:
    values = [value(s, name) for s in structures]
    width = VECTOR_PROPERTIES.get(name)
    out[name] = (np.array(values, np.float32).reshape(-1, width) if width
                 else np.array(values, np.float32))
  return out


def _vector(value, width: int) -> np.ndarray:
  """A vector property as `[width]` float32; all NaN unless a finite vector
  of that length."""
  try:
    v = np.asarray(value, np.float32)
  except (TypeError, ValueError):
    v = None
  if v is None or v.shape != (width,) or not np.isfinite(v).all():
    return np.full(width, np.nan, np.float32)
  return v


def _number(value) -> float:
  """A property value as a float; NaN if absent or not a finite number."""
  try:
    value = float(value)
  except (TypeError, ValueError):
    return float('nan')
  return value if np.isfinite(value) else float('nan')
