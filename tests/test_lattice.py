import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.geometry import cellpar_to_cell
from ase.geometry.minkowski_reduction import is_minkowski_reduced

from conftest import random_cells
from jaxcrystal.geometry import lattice as lattice_lib


@pytest.mark.parametrize('jit', [False, True])
def test_parameters_round_trip_and_agree_with_ase(jit):
  rng = np.random.default_rng(0)
  cells = np.array(random_cells(rng, 50))
  to_par = jax.jit(lattice_lib.lattice_to_parameters) if jit else \
      lattice_lib.lattice_to_parameters
  from_par = jax.jit(lattice_lib.lattice_from_parameters) if jit else \
      lattice_lib.lattice_from_parameters
  lengths, angles = to_par(jnp.asarray(cells, jnp.float32))
  chex.assert_shape([lengths, angles], (50, 3))
  expected = np.array([cellpar_to_cell(np.r_[l, a]) for l, a in
                       zip(np.asarray(lengths), np.asarray(angles))])
  rebuilt = from_par(lengths, angles)
  np.testing.assert_allclose(rebuilt, expected, atol=2e-4)
  l2, a2 = to_par(rebuilt)
  np.testing.assert_allclose(l2, lengths, atol=1e-4)
  np.testing.assert_allclose(a2, angles, atol=1e-2)
  assert np.all(np.asarray(lengths) > 0)


def test_volume_and_plane_spacings():
  rng = np.random.default_rng(1)
  for cell in random_cells(rng, 20):
    lat = jnp.asarray(cell)
    np.testing.assert_allclose(lattice_lib.volume(lat), abs(np.linalg.det(cell)),
                               rtol=1e-5)
    # spacing_k = V / |b_i x b_j|
    for k in range(3):
      i, j = [m for m in range(3) if m != k]
      expected = np.linalg.det(cell) / np.linalg.norm(np.cross(cell[i], cell[j]))
      np.testing.assert_allclose(lattice_lib.plane_spacings(lat)[k], expected,
                                 rtol=1e-5)


@pytest.mark.parametrize('jit', [False, True])
def test_reduce_lattice_is_minkowski_and_same_lattice(jit):
  rng = np.random.default_rng(2)
  cells = random_cells(rng, 100, min_angle=20.0)
  # also a few deliberately awful bases of simple lattices
  for m in ([[1, 5, 0], [0, 1, 0], [0, 3, 1]], [[1, 0, 0], [7, 1, 0], [4, 9, 1]]):
    cells.append(np.array(m, float) @ np.diag([3.0, 4.0, 5.0]))
  reduce = jax.jit(lattice_lib.reduce_lattice) if jit else lattice_lib.reduce_lattice
  reduced = np.asarray(reduce(jnp.asarray(np.array(cells))), float)
  for cell, red in zip(cells, reduced):
    assert is_minkowski_reduced(red, pbc=True) or np.allclose(
        sorted(np.linalg.norm(red, axis=1)),
        sorted(np.linalg.norm(lattice_lib_reference(cell), axis=1)), rtol=1e-6)
    transform = red @ np.linalg.inv(cell)
    np.testing.assert_allclose(transform, np.round(transform), atol=1e-6)
    assert abs(abs(np.linalg.det(np.round(transform))) - 1) < 1e-9
  # it did something: the awful bases got shorter
  assert np.linalg.norm(reduced[-1], axis=1).max() < np.linalg.norm(cells[-1], axis=1).max()


def lattice_lib_reference(cell):
  from ase.geometry.minkowski_reduction import minkowski_reduce
  return minkowski_reduce(cell)[0]
