import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from conftest import random_cells
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.geometry import neighbors
from jaxcrystal.geometry import pbc


def _edge_set(nbrs, offset=0, n=None):
  m = np.asarray(nbrs.edge_mask)
  r = np.asarray(nbrs.receivers)[m] - offset
  s = np.asarray(nbrs.senders)[m] - offset
  sh = np.asarray(nbrs.shifts)[m].astype(int)
  sel = (r >= 0) & (r < (n if n is not None else r.max() + 1))
  return set(zip(r[sel].tolist(), s[sel].tolist(), map(tuple, sh[sel].tolist())))


def _ase_set(atoms, cutoff):
  i, j, S = neighbor_list('ijS', atoms, cutoff)
  return set(zip(i.tolist(), j.tolist(), map(tuple, S.tolist())))


def _random_crystals(rng, count, max_atoms=6, lengths=(3.0, 8.0)):
  out = []
  for cell in random_cells(rng, count, min_angle=35.0, lengths=lengths):
    n = rng.integers(1, max_atoms + 1)
    a = Atoms(numbers=rng.integers(1, 30, n), cell=cell, pbc=True,
              scaled_positions=rng.uniform(0, 1, (n, 3)))
    a.wrap()
    out.append(a)
  return out


@pytest.mark.parametrize('cutoff', [3.0, 6.0, 11.0])  # 11 A exceeds every cell
@pytest.mark.parametrize('jit', [False, True])
def test_radius_graph_matches_ase(cutoff, jit):
  rng = np.random.default_rng(int(cutoff))
  crystals = _random_crystals(rng, 12)
  batch = batch_lib.batch_from_atoms(crystals)
  max_image = neighbors.estimate_max_image(batch.lattice, cutoff)
  capacity = neighbors.estimate_capacity(batch, cutoff, max_image)
  fn = jax.jit(neighbors.radius_graph, static_argnums=(1, 2, 3)) if jit else \
      neighbors.radius_graph
  nbrs = fn(batch, cutoff, max_image, capacity)
  assert not nbrs.did_overflow()
  offset = 0
  for atoms in crystals:
    expected = _ase_set(atoms, cutoff)
    assert _edge_set(nbrs, offset, len(atoms)) == expected
    offset += len(atoms)
  assert int(nbrs.num_edges()) == sum(len(_ase_set(a, cutoff)) for a in crystals) > 0
  if cutoff == 11.0:  # several images of one neighbour really occur
    pairs = [(r, s) for r, s, _ in _edge_set(nbrs, 0, len(crystals[0]))]
    assert len(pairs) > len(set(pairs))


def test_radius_graph_reports_overflow():
  crystals = _random_crystals(np.random.default_rng(5), 4)
  batch = batch_lib.batch_from_atoms(crystals)
  max_image = neighbors.estimate_max_image(batch.lattice, 6.0)
  full = neighbors.radius_graph(batch, 6.0, max_image, 100000)
  small = neighbors.radius_graph(batch, 6.0, max_image, 10)
  # every crystal has its own 10 edge slots; what does not fit is counted
  per_crystal = np.bincount(np.asarray(batch.graph_index)[np.asarray(full.receivers)[
      np.asarray(full.edge_mask)]], minlength=batch.num_graph_slots)
  edge_buffer, bins, thin = np.asarray(small.overflow)
  assert edge_buffer == np.maximum(per_crystal - 10, 0).sum() > 0 and bins == thin == 0
  assert small.did_overflow() and not full.did_overflow()
  assert 'edge buffer' in neighbors.describe_overflow(small.overflow)
  with pytest.raises(neighbors.GraphOverflowError, match='step 7.*edge buffer'):
    neighbors.check_overflow(small.overflow, 'step 7')
  neighbors.check_overflow(full.overflow, 'step 7')  # nothing lost: no error
  too_few_images = neighbors.radius_graph(batch, 6.0, 0, 100000)
  assert np.asarray(too_few_images.overflow)[2] > 0  # cell_too_thin
  assert 'cell too thin' in neighbors.describe_overflow(too_few_images.overflow)


def test_radius_graph_capacity_is_per_crystal():
  """A crystal with a tiny cell fills only its own block: the others keep
  every edge (a batch-wide buffer would have handed it their slots)."""
  rng = np.random.default_rng(11)
  crystals = _random_crystals(rng, 3)
  tiny = crystals[0].copy()
  tiny.set_cell(tiny.cell[:] * 0.4, scale_atoms=True)
  batch = batch_lib.batch_from_atoms([tiny] + crystals[1:])
  max_image = neighbors.estimate_max_image(batch.lattice, 4.0)
  capacity = neighbors.estimate_capacity(
      batch_lib.batch_from_atoms(crystals[1:]), 4.0, max_image)
  nbrs = neighbors.radius_graph(batch, 4.0, max_image, capacity)
  assert np.asarray(nbrs.overflow)[0] > 0  # the tiny cell lost edges ...
  offset = len(tiny)
  for atoms in crystals[1:]:  # ... and nobody else did
    assert _edge_set(nbrs, offset, len(atoms)) == _ase_set(atoms, 4.0)
    offset += len(atoms)


def test_radius_graph_under_vmap_matches_loop():
  rng = np.random.default_rng(7)
  budget = batch_lib.Budget(5, 24, 6)
  batches = [batch_lib.batch_from_atoms(_random_crystals(rng, 4), budget)
             for _ in range(3)]
  stacked = jax.tree_util.tree_map(lambda *x: np.stack(x), *batches)
  fn = lambda b: neighbors.radius_graph(b, 5.0, 3, 2000)
  vm = jax.vmap(fn)(stacked)
  for k, b in enumerate(batches):
    single = fn(b)
    np.testing.assert_array_equal(vm.senders[k], single.senders)
    np.testing.assert_array_equal(vm.shifts[k], single.shifts)
    assert int(single.num_edges()) > 0


def test_fully_connected_graph_gives_minimum_images():
  rng = np.random.default_rng(11)
  crystals = _random_crystals(rng, 8)
  batch = batch_lib.to_device(batch_lib.batch_from_atoms(crystals))
  nbrs = jax.jit(neighbors.fully_connected_graph)(batch)
  sizes = np.array([len(a) for a in crystals])
  assert int(nbrs.num_edges()) == int((sizes**2).sum())
  vec = np.asarray(neighbors.edge_vectors(batch.frac, batch.atom_lattice(), nbrs))
  m = np.asarray(nbrs.edge_mask)
  dist = np.linalg.norm(vec, axis=1)
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  g = np.asarray(batch.graph_index)[np.asarray(nbrs.receivers)]
  for k, atoms in enumerate(crystals):
    ref = atoms.get_all_distances(mic=True)
    sel = m & (g == k)
    r = np.asarray(nbrs.receivers)[sel] - offsets[k]
    s = np.asarray(nbrs.senders)[sel] - offsets[k]
    np.testing.assert_allclose(dist[sel], ref[r, s], atol=1e-4)
  no_self = neighbors.fully_connected_graph(batch, self_edges=False)
  assert int(no_self.num_edges()) == int((sizes**2 - sizes).sum())


@pytest.mark.parametrize('cell', ['cubic', 'triclinic'])
def test_cell_list_matches_ase_and_radius_graph(cell):
  atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (4, 4, 4)
  if cell == 'triclinic':
    atoms.set_cell(atoms.cell[:] @ np.array([[1, 0, 0], [0.3, 1, 0], [0.2, -0.25, 1.0]]),
                   scale_atoms=True)
  atoms.rattle(0.05, seed=3)
  atoms.wrap()
  spec = neighbors.allocate_cell_list(atoms.get_scaled_positions(), atoms.cell[:], 4.0)
  frac = jnp.asarray(atoms.get_scaled_positions(), jnp.float32)
  lat = jnp.asarray(atoms.cell[:], jnp.float32)
  nbrs = jax.jit(neighbors.cell_list_graph, static_argnums=2)(frac, lat, spec)
  assert not nbrs.did_overflow()
  assert _edge_set(nbrs, 0, len(atoms)) == _ase_set(atoms, 4.0)
  eager = neighbors.cell_list_graph(frac, lat, spec)
  assert _edge_set(eager, 0, len(atoms)) == _edge_set(nbrs, 0, len(atoms))


def test_cell_list_overflow_and_small_cell_error():
  atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (4, 4, 4)
  spec = neighbors.allocate_cell_list(atoms.get_scaled_positions(), atoms.cell[:], 4.0)
  tight = neighbors.CellListSpec(spec.bins, spec.bin_capacity, 100, spec.cutoff)
  frac = jnp.asarray(atoms.get_scaled_positions(), jnp.float32)
  lat = jnp.asarray(atoms.cell[:], jnp.float32)
  reasons = lambda spec_, lat_: np.asarray(
      neighbors.cell_list_graph(frac, lat_, spec_).overflow) > 0
  assert list(reasons(spec, lat)) == [False, False, False]
  assert list(reasons(tight, lat)) == [True, False, False]       # edge buffer
  crowded = neighbors.CellListSpec(spec.bins, 1, spec.capacity, spec.cutoff)
  assert reasons(crowded, lat)[1]                                # bin capacity
  assert reasons(spec, lat * 0.8)[2]  # bins thinner than the cutoff
  with pytest.raises(ValueError, match='cell too small'):
    neighbors.allocate_cell_list(np.zeros((1, 3)), np.eye(3) * 5, 4.0)


def test_cell_list_under_vmap():
  atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (4, 4, 4)
  spec = neighbors.allocate_cell_list(atoms.get_scaled_positions(), atoms.cell[:], 4.0)
  frames = []
  for seed in range(2):
    a = atoms.copy()
    a.rattle(0.05, seed=seed)
    frames.append(a.get_scaled_positions())
  lat = jnp.asarray(atoms.cell[:], jnp.float32)
  out = jax.vmap(lambda f: neighbors.cell_list_graph(f, lat, spec))(
      jnp.asarray(np.array(frames), jnp.float32))
  chex.assert_shape(out.senders, (2, spec.capacity))
  for k, f in enumerate(frames):
    single = neighbors.cell_list_graph(jnp.asarray(f, jnp.float32), lat, spec)
    np.testing.assert_array_equal(out.senders[k], single.senders)
  assert not np.array_equal(out.senders[0], out.senders[1])
