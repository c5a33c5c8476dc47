import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import datasets


def _assert_same_structures(a_list, b_list, atol=1e-5):
  assert len(a_list) == len(b_list)
  for a, b in zip(a_list, b_list):
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_allclose(a.cell[:], b.cell[:], atol=atol)
    d = a.get_scaled_positions(wrap=True) - b.get_scaled_positions(wrap=True)
    np.testing.assert_allclose(d - np.round(d), 0, atol=atol)


def test_round_trip_atoms_batch_atoms():
  structures = datasets.builtin_structures()
  batch = batch_lib.batch_from_atoms(structures)
  batch.validate_shapes()
  assert batch.num_graph_slots == len(structures) + 1
  assert not batch.graph_mask[-1] and batch.graph_mask[:-1].all()
  assert batch.atom_mask.sum() == sum(len(s) for s in structures)
  assert batch.max_atoms_per_graph == max(len(s) for s in structures)
  assert np.all(batch.frac >= 0) and np.all(batch.frac < 1)
  # padding atoms sit in the last (padding) graph slot
  assert np.all(batch.graph_index[~batch.atom_mask] == batch.num_graph_slots - 1)
  _assert_same_structures(batch_lib.batch_to_atoms(batch), structures)


def test_pymatgen_input_round_trip():
  from pymatgen.io.ase import AseAtomsAdaptor
  structures = datasets.builtin_structures()[:5]
  pmg = [AseAtomsAdaptor.get_structure(s) for s in structures]
  batch = batch_lib.batch_from_structures(pmg)
  _assert_same_structures(batch_lib.batch_to_atoms(batch), structures)


def test_budgets_enforced_with_clear_errors():
  structures = [bulk('Cu', 'fcc', a=3.6)] * 3
  with pytest.raises(batch_lib.BudgetError, match='max_graphs'):
    batch_lib.batch_from_atoms(structures, batch_lib.Budget(3, 16, 4))
  with pytest.raises(batch_lib.BudgetError, match='crystal 0 has 8 atoms'):
    batch_lib.batch_from_atoms([structures[0] * (2, 2, 2)],
                               batch_lib.Budget(4, 16, 4))
  with pytest.raises(batch_lib.BudgetError, match='max_atoms'):
    batch_lib.batch_from_atoms(structures, batch_lib.Budget(4, 2, 4))


def test_fixed_budget_gives_one_shape_and_is_jittable():
  budget = batch_lib.Budget(max_graphs=8, max_atoms=64, max_atoms_per_graph=16)
  s = datasets.builtin_structures()
  b1 = batch_lib.batch_from_atoms(s[:3], budget)
  b2 = batch_lib.batch_from_atoms(s[10:16], budget)
  chex.assert_trees_all_equal_shapes(b1, b2)
  traces = []

  @jax.jit
  def total_cart(b):
    traces.append(1)
    return jnp.sum(jnp.where(b.atom_mask[:, None], b.cart(), 0.0))
  v1, v2 = total_cart(b1), total_cart(b2)
  assert len(traces) == 1
  assert float(v1) != float(v2) and float(v1) > 0
  np.testing.assert_allclose(v1, sum(a.positions.sum() for a in
                                     batch_lib.batch_to_atoms(b1)), rtol=1e-4)


def test_dense_atom_index():
  s = datasets.builtin_structures()
  batch = batch_lib.to_device(batch_lib.batch_from_atoms([s[0], s[7], s[14]]))
  index, mask = batch.dense_atom_index()
  chex.assert_shape([index, mask], (4, 8))
  np.testing.assert_array_equal(mask.sum(1), [4, 2, 8, 0])
  np.testing.assert_array_equal(index[1, :2], [4, 5])
  np.testing.assert_array_equal(batch.graph_index[index[mask]],
                                np.repeat([0, 1, 2], [4, 2, 8]))


def test_conditions_are_gathered_masked_and_equal_on_both_paths():
  """Property values in `info` become per-crystal `conditions`: numbers as
  float32, anything else (absent, NaN, text) masked as unknown, padding
  crystals unknown; the packed gather and `batch_from_atoms` agree."""
  structures = datasets.builtin_structures()[:5]
  for atoms, gap in zip(structures, [0.5, float('nan'), 2.25, 'n/a', None]):
    if gap is not None:
      atoms.info['gap'] = gap
  budget = batch_lib.Budget(8, 64, 16)
  packed = batch_lib.PackedStructures.from_atoms(structures, properties=('gap',))
  order = [3, 0, 2, 4, 1]
  fast = packed.batch(order, budget)
  slow = batch_lib.batch_from_atoms([structures[i] for i in order], budget,
                                    properties=('gap',))
  want = np.array([0, 0.5, 2.25, 0, 0, 0, 0, 0], np.float32)
  known = np.array([False, True, True, False, False, False, False, False])
  for b in (fast, slow):
    np.testing.assert_array_equal(b.conditions['gap'], want)
    np.testing.assert_array_equal(b.condition_mask['gap'], known)
    b.validate_shapes()
  assert batch_lib.batch_from_atoms(structures, budget).conditions == {}
  with pytest.raises(ValueError, match='different properties'):
    fast.replace(condition_mask={}).validate_shapes()
