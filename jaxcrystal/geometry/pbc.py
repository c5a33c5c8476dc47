"""Periodic geometry: fractional/Cartesian conversion, wrapping, minimum image.

Rows of `lattice` are lattice vectors (Angstrom); `cart = frac @ lattice`.
All functions are pure jnp and work under `jit` and `vmap`.
"""
from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal.geometry import lattice as lattice_lib

# The 27 neighbouring images {-1, 0, 1}^3; enough around a Minkowski-reduced cell.
NEIGHBOR_IMAGES = np.array(list(itertools.product([-1, 0, 1], repeat=3)),
                           dtype=np.float32)


def frac_to_cart(frac: jax.Array, lattice: jax.Array) -> jax.Array:
  """`frac: [..., N, 3]` fractional, `lattice: [..., 3, 3]` -> `[..., N, 3]` Angstrom."""
  chex.assert_axis_dimension(frac, -1, 3)
  return frac @ lattice


def cart_to_frac(cart: jax.Array, lattice: jax.Array) -> jax.Array:
  """`cart: [..., N, 3]` Angstrom, `lattice: [..., 3, 3]` -> `[..., N, 3]` fractional."""
  chex.assert_axis_dimension(cart, -1, 3)
  return cart @ jnp.linalg.inv(lattice)


def wrap_frac(frac: jax.Array) -> jax.Array:
  """Wrap fractional coordinates into [0, 1).

  `x - floor(x)` can round to exactly 1.0 in float32 for tiny negative x; the
  second `where` maps that back to 0 so the half-open interval really holds.
  """
  wrapped = frac - jnp.floor(frac)
  return jnp.where(wrapped >= 1.0, 0.0, wrapped)


def wrap_cart(cart: jax.Array, lattice: jax.Array) -> jax.Array:
  """Wrap Cartesian positions `[..., N, 3]` into the cell `lattice [..., 3, 3]`."""
  return frac_to_cart(wrap_frac(cart_to_frac(cart, lattice)), lattice)


def minimum_image_displacement(frac_delta: jax.Array,
                               lattice: jax.Array,
                               reduced_lattice: jax.Array | None = None
                               ) -> jax.Array:
  """Shortest Cartesian vector among all images of a fractional displacement.

  Right for any triclinic cell: the displacement is re-expressed in a
  Minkowski-reduced basis of the same lattice, wrapped to [-0.5, 0.5) there,
  and the 27 neighbouring images in that basis are searched. (Rounding in the
  original fractional basis alone is wrong for skewed cells.)

  Args:
    frac_delta: [..., 3] fractional displacement, e.g. `frac_j - frac_i`.
    lattice: [3, 3] rows are lattice vectors (Angstrom).
    reduced_lattice: optional precomputed `reduce_lattice(lattice)`, to share
      the reduction between many calls.

  Returns:
    [..., 3] minimum-image displacement in Angstrom.
  """
  chex.assert_axis_dimension(frac_delta, -1, 3)
  chex.assert_shape(lattice, (3, 3))
  if reduced_lattice is None:
    reduced_lattice = lattice_lib.reduce_lattice(lattice)
  cart = frac_delta @ lattice
  red = cart @ jnp.linalg.inv(reduced_lattice)
  red = red - jnp.round(red)
  images = jnp.asarray(NEIGHBOR_IMAGES, dtype=cart.dtype)
  candidates = (red[..., None, :] + images) @ reduced_lattice  # [..., 27, 3]
  sq = jnp.sum(candidates**2, axis=-1)
  best = jnp.argmin(sq, axis=-1)
  return jnp.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]


def minimum_image_shift(frac_delta: jax.Array, lattice: jax.Array,
                        reduced_lattice: jax.Array | None = None) -> jax.Array:
  """Integer image offset S (original basis) such that `(frac_delta + S) @ lattice`
  is the minimum-image displacement. `[..., 3] -> [..., 3]` (float, integral)."""
  disp = minimum_image_displacement(frac_delta, lattice, reduced_lattice)
  return jnp.round(cart_to_frac(disp, lattice) - frac_delta)


def minimum_image_distances(frac: jax.Array, lattice: jax.Array) -> jax.Array:
  """All pairwise minimum-image distances of one crystal.

  Args:
    frac: [N, 3] fractional coordinates.
    lattice: [3, 3] rows are lattice vectors (Angstrom).

  Returns:
    [N, N] distances in Angstrom (zero on the diagonal).
  """
  chex.assert_rank(frac, 2)
  delta = frac[None, :, :] - frac[:, None, :]
  disp = minimum_image_displacement(delta, lattice)
  return jnp.sqrt(jnp.maximum(jnp.sum(disp**2, -1), 0.0))
