"""Structure generators: molecules, crystals, clusters and surfaces on demand.

Every generator is a pure function of a `numpy.random.Generator` and its
arguments and returns an `ase.Atoms`. Lengths are in Angstrom. Molecules and
clusters are non-periodic in a box with vacuum; crystals are periodic in 3D;
slabs are periodic in the surface plane with vacuum along z.
"""
from __future__ import annotations

import functools
import warnings

import ase
import numpy as np
from ase.build import bulk, surface
from ase.cluster import Decahedron, Icosahedron
from ase.collections import g2
from ase.data import atomic_numbers, covalent_radii
from ase.spacegroup import crystal as spacegroup_crystal

VACUUM = 6.0  # Angstrom around molecules and clusters, and above slabs

PROTOTYPES = ('fcc', 'bcc', 'hcp', 'diamond', 'rocksalt', 'zincblende', 'wurtzite',
              'fluorite', 'perovskite')
BINARY_PROTOTYPES = ('rocksalt', 'zincblende', 'wurtzite', 'fluorite')
# Space groups for random symmetric crystals: a spread over the crystal systems.
RANDOM_SPACEGROUPS = (2, 12, 14, 62, 63, 139, 166, 191, 194, 221, 225, 227, 229)
SURFACE_FACETS = ((1, 0, 0), (1, 1, 0), (1, 1, 1), (2, 1, 1))


def radius(symbol: str) -> float:
  """Covalent radius (Angstrom)."""
  return float(covalent_radii[atomic_numbers[symbol]])


@functools.lru_cache(maxsize=None)
def elemental_volume(symbol: str) -> float:
  """Volume per atom of the element's own solid (Angstrom^3), from
  pymatgen's molar volumes (solid H2 19.0, graphite 8.8, ...); for elements
  without one, 1.8 covalent-sphere volumes."""
  from pymatgen.core import Element
  molar = Element(symbol).molar_volume  # cm^3 / mol
  if molar is None:
    return 1.8 * 4 / 3 * np.pi * radius(symbol) ** 3
  return float(molar) * 1e24 / 6.02214076e23


def bond_length(a: str, b: str) -> float:
  return radius(a) + radius(b)


def _boxed(atoms: ase.Atoms) -> ase.Atoms:
  atoms.center(vacuum=VACUUM)
  atoms.pbc = False
  return atoms


# ----------------------------------------------------------------- molecules

def template_molecules(elements) -> list[str]:
  """Names of ASE's g2 molecules (two atoms or more) made only of `elements`."""
  return list(_template_molecules(frozenset(elements)))


@functools.lru_cache(maxsize=64)
def _template_molecules(allowed: frozenset) -> tuple[str, ...]:
  return tuple(name for name in g2.names if len(g2[name]) > 1 and
               set(g2[name].get_chemical_symbols()) <= allowed)


def template_molecule(rng: np.random.Generator, elements) -> ase.Atoms:
  """A molecule of ASE's g2 set made of `elements`, randomly rotated."""
  names = template_molecules(elements)
  if not names:
    raise ValueError(f'no g2 molecule is made only of {sorted(set(elements))}')
  atoms = g2[names[int(rng.integers(len(names)))]].copy()
  atoms.rotate(float(rng.uniform(0, 360)), rng.normal(size=3), center='COP')
  atoms.info['name'] = atoms.get_chemical_formula()
  return _boxed(atoms)


def random_molecule(rng: np.random.Generator, elements, num_atoms: int) -> ase.Atoms:
  """A random connected molecule: each new atom bonds to a random existing
  one at the sum of covalent radii (+-5 %), and is rejected if it comes
  closer than 0.8 of a bond to any other atom."""
  symbols = [str(rng.choice(elements)) for _ in range(num_atoms)]
  pos = [np.zeros(3)]
  for k in range(1, num_atoms):
    for _ in range(200):
      anchor = int(rng.integers(k))
      direction = rng.normal(size=3)
      direction /= np.linalg.norm(direction)
      trial = pos[anchor] + direction * bond_length(symbols[k], symbols[anchor]) * \
          rng.uniform(0.95, 1.05)
      d = np.linalg.norm(np.array(pos) - trial, axis=1)
      limits = np.array([0.8 * bond_length(symbols[k], s) for s in symbols[:k]])
      if np.all(d >= limits):
        pos.append(trial)
        break
    else:
      raise RuntimeError('could not place an atom (crowded molecule)')
  return _boxed(ase.Atoms(symbols, positions=np.array(pos)))


# ----------------------------------------------------------------- crystals

def _lattice_constant(prototype: str, a: str, b: str) -> float:
  """Lattice constant from covalent radii so nearest neighbours sit at about
  one bond length (Angstrom)."""
  d = bond_length(a, b)
  return {'fcc': d * np.sqrt(2), 'bcc': d * 2 / np.sqrt(3), 'hcp': d,
          'diamond': d * 4 / np.sqrt(3), 'rocksalt': 2 * d, 'zincblende': d * 4 / np.sqrt(3),
          'wurtzite': d * np.sqrt(8 / 3), 'fluorite': d * 4 / np.sqrt(3)}[prototype]


def prototype_crystal(rng: np.random.Generator, elements, prototype: str | None = None
                      ) -> ase.Atoms:
  """A prototype crystal (fcc, bcc, hcp, diamond; binary rocksalt, zincblende,
  wurtzite, fluorite; ABX3 cubic perovskite) with elements drawn from
  `elements`, lattice constant from covalent radii (+-3 %), expanded where
  that packs atoms denser than real solids (`expand_to_solid_volume`)."""
  elements = sorted(set(elements))
  feasible = PROTOTYPES if len(elements) > 1 else tuple(
      p for p in PROTOTYPES if p not in BINARY_PROTOTYPES + ('perovskite',))
  prototype = prototype or str(rng.choice(feasible))
  if prototype not in feasible and prototype in PROTOTYPES:
    raise ValueError(f'{prototype} needs at least two elements, got {elements}')
  scale = rng.uniform(0.97, 1.03)
  if prototype == 'perovskite':
    a, b, x = (str(s) for s in rng.choice(elements, 3, replace=len(elements) < 3))
    b = b if b != x else next(e for e in elements if e != x)
    const = 2 * bond_length(b, x) * scale
    atoms = spacegroup_crystal([a, b, x], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
                               spacegroup=221, cellpar=[const] * 3 + [90] * 3)
  elif prototype in BINARY_PROTOTYPES:
    a, b = (str(s) for s in rng.choice(elements, 2, replace=False))
    atoms = bulk(a + b if prototype != 'fluorite' else a + b + '2', prototype,
                 a=_lattice_constant(prototype, a, b) * scale)
  elif prototype in PROTOTYPES:
    a = str(rng.choice(elements))
    atoms = bulk(a, prototype, a=_lattice_constant(prototype, a, a) * scale)
  else:
    raise ValueError(f'unknown prototype {prototype!r}; choose from {PROTOTYPES}')
  atoms = expand_to_solid_volume(rng, atoms)
  atoms.info['prototype'] = prototype
  return atoms


def expand_to_solid_volume(rng: np.random.Generator, atoms: ase.Atoms,
                           low: float = 0.45, high: float = 0.8) -> ase.Atoms:
  """`atoms` with its cell scaled up, if its volume per atom is under `low`
  times the mean of its elements' own solids (`elemental_volume`), to a
  random `low` to `high` times it (real compounds: 0.34 to 1). Covalent radii
  alone put fcc oxygen or hydrogen at a few percent of a real density."""
  reference = np.mean([elemental_volume(s) for s in atoms.get_chemical_symbols()])
  per_atom = atoms.get_volume() / len(atoms)
  if per_atom < low * reference:
    scale = (rng.uniform(low, high) * reference / per_atom) ** (1 / 3)
    atoms.set_cell(atoms.cell[:] * scale, scale_atoms=True)
  return atoms


def random_symmetric_crystal(rng: np.random.Generator, elements,
                             num_sites: int = 2, max_atoms: int = 64,
                             tries: int = 50) -> ase.Atoms:
  """A random crystal of a random space group: `num_sites` random Wyckoff
  generators expanded by the group's operations (ASE's spacegroup module,
  duplicates merged), cell volume set from the atoms' covalent volumes.
  The cell is then scaled until the closest pair sits at 0.95 covalent bond
  lengths or more, and expanded to a real solid's density where it is
  denser (`expand_to_solid_volume`: covalent radii alone pack hydrogen far
  too densely). Draws again (up to `tries` times) while the cell
  has more than `max_atoms` atoms or collapsed sites."""
  for attempt in range(tries):
    atoms = _random_symmetric_draw(rng, elements, num_sites)
    ratio = min_bond_ratio(atoms)
    if len(atoms) <= max_atoms and ratio > 0.05:
      if ratio < 0.95:
        atoms.set_cell(atoms.cell[:] * (0.95 / ratio), scale_atoms=True)
      atoms = expand_to_solid_volume(rng, atoms)
      atoms.info['rejected_draws'] = attempt  # counted by the dataset factory
      return atoms
  raise RuntimeError(f'no valid random crystal in {tries} draws')


def pair_distances(atoms: ase.Atoms):
  """(i, j, d) of every pair i < j, minimum image along periodic axes (A).
  O(N^2) pairs: fast at the sizes generated here."""
  from ase.geometry import find_mic
  i, j = np.triu_indices(len(atoms), 1)
  vec = atoms.positions[j] - atoms.positions[i]
  if atoms.pbc.any():
    return i, j, find_mic(vec, atoms.cell[:], pbc=atoms.pbc)[1]
  return i, j, np.linalg.norm(vec, axis=1)


def min_bond_ratio(atoms: ase.Atoms) -> float:
  """Smallest interatomic distance over the sum of covalent radii (minimum
  image along periodic axes, an atom's own periodic images included); inf
  for a single non-periodic atom."""
  r = np.array([radius(s) for s in atoms.get_chemical_symbols()])
  best = float('inf')
  if len(atoms) > 1:
    i, j, d = pair_distances(atoms)
    best = float((d / (r[i] + r[j])).min())
  if atoms.pbc.any():
    from ase.geometry.minkowski_reduction import minkowski_reduce
    periodic = np.asarray(atoms.cell[:], float)[atoms.pbc]
    if len(periodic) == 3:
      periodic = minkowski_reduce(periodic)[0]
    shortest = np.linalg.norm(periodic, axis=1).min()
    best = min(best, float(shortest / (2 * r.max())))
  return best


def _random_symmetric_draw(rng, elements, num_sites) -> ase.Atoms:
  group = int(rng.choice(RANDOM_SPACEGROUPS))
  symbols = [str(rng.choice(elements)) for _ in range(num_sites)]
  basis = rng.uniform(0, 1, (num_sites, 3))
  system = 'cubic' if group >= 195 else 'hexagonal' if group >= 168 else \
      'trigonal' if group >= 143 else 'tetragonal' if group >= 75 else \
      'orthorhombic' if group >= 16 else 'monoclinic' if group >= 3 else 'triclinic'
  lengths = rng.uniform(0.8, 1.25, 3)
  angles = [90.0, 90.0, 90.0]
  if system in ('cubic',):
    lengths[:] = 1.0
  elif system in ('tetragonal', 'hexagonal', 'trigonal'):
    lengths[1] = lengths[0]
  if system in ('hexagonal', 'trigonal'):
    angles[2] = 120.0
  elif system == 'monoclinic':
    angles[1] = float(rng.uniform(95, 120))
  elif system == 'triclinic':
    angles = list(rng.uniform(80, 100, 3))
  with warnings.catch_warnings():  # ASE notes merged equivalent sites: expected
    warnings.simplefilter('ignore', UserWarning)
    atoms = spacegroup_crystal(symbols, basis, spacegroup=group,
                               cellpar=list(lengths) + angles, symprec=0.05)
  # Scale to 1.8x the summed covalent-sphere volume (a typical packing).
  target = 1.8 * sum(4 / 3 * np.pi * radius(s) ** 3 for s in atoms.get_chemical_symbols())
  atoms.set_cell(atoms.cell[:] * (target / atoms.get_volume()) ** (1 / 3), scale_atoms=True)
  atoms.info['spacegroup'] = group
  return atoms


def supercell_to_size(atoms: ase.Atoms, target: int) -> ase.Atoms:
  """Repeat a crystal along its shortest axes until it has at most `target`
  atoms and no further repeat fits (1x1x1 if the cell already exceeds it)."""
  reps = np.ones(3, int)
  while True:
    lengths = np.linalg.norm(atoms.cell[:], axis=1) * reps
    axis = int(np.argmin(lengths))
    trial = reps.copy()
    trial[axis] += 1
    if len(atoms) * np.prod(trial) > target:
      break
    reps = trial
  return atoms * tuple(reps)


# ----------------------------------------------------------------- clusters

def random_cluster(rng: np.random.Generator, elements, num_atoms: int,
                   relax_steps: int = 200) -> ase.Atoms:
  """Atoms packed at random in a sphere of the right density, then pushed
  apart until no pair is closer than 0.9 of a bond (a soft-sphere
  relaxation: every overlapping pair is separated along its axis)."""
  symbols = [str(rng.choice(elements)) for _ in range(num_atoms)]
  r = np.array([radius(s) for s in symbols])
  volume = 4.0 * np.sum(4 / 3 * np.pi * r ** 3)
  rad = (3 * volume / (4 * np.pi)) ** (1 / 3)
  direction = rng.normal(size=(num_atoms, 3))
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  pos = direction * rad * rng.uniform(0, 1, (num_atoms, 1)) ** (1 / 3)
  target = 0.9 * (r[:, None] + r[None, :])
  for _ in range(relax_steps):
    delta = pos[:, None] - pos[None, :]
    dist = np.linalg.norm(delta, axis=-1) + np.eye(num_atoms) * 1e9
    overlap = np.clip(target - dist, 0, None)
    if not overlap.any():
      break
    push = (overlap / dist)[..., None] * delta
    pos = pos + 0.5 * push.sum(1)
  return _boxed(ase.Atoms(symbols, positions=pos))


def magic_cluster(rng: np.random.Generator, elements, max_atoms: int) -> ase.Atoms:
  """ASE's icosahedron or decahedron of one element, the largest shell count
  within `max_atoms` (at least the 13-atom icosahedron)."""
  symbol = str(rng.choice(elements))
  d = bond_length(symbol, symbol)
  const = d * np.sqrt(2)
  if rng.random() < 0.5:
    shells = 2
    while (10 * (shells + 1) ** 3 + 15 * (shells + 1) ** 2 + 11 * (shells + 1) + 3) // 3 \
        <= max_atoms:
      shells += 1
    atoms = Icosahedron(symbol, shells, latticeconstant=const)
  else:
    atoms = Decahedron(symbol, 2, 2, 0, latticeconstant=const)
  atoms = ase.Atoms(atoms)
  atoms.rotate(float(rng.uniform(0, 360)), rng.normal(size=3), center='COP')
  return _boxed(atoms)


# ----------------------------------------------------------------- surfaces

def slab(rng: np.random.Generator, elements, max_atoms: int) -> ase.Atoms:
  """A slab of a random facet (100, 110, 111, 211) of an fcc or bcc crystal
  of one element, with vacuum along z; as many layers as fit `max_atoms`."""
  symbol = str(rng.choice(elements))
  prototype = str(rng.choice(['fcc', 'bcc']))
  facet = SURFACE_FACETS[int(rng.integers(len(SURFACE_FACETS)))]
  unit = bulk(symbol, prototype, a=_lattice_constant(prototype, symbol, symbol),
              cubic=True)
  layers = 2
  atoms = surface(unit, facet, layers, vacuum=VACUUM / 2)
  while len(surface(unit, facet, layers + 1)) <= max_atoms and layers < 12:
    layers += 1
    atoms = surface(unit, facet, layers, vacuum=VACUUM / 2)
  atoms.pbc = (True, True, False)
  atoms.info['facet'] = '(' + ''.join(map(str, facet)) + ')'
  return atoms
