import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.geometry import get_distances

from conftest import random_cells
from jaxcrystal.geometry import pbc

TOL = {jnp.float32: 1e-4, jnp.float64: 1e-5}


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.float64])
def test_minimum_image_distances_match_ase(dtype):
  rng = np.random.default_rng(0)
  cells = np.array(random_cells(rng, 300, min_angle=30.0))
  frac = rng.uniform(0, 1, (len(cells), 6, 3))
  expected = np.array([get_distances(f @ c, cell=c, pbc=True)[1]
                       for f, c in zip(frac, cells)])
  with jax.enable_x64(dtype == jnp.float64):
    got = jax.jit(jax.vmap(pbc.minimum_image_distances))(
        jnp.asarray(frac, dtype), jnp.asarray(cells, dtype))
    chex.assert_shape(got, (len(cells), 6, 6))
    chex.assert_type(got, dtype)
  worst = np.abs(np.asarray(got) - expected).max()
  assert worst < TOL[dtype], worst
  assert np.asarray(got).max() > 1.0


def test_minimum_image_jit_matches_eager():
  rng = np.random.default_rng(3)
  for cell in random_cells(rng, 3, min_angle=30.0):
    frac = jnp.asarray(rng.uniform(0, 1, (5, 3)), jnp.float32)
    cell = jnp.asarray(cell, jnp.float32)
    np.testing.assert_allclose(jax.jit(pbc.minimum_image_distances)(frac, cell),
                               pbc.minimum_image_distances(frac, cell), atol=1e-5)


def test_naive_rounding_is_wrong_for_skewed_cells():
  """Guards the test above: these cells really need the reduction."""
  rng = np.random.default_rng(0)
  wrong = 0
  for cell in random_cells(rng, 200, min_angle=30.0):
    frac = rng.uniform(0, 1, (6, 3))
    delta = frac[None] - frac[:, None]
    naive = np.linalg.norm((delta - np.round(delta)) @ cell, axis=-1)
    wrong += np.any(naive - get_distances(frac @ cell, cell=cell, pbc=True)[1] > 1e-3)
  assert wrong > 10


def test_minimum_image_shift_reproduces_displacement(keys):
  cell = jnp.array([[4.0, 0, 0], [3.5, 2.0, 0], [1.0, 1.5, 3.0]])
  delta = jax.random.uniform(next(keys), (50, 3), minval=-1, maxval=1)
  shift = pbc.minimum_image_shift(delta, cell)
  np.testing.assert_allclose(shift, np.round(shift))
  disp = pbc.minimum_image_displacement(delta, cell)
  np.testing.assert_allclose((delta + shift) @ cell, disp, atol=1e-5)
  assert np.abs(np.asarray(shift)).sum() > 0


def test_wrap_and_conversions(keys):
  lat = jnp.array([[5.0, 0, 0], [1.0, 4.0, 0], [0.5, 0.5, 6.0]])
  frac = jax.random.uniform(next(keys), (20, 3), minval=-3, maxval=3)
  wrapped = pbc.wrap_frac(frac)
  assert float(wrapped.min()) >= 0 and float(wrapped.max()) < 1
  np.testing.assert_allclose((frac - wrapped), np.round(frac - wrapped), atol=1e-5)
  tiny = pbc.wrap_frac(jnp.array([-1e-9, -0.0, 1.0], jnp.float32))
  assert float(tiny.max()) < 1.0
  cart = pbc.frac_to_cart(frac, lat)
  np.testing.assert_allclose(pbc.cart_to_frac(cart, lat), frac, atol=1e-5)
  np.testing.assert_allclose(jax.jit(pbc.wrap_cart)(cart, lat),
                             pbc.wrap_cart(cart, lat), atol=1e-5)
  # depends on the input
  assert not np.allclose(pbc.frac_to_cart(frac, 2 * lat), cart)
