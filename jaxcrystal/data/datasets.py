"""The built-in dataset: 21 small crystals that need no download.

Three bases in conventional cubic cells with experimental lattice constants
(fcc Al a = 4.0495 A, bcc Fe a = 2.8665 A, diamond C a = 3.5668 A), each with
six deterministic variants. Every structure carries `info['base']` (the
prototype: fcc, bcc or diamond), `info['variant']` and `info['material_id']`.
"""
from __future__ import annotations

import ase
import numpy as np
from ase.build import bulk
from scipy.spatial.transform import Rotation

BASES = (
    ('Al', 'fcc', 4.0495),
    ('Fe', 'bcc', 2.8665),
    ('C', 'diamond', 3.5668),
)
VARIANTS = ('ideal', 'strain_iso', 'strain_shear', 'rattle', 'supercell',
            'rotated', 'strain_rattle')
# Coordination number of each prototype's first shell.
PROTOTYPE_COORDINATION = {'fcc': 12, 'bcc': 8, 'diamond': 4}


def _variant(atoms: ase.Atoms, name: str, seed: int) -> ase.Atoms:
  atoms = atoms.copy()
  if name == 'strain_iso':
    atoms.set_cell(atoms.cell[:] * 1.02, scale_atoms=True)
  elif name == 'strain_shear':
    strain = np.eye(3) + np.array([[0.0, 0.03, 0.0], [0.03, 0.0, 0.0],
                                   [0.0, 0.0, -0.01]])
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
  elif name == 'rattle':
    atoms.rattle(stdev=0.03, seed=seed)
  elif name == 'supercell':
    atoms = atoms * (2, 1, 1)
  elif name == 'rotated':
    rot = Rotation.from_euler('zyx', [30.0, 20.0, 10.0], degrees=True).as_matrix()
    atoms.set_cell(atoms.cell[:] @ rot.T, scale_atoms=True)
  elif name == 'strain_rattle':
    atoms.set_cell(atoms.cell[:] * 0.985, scale_atoms=True)
    atoms.rattle(stdev=0.02, seed=seed + 1)
  elif name != 'ideal':
    raise ValueError(f'unknown variant {name!r}; choose from {VARIANTS}')
  atoms.wrap()
  return atoms


def builtin_structures() -> list[ase.Atoms]:
  """The 21 built-in crystals (deterministic; same list on every call)."""
  out = []
  for b, (symbol, prototype, a) in enumerate(BASES):
    base = bulk(symbol, prototype, a=a, cubic=True)
    for v, name in enumerate(VARIANTS):
      atoms = _variant(base, name, seed=100 * b + v)
      atoms.info.update(base=prototype, variant=name,
                        material_id=f'{symbol}-{prototype}-{name}')
      out.append(atoms)
  return out
