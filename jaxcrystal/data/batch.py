"""Padded batches of crystals with static budgets, and host-side (un)batching.

A `CrystalBatch` holds G graph slots and N atom slots. Real crystals come first;
atoms of one crystal are contiguous and in crystal order. Padding follows
jraph's convention: at least one padding graph exists, all padding atoms belong
to the last graph slot, and masks mark what is real. Every jitted function sees
one shape per budget, so nothing recompiles as data changes.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import ase
import chex
import flax.struct
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from jaxcrystal import errors
from jaxcrystal.data import properties as properties_lib

NUM_ELEMENTS = properties_lib.NUM_ELEMENTS  # type classes: atomic numbers 1..100


class BudgetError(errors.UserError, ValueError):
  """Raised when structures do not fit the static budgets of a batch."""


@flax.struct.dataclass
class CrystalBatch:
  """A padded batch of crystals.

  Attributes:
    lattice: [G, 3, 3] rows are lattice vectors, Angstrom (identity on padding).
    frac: [N, 3] fractional coordinates in [0, 1).
    species: [N] atomic numbers (0 on padding).
    graph_index: [N] int32 crystal of each atom (padding atoms -> last slot).
    atom_mask: [N] bool, True for real atoms.
    graph_mask: [G] bool, True for real crystals.
    n_atoms: [G] int32 atoms per crystal (0 on padding graphs).
    max_atoms_per_graph: static bound A on atoms in one crystal; sizes the
      dense per-crystal blocks of the fully connected graph.
    conditions: {property: [G] float32, or [G, K] for a vector property
      such as chemical_system} per-crystal values a conditioned model is
      told (0 where unknown and on padding); empty by default.
    condition_mask: {property: [G] bool} True where the value is known.
    allowed_elements: [G, NUM_ELEMENTS] bool (index Z - 1), the elements a
      de novo sample of each crystal may hold (`constraints.py`); None: any.
      Type processes draw and decode only these.
  """
  lattice: jax.Array
  frac: jax.Array
  species: jax.Array
  graph_index: jax.Array
  atom_mask: jax.Array
  graph_mask: jax.Array
  n_atoms: jax.Array
  max_atoms_per_graph: int = flax.struct.field(pytree_node=False, default=1)
  conditions: dict = flax.struct.field(default_factory=dict)
  condition_mask: dict = flax.struct.field(default_factory=dict)
  allowed_elements: jax.Array | None = None

  @property
  def num_graph_slots(self) -> int:
    return self.lattice.shape[0]

  @property
  def num_atom_slots(self) -> int:
    return self.frac.shape[0]

  def validate_shapes(self) -> None:
    """chex checks of shapes and dtypes (usable inside jit)."""
    g, n = self.num_graph_slots, self.num_atom_slots
    chex.assert_shape(self.lattice, (g, 3, 3))
    chex.assert_shape(self.frac, (n, 3))
    chex.assert_shape([self.species, self.graph_index, self.atom_mask], (n,))
    chex.assert_shape([self.graph_mask, self.n_atoms], (g,))
    chex.assert_type([self.species, self.graph_index, self.n_atoms], jnp.int32)
    chex.assert_type([self.atom_mask, self.graph_mask], bool)
    if set(self.conditions) != set(self.condition_mask):
      raise ValueError(f'conditions {sorted(self.conditions)} and their masks '
                       f'{sorted(self.condition_mask)} name different properties')
    for name in self.conditions:
      chex.assert_shape(self.condition_mask[name], (g,))
      chex.assert_axis_dimension(self.conditions[name], 0, g)
    if self.allowed_elements is not None:
      chex.assert_shape(self.allowed_elements, (g, NUM_ELEMENTS))
      chex.assert_type(self.allowed_elements, bool)

  def atom_offsets(self) -> jax.Array:
    """[G] index of the first atom slot of each crystal."""
    return jnp.cumsum(self.n_atoms) - self.n_atoms

  def dense_atom_index(self) -> tuple[jax.Array, jax.Array]:
    """Per-crystal dense layout of atoms.

    Returns:
      index [G, A] atom slot of the a-th atom of crystal g (clipped into range
      where absent) and mask [G, A] True where that atom exists.
    """
    a = jnp.arange(self.max_atoms_per_graph)
    index = self.atom_offsets()[:, None] + a[None, :]
    mask = (a[None, :] < self.n_atoms[:, None]) & self.graph_mask[:, None]
    return jnp.clip(index, 0, self.num_atom_slots - 1), mask

  def atom_lattice(self) -> jax.Array:
    """[N, 3, 3] the lattice of each atom's crystal."""
    return self.lattice[self.graph_index]

  def cart(self) -> jax.Array:
    """[N, 3] Cartesian positions in Angstrom."""
    return jnp.einsum('ni,nij->nj', self.frac, self.atom_lattice())

  def to_graphs_tuple(self, senders=None, receivers=None, edges=None,
                      n_edge=None) -> jraph.GraphsTuple:
    """A jraph view: nodes hold frac and species, globals hold the lattice."""
    return jraph.GraphsTuple(
        nodes={'frac': self.frac, 'species': self.species},
        edges=edges, senders=senders, receivers=receivers,
        globals={'lattice': self.lattice},
        n_node=self.n_atoms,
        n_edge=n_edge if n_edge is not None else jnp.zeros_like(self.n_atoms))


@dataclasses.dataclass(frozen=True)
class Budget:
  """Static padding budget: graph slots, atom slots and atoms per crystal.

  `max_graphs` counts slots including the one padding graph jraph requires.
  """
  max_graphs: int
  max_atoms: int
  max_atoms_per_graph: int

  @classmethod
  def for_structures(cls, n_atoms: Sequence[int], batch_size: int | None = None,
                     multiple: int = 8) -> 'Budget':
    """Smallest budget fitting `batch_size` crystals of the given sizes."""
    n_atoms = np.asarray(n_atoms)
    per_graph = int(n_atoms.max())
    batch_size = len(n_atoms) if batch_size is None else batch_size
    worst = int(np.sort(n_atoms)[::-1][:batch_size].sum())
    max_atoms = int(np.ceil((worst + 1) / multiple) * multiple)
    return cls(batch_size + 1, max_atoms, per_graph)


def _frac_of(atoms: ase.Atoms, dtype) -> np.ndarray:
  """Fractional coordinates wrapped into [0, 1) *in the target dtype*: a float64
  value just below 1 rounds to exactly 1.0 in float32."""
  frac = atoms.get_scaled_positions(wrap=False).astype(dtype)
  frac = frac - np.floor(frac)
  return np.where(frac >= 1.0, 0.0, frac).astype(dtype)


def batch_from_atoms(structures: Sequence[ase.Atoms], budget: Budget | None = None,
                     dtype=np.float32, properties: Sequence[str] = ()) -> CrystalBatch:
  """Pad a list of `ase.Atoms` into one `CrystalBatch` (host side, numpy).

  Args:
    structures: crystals with 3D periodic cells.
    budget: static padding budget; the tightest one when None.
    dtype: float dtype of lattice and fractional coordinates.
    properties: `info` keys carried as `conditions` (masked where a crystal
      has no finite value).

  Raises:
    BudgetError: too many crystals or atoms for the budget (names which).
  """
  structures = list(structures)
  if not structures:
    raise BudgetError('batch_from_atoms: no structures given')
  sizes = [len(s) for s in structures]
  budget = budget or Budget.for_structures(sizes)
  if len(structures) > budget.max_graphs - 1:
    raise BudgetError(
        f'{len(structures)} crystals exceed max_graphs={budget.max_graphs} '
        '(one slot is reserved for padding)')
  for k, n in enumerate(sizes):
    if n > budget.max_atoms_per_graph:
      raise BudgetError(f'crystal {k} has {n} atoms, more than '
                        f'max_atoms_per_graph={budget.max_atoms_per_graph}')
  if sum(sizes) > budget.max_atoms:
    raise BudgetError(f'{sum(sizes)} atoms exceed max_atoms={budget.max_atoms}')

  graphs = [
      jraph.GraphsTuple(
          nodes={'frac': _frac_of(s, dtype),
                 'species': s.numbers.astype(np.int32)},
          edges=None, senders=np.zeros(0, np.int32),
          receivers=np.zeros(0, np.int32),
          globals={'lattice': np.asarray(s.cell[:], dtype)[None]},
          n_node=np.array([len(s)], np.int32), n_edge=np.array([0], np.int32))
      for s in structures
  ]
  padded = jraph.pad_with_graphs(jraph.batch_np(graphs), budget.max_atoms, 0,
                                 budget.max_graphs)
  graph_mask = np.asarray(jraph.get_graph_padding_mask(padded))
  lattice = np.asarray(padded.globals['lattice'], dtype)
  lattice[~graph_mask] = np.eye(3, dtype=dtype)  # keeps inverses finite
  n_atoms = np.asarray(padded.n_node, np.int32)
  return CrystalBatch(
      lattice=lattice,
      frac=np.asarray(padded.nodes['frac'], dtype),
      species=np.asarray(padded.nodes['species'], np.int32),
      graph_index=np.repeat(np.arange(len(n_atoms), dtype=np.int32), n_atoms),
      atom_mask=np.asarray(jraph.get_node_padding_mask(padded)),
      graph_mask=graph_mask,
      n_atoms=n_atoms,
      max_atoms_per_graph=budget.max_atoms_per_graph,
      **_conditions(properties_lib.property_values(structures, properties), budget.max_graphs))


@dataclasses.dataclass(frozen=True)
class PackedStructures:
  """Crystals as packed host arrays, built once, from which padded batches
  are gathered without touching `ase.Atoms` again (`batch`).

  Attributes (S crystals, T atoms in all):
    frac: [T, 3] fractional coordinates wrapped into [0, 1) in `dtype`
      (`_frac_of`'s rounding rule).
    species: [T] int32 atomic numbers.
    lattice: [S, 3, 3] rows are lattice vectors, Angstrom, in `dtype`.
    n_atoms: [S] int32 atoms per crystal.
    offsets: [S] int64 first atom of each crystal in `frac` and `species`.
    properties: {name: [S] float32} per-crystal values read from each
      structure's `info` (a data file's property columns), NaN where a
      crystal has none; batches carry them as `conditions`.
  """
  frac: np.ndarray
  species: np.ndarray
  lattice: np.ndarray
  n_atoms: np.ndarray
  offsets: np.ndarray
  properties: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def from_atoms(cls, structures: Sequence[ase.Atoms], dtype=np.float32,
                 properties: Sequence[str] = ()) -> 'PackedStructures':
    structures = list(structures)
    n_atoms = np.array([len(s) for s in structures], np.int32)
    return cls(
        frac=np.concatenate([_frac_of(s, dtype) for s in structures]).reshape(-1, 3),
        species=np.concatenate([s.numbers for s in structures]).astype(np.int32),
        lattice=np.array([s.cell[:] for s in structures], dtype).reshape(-1, 3, 3),
        n_atoms=n_atoms, offsets=np.cumsum(n_atoms, dtype=np.int64) - n_atoms,
        properties=properties_lib.property_values(structures, properties))

  def __len__(self) -> int:
    return len(self.n_atoms)

  def batch(self, indices: Sequence[int], budget: Budget) -> CrystalBatch:
    """The `CrystalBatch` of crystals `indices` padded to `budget`: equal,
    bit for bit, to `batch_from_atoms` of the same crystals (a vectorised
    gather; no Python loop over crystals).

    Raises:
      BudgetError: too many crystals or atoms for the budget.
    """
    idx = np.asarray(indices, np.int64)
    k, g, n = len(idx), budget.max_graphs, budget.max_atoms
    if not k:
      raise BudgetError('PackedStructures.batch: no structures given')
    sizes = self.n_atoms[idx]
    total = int(sizes.sum())
    if k > g - 1:
      raise BudgetError(f'{k} crystals exceed max_graphs={g} (one slot is '
                        'reserved for padding)')
    if sizes.max() > budget.max_atoms_per_graph:
      first = int(np.argmax(sizes > budget.max_atoms_per_graph))
      raise BudgetError(f'crystal {first} has {sizes[first]} atoms, more than '
                        f'max_atoms_per_graph={budget.max_atoms_per_graph}')
    if total > n:
      raise BudgetError(f'{total} atoms exceed max_atoms={n}')
    starts = np.cumsum(sizes) - sizes                  # in the batch
    atom = np.repeat(self.offsets[idx] - starts, sizes) + np.arange(total)
    frac = np.zeros((n, 3), self.frac.dtype)
    frac[:total] = self.frac[atom]
    species = np.zeros(n, np.int32)
    species[:total] = self.species[atom]
    lattice = np.broadcast_to(np.eye(3, dtype=self.lattice.dtype), (g, 3, 3)).copy()
    lattice[:k] = self.lattice[idx]
    n_atoms = np.zeros(g, np.int32)
    n_atoms[:k] = sizes
    n_atoms[k] = n - total                             # jraph: padding atoms
    return CrystalBatch(
        lattice=lattice, frac=frac, species=species,
        graph_index=np.repeat(np.arange(g, dtype=np.int32), n_atoms),
        atom_mask=np.arange(n) < total, graph_mask=np.arange(g) < k,
        n_atoms=n_atoms, max_atoms_per_graph=budget.max_atoms_per_graph,
        **_conditions({name: v[idx] for name, v in self.properties.items()}, g))


def _conditions(values: dict, num_graphs: int) -> dict:
  """`conditions` and `condition_mask` of a batch from `{name: [k] or [k, K]
  float32}` (NaN: unknown; a vector is known where all of it is finite),
  padded to `num_graphs` (padding: 0 and unknown)."""
  conditions, mask = {}, {}
  for name, v in values.items():
    known = np.isfinite(v) if v.ndim == 1 else np.isfinite(v).all(-1)
    conditions[name] = np.zeros((num_graphs,) + v.shape[1:], np.float32)
    conditions[name][:len(v)] = np.where(np.isfinite(v), v, 0.0)
    mask[name] = np.zeros(num_graphs, bool)
    mask[name][:len(v)] = known
  return dict(conditions=conditions, condition_mask=mask)


def batch_from_structures(structures, budget: Budget | None = None,
                          dtype=np.float32) -> CrystalBatch:
  """Like `batch_from_atoms`, also accepting `pymatgen.core.Structure`."""
  from pymatgen.io.ase import AseAtomsAdaptor  # host only
  atoms = [AseAtomsAdaptor.get_atoms(s) if not isinstance(s, ase.Atoms) else s
           for s in structures]
  return batch_from_atoms(atoms, budget, dtype)


def batch_to_atoms(batch: CrystalBatch) -> list[ase.Atoms]:
  """Unpad a batch back into a list of `ase.Atoms` (real crystals only)."""
  lattice = np.asarray(batch.lattice, np.float64)
  frac = np.asarray(batch.frac, np.float64)
  species = np.asarray(batch.species)
  n_atoms = np.asarray(batch.n_atoms)
  graph_mask = np.asarray(batch.graph_mask)
  offsets = np.cumsum(n_atoms) - n_atoms
  out = []
  for g in np.flatnonzero(graph_mask):
    sl = slice(offsets[g], offsets[g] + n_atoms[g])
    out.append(ase.Atoms(numbers=species[sl], cell=lattice[g],
                         scaled_positions=frac[sl], pbc=True))
  return out


def to_device(batch: CrystalBatch) -> CrystalBatch:
  """Move a host batch onto the default device as jnp arrays."""
  return jax.tree_util.tree_map(jnp.asarray, batch)
