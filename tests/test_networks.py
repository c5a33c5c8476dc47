"""Symmetry tests of the score networks, on random padded batches (float32)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms

from conftest import random_cells
from jaxcrystal.testing import assert_transform_consistent, random_orthogonal
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import cspnet
from jaxcrystal.generative import egnn
from jaxcrystal.geometry import neighbors

BUDGET = batch_lib.Budget(max_graphs=5, max_atoms=32, max_atoms_per_graph=8)


def _crystals(seed, count=3, sizes=(3, 5, 8)):
  rng = np.random.default_rng(seed)
  out = []
  for k, cell in enumerate(random_cells(rng, count, min_angle=50, lengths=(4, 7))):
    n = sizes[k % len(sizes)]
    out.append(Atoms(numbers=rng.integers(1, 40, n), cell=cell, pbc=True,
                     scaled_positions=rng.uniform(0, 1, (n, 3))))
  return out


def _batch(seed=0, budget=BUDGET):
  return batch_lib.to_device(batch_lib.batch_from_atoms(_crystals(seed), budget))


def _times(batch, seed=1):
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch.num_graph_slots,))


def _type_features(batch, seed=2):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch.num_atom_slots, 100))


MODELS = {
    'csp_fc': (cspnet.CSPNet(hidden=32, num_layers=2, num_freqs=8, time_dim=16),
               'fc'),
    'dng_fc': (cspnet.CSPNet(hidden=32, num_layers=2, num_freqs=8, time_dim=16,
                               predict_types=True), 'fc'),
    'csp_radius': (cspnet.CSPNet(hidden=32, num_layers=2, num_freqs=8, time_dim=16,
                                   distance_basis=8, cutoff=6.0), 'radius'),
    'dng_fc_edge_score': (cspnet.CSPNet(hidden=32, num_layers=2, num_freqs=8,
                                          time_dim=16, predict_types=True,
                                          distance_basis=8, cutoff=6.0,
                                          edge_score_head=True), 'fc'),
}


def _graph(batch, kind):
  if kind == 'fc':
    return neighbors.fully_connected_graph(batch)
  return neighbors.radius_graph(batch, 6.0, 3, 4000)


def _apply_fn(name):
  model, kind = MODELS[name]
  b0 = _batch()
  tf = _type_features(b0) if model.predict_types else None
  params = model.init(jax.random.PRNGKey(0), b0, _times(b0), _graph(b0, kind), tf)

  @jax.jit
  def apply(inputs):
    batch, t, types = inputs
    nbrs = _graph(batch, kind)
    assert_no_overflow = nbrs.overflow  # checked below, outside jit
    return model.apply(params, batch, t, nbrs, types), assert_no_overflow
  def fn(inputs):
    out, overflow = apply(inputs)
    assert not np.any(np.asarray(overflow))
    return out
  return fn, (b0, _times(b0), tf)


@pytest.mark.parametrize('name', list(MODELS))
@pytest.mark.parametrize('reflect', [False, True])
def test_rotation_and_reflection(name, reflect):
  fn, inputs = _apply_fn(name)
  rot = jnp.asarray(random_orthogonal(np.random.default_rng(3), reflect), jnp.float32)

  def transform_in(x):
    b, t, tf = x
    return b.replace(lattice=b.lattice @ rot.T), t, tf

  def transform_out(out):
    return out.replace(lattice_noise=out.lattice_noise @ rot.T)
  assert_transform_consistent(fn, inputs, transform_in, transform_out)


@pytest.mark.parametrize('name', list(MODELS))
def test_global_fractional_translation(name):
  fn, inputs = _apply_fn(name)
  shift = jnp.array([0.37, -0.21, 0.58])

  def transform_in(x):
    b, t, tf = x
    frac = jnp.where(b.atom_mask[:, None], (b.frac + shift) % 1.0, b.frac)
    return b.replace(frac=frac), t, tf
  assert_transform_consistent(fn, inputs, transform_in, lambda o: o)


@pytest.mark.parametrize('name', list(MODELS))
def test_lattice_vector_shift_of_one_atom(name):
  fn, inputs = _apply_fn(name)

  def transform_in(x):
    b, t, tf = x
    return b.replace(frac=b.frac.at[4].add(jnp.array([1.0, -2.0, 1.0]))), t, tf
  assert_transform_consistent(fn, inputs, transform_in, lambda o: o)


@pytest.mark.parametrize('name', list(MODELS))
def test_permutation_within_crystal(name):
  fn, inputs = _apply_fn(name)
  # crystal 1 occupies atom slots 3..7; reverse it
  perm = np.arange(inputs[0].num_atom_slots)
  perm[3:8] = perm[3:8][::-1]

  def transform_in(x):
    b, t, tf = x
    b = b.replace(frac=b.frac[perm], species=b.species[perm])
    return b, t, (tf[perm] if tf is not None else None)

  def transform_out(o):
    return o.replace(frac_score=o.frac_score[perm], type_logits=o.type_logits[perm])
  assert_transform_consistent(fn, inputs, transform_in, transform_out)


@pytest.mark.parametrize('name', list(MODELS))
def test_padding_leaves_real_outputs_unchanged(name):
  fn, (b0, t0, tf0) = _apply_fn(name)
  out = fn((b0, t0, tf0))
  big = batch_lib.Budget(max_graphs=9, max_atoms=64, max_atoms_per_graph=8)
  b1 = _batch(budget=big)
  t1 = jnp.concatenate([t0, jnp.full((4,), 0.5)])
  tf1 = (jnp.concatenate([tf0, jnp.ones((32, 100))]) if tf0 is not None else None)
  out1 = fn((b1, t1, tf1))
  real_atoms = int(b0.atom_mask.sum())
  np.testing.assert_allclose(out1.frac_score[:real_atoms], out.frac_score[:real_atoms],
                             atol=1e-5)
  np.testing.assert_allclose(out1.type_logits[:real_atoms], out.type_logits[:real_atoms],
                             atol=1e-5)
  np.testing.assert_allclose(out1.lattice_noise[:3], out.lattice_noise[:3], atol=1e-5)
  assert float(jnp.abs(out1.frac_score[real_atoms:]).max()) == 0.0
  assert float(jnp.abs(out1.lattice_noise[3:]).max()) == 0.0


@pytest.mark.parametrize('name', list(MODELS))
def test_outputs_depend_on_inputs_and_jit_matches_eager(name):
  model, kind = MODELS[name]
  fn, (b0, t0, tf0) = _apply_fn(name)
  out = fn((b0, t0, tf0))
  chex.assert_shape(out.lattice_noise, (5, 3, 3))
  chex.assert_shape(out.frac_score, (32, 3))
  chex.assert_tree_all_finite(out)
  other_t = fn((b0, t0 * 0.5, tf0))
  assert not np.allclose(other_t.frac_score, out.frac_score)
  moved = b0.replace(frac=b0.frac.at[0].add(0.1))
  assert not np.allclose(fn((moved, t0, tf0)).frac_score, out.frac_score)
  params = model.init(jax.random.PRNGKey(0), b0, t0, _graph(b0, kind), tf0)
  eager = model.apply(params, b0, t0, _graph(b0, kind), tf0)
  chex.assert_trees_all_close(eager, out, atol=1e-5)


# --- Cartesian EGNN -------------------------------------------------------


def _egnn():
  model = egnn.CartesianEGNN(hidden=32, num_layers=2, num_basis=8, cutoff=5.0,
                                 time_dim=16)
  b0 = _batch(5)
  t0 = _times(b0)
  nb = lambda b: neighbors.radius_graph(b, 5.0, 3, 4000)
  params = model.init(jax.random.PRNGKey(0), b0, nb(b0), t0)
  fn = jax.jit(lambda x: model.apply(params, x[0], nb(x[0]), x[1]))
  return fn, (b0, t0)


@pytest.mark.parametrize('reflect', [False, True])
def test_egnn_vectors_rotate_with_input(reflect):
  fn, inputs = _egnn()
  rot = jnp.asarray(random_orthogonal(np.random.default_rng(9), reflect), jnp.float32)
  assert_transform_consistent(
      fn, inputs, lambda x: (x[0].replace(lattice=x[0].lattice @ rot.T), x[1]),
      lambda v: v @ rot.T)


def test_egnn_ignores_translations():
  fn, inputs = _egnn()
  # a Cartesian translation of every atom is a fractional shift per crystal
  def transform_in(x):
    b, t = x
    cart_shift = jnp.array([0.7, -1.3, 2.1])
    frac_shift = jnp.einsum('j,gjk->gk', cart_shift, jnp.linalg.inv(b.lattice))
    frac = jnp.where(b.atom_mask[:, None], (b.frac + frac_shift[b.graph_index]) % 1.0,
                     b.frac)
    return b.replace(frac=frac), t
  out = assert_transform_consistent(fn, inputs, transform_in, lambda v: v)
  chex.assert_shape(out, (32, 3))
  assert float(jnp.abs(out[int(inputs[0].atom_mask.sum()):]).max()) == 0.0


def test_pair_symmetric_fourier_path_equals_generic_path():
  model, _ = MODELS['dng_fc']
  b0 = _batch()
  tf = _type_features(b0)
  nbrs = neighbors.fully_connected_graph(b0)
  assert nbrs.dense_block == (5, 8)
  params = model.init(jax.random.PRNGKey(0), b0, _times(b0), nbrs, tf)
  fast = model.apply(params, b0, _times(b0), nbrs, tf, use_pair_symmetry=True)
  slow = model.apply(params, b0, _times(b0), nbrs, tf, use_pair_symmetry=False)
  chex.assert_trees_all_close(fast, slow, atol=2e-5, rtol=2e-5)
  assert float(jnp.abs(fast.frac_score).max()) > 0


def test_single_atom_crystals_have_no_pairs_but_work():
  model, _ = MODELS['csp_fc']
  b = batch_lib.to_device(batch_lib.batch_from_atoms(
      [Atoms('Fe', cell=np.eye(3) * 2.5, pbc=True)]))
  nbrs = neighbors.fully_connected_graph(b)
  params = model.init(jax.random.PRNGKey(0), b, _times(b), nbrs)
  fast = model.apply(params, b, _times(b), nbrs)
  slow = model.apply(params, b, _times(b), nbrs, use_pair_symmetry=False)
  chex.assert_trees_all_close(fast, slow, atol=1e-5)
  chex.assert_tree_all_finite(fast)
