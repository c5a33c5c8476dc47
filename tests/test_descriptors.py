import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.neighborlist import neighbor_list

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import datasets
from jaxcrystal.evaluation import descriptors
from jaxcrystal.geometry import neighbors


@pytest.fixture
def builtin_graph():
  structures = datasets.builtin_structures()
  batch = batch_lib.to_device(batch_lib.batch_from_atoms(structures))
  cutoff = 6.0
  max_image = neighbors.estimate_max_image(batch.lattice, cutoff)
  capacity = neighbors.estimate_capacity(batch, cutoff, max_image)
  nbrs = neighbors.radius_graph(batch, cutoff, max_image, capacity)
  return structures, batch, nbrs


def test_coordination_numbers_of_prototypes(builtin_graph):
  structures, batch, nbrs = builtin_graph
  mean = jax.jit(descriptors.mean_coordination, static_argnums=2)(batch, nbrs, 2.0)
  # Al fcc nn 2.86, Fe bcc 2.48, C diamond 1.54: a 2.0 A cutoff sees only C
  expected = [0.0] * 14 + [4.0] * 7 + [0.0]
  np.testing.assert_allclose(mean, expected, atol=1e-6)
  cn = descriptors.coordination_numbers(batch, nbrs, 3.1)
  for k, s in enumerate(structures):
    i = neighbor_list('i', s, 3.1)
    sel = np.asarray(batch.graph_index) == k
    np.testing.assert_array_equal(np.asarray(cn)[sel], np.bincount(i, minlength=len(s)))


def test_rdf_matches_numpy_histogram(builtin_graph):
  structures, batch, nbrs = builtin_graph
  r, g = jax.jit(descriptors.radial_distribution, static_argnums=(2, 3))(
      batch, nbrs, 5.0, 50)
  assert g.shape == (22, 50)
  for k in (0, 7, 18):
    s = structures[k]
    d = neighbor_list('d', s, 5.0)
    hist, edges = np.histogram(d, bins=50, range=(0, 5.0))
    shell = 4 / 3 * np.pi * (edges[1:]**3 - edges[:-1]**3)
    expected = hist / (len(s) * len(s) / s.get_volume() * shell)
    np.testing.assert_allclose(g[k], expected, rtol=1e-4, atol=1e-4)
  # first peak of fcc Al at its nearest-neighbour distance a / sqrt(2)
  assert abs(float(r[np.argmax(g[0])]) - 4.0495 / np.sqrt(2)) < 0.1
  assert float(g[-1].sum()) == 0.0
  # the host's mean g(r) (numpy, for plots) is the mean of these curves
  r_host, g_host = descriptors.mean_rdf(structures, cutoff=5.0, bins=50)
  np.testing.assert_allclose(r_host, np.asarray(r), atol=1e-6)
  np.testing.assert_allclose(g_host, np.asarray(g)[:21].mean(0), rtol=1e-4, atol=1e-4)
