"""Lattice algebra: parameters, volumes, plane spacings and basis reduction.

Convention (ASE's): a lattice is a `[3, 3]` matrix whose ROWS are the lattice
vectors a, b, c in Angstrom, so `cart = frac @ lattice`. Every function here is
pure jnp, works under `jit`, and broadcasts over leading batch axes unless noted.
"""
from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np


def lattice_from_parameters(lengths: jax.Array, angles: jax.Array) -> jax.Array:
  """Lattice matrix from cell parameters, in ASE's standard orientation.

  Args:
    lengths: [..., 3] a, b, c in Angstrom.
    angles: [..., 3] alpha, beta, gamma in degrees (alpha between b and c).

  Returns:
    [..., 3, 3] lattice, rows are vectors; a along x, b in the xy plane.
  """
  lengths = jnp.asarray(lengths)
  angles = jnp.deg2rad(jnp.asarray(angles, dtype=lengths.dtype))
  chex.assert_equal_shape([lengths, angles])
  a, b, c = lengths[..., 0], lengths[..., 1], lengths[..., 2]
  cos_al, cos_be, cos_ga = (jnp.cos(angles[..., i]) for i in range(3))
  sin_ga = jnp.sin(angles[..., 2])
  cx = c * cos_be
  cy = c * (cos_al - cos_be * cos_ga) / sin_ga
  cz = jnp.sqrt(jnp.maximum(c**2 - cx**2 - cy**2, 0.0))
  zero = jnp.zeros_like(a)
  row_a = jnp.stack([a, zero, zero], axis=-1)
  row_b = jnp.stack([b * cos_ga, b * sin_ga, zero], axis=-1)
  row_c = jnp.stack([cx, cy, cz], axis=-1)
  return jnp.stack([row_a, row_b, row_c], axis=-2)


def lattice_to_parameters(lattice: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cell parameters of a lattice.

  Args:
    lattice: [..., 3, 3] rows are lattice vectors (Angstrom).

  Returns:
    lengths [..., 3] (Angstrom) and angles [..., 3] (alpha, beta, gamma, degrees).
  """
  chex.assert_axis_dimension(lattice, -1, 3)
  chex.assert_axis_dimension(lattice, -2, 3)
  lengths = jnp.linalg.norm(lattice, axis=-1)
  def angle(i, j):
    cos = jnp.sum(lattice[..., i, :] * lattice[..., j, :], -1) / (
        lengths[..., i] * lengths[..., j])
    return jnp.rad2deg(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))
  angles = jnp.stack([angle(1, 2), angle(0, 2), angle(0, 1)], axis=-1)
  return lengths, angles


def volume(lattice: jax.Array) -> jax.Array:
  """Signed cell volume in Angstrom^3, `[..., 3, 3] -> [...]`."""
  return jnp.linalg.det(lattice)


def plane_spacings(lattice: jax.Array) -> jax.Array:
  """Distances between neighbouring lattice planes, `[..., 3, 3] -> [..., 3]`.

  Plane family k is spanned by the two other vectors; its spacing is
  1 / |k-th column of inv(lattice)|. A sphere of radius r around any point
  spans at most r / spacing_k fractional units along axis k, whatever the cell's
  skew, which is what bounds the image search in the neighbour lists.
  """
  inv = jnp.linalg.inv(lattice)
  return 1.0 / jnp.linalg.norm(inv, axis=-2)


# Integer combinations b_i + s_j b_j + s_k b_k tried by the reduction: with the
# pairwise size reduction they make Minkowski's 12 conditions in 3D.
_TRIPLE_SIGNS = np.array(list(itertools.product([-1.0, 1.0], repeat=2)))


def _reduce_step(basis: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One sweep of greedy reduction; returns (new basis, whether it changed)."""
  changed = jnp.array(False)
  tol = 1e-9 * jnp.max(jnp.sum(basis**2, -1))
  # Pairwise size reduction, b_i -= round(<b_i, b_j> / |b_j|^2) b_j.
  for i in range(3):
    for j in range(3):
      if i == j:
        continue
      bi, bj = basis[i], basis[j]
      r = jnp.round(jnp.dot(bi, bj) / jnp.dot(bj, bj))
      candidate = bi - r * bj
      better = jnp.dot(candidate, candidate) < jnp.dot(bi, bi) - tol
      basis = basis.at[i].set(jnp.where(better, candidate, bi))
      changed = changed | better
  # Three-vector combinations that pairwise reduction cannot see.
  for i in range(3):
    j, k = [m for m in range(3) if m != i]
    for sj, sk in _TRIPLE_SIGNS:
      bi = basis[i]
      candidate = bi + sj * basis[j] + sk * basis[k]
      better = jnp.dot(candidate, candidate) < jnp.dot(bi, bi) - tol
      basis = basis.at[i].set(jnp.where(better, candidate, bi))
      changed = changed | better
  return basis, changed


def reduce_lattice(lattice: jax.Array, max_sweeps: int = 64) -> jax.Array:
  """Minkowski-reduced basis of the same lattice, jittable and vmappable.

  Each accepted move strictly shortens one vector by a unimodular integer
  operation, so the lattice (the set of points) is unchanged and the loop
  terminates; at its fixed point all 12 Minkowski conditions hold. The result
  generates the same lattice, not necessarily with the same handedness order.

  Args:
    lattice: [..., 3, 3] rows are lattice vectors (Angstrom).
    max_sweeps: upper bound on greedy sweeps (cells with angles down to ~10
      degrees need a handful).

  Returns:
    [..., 3, 3] reduced lattice.
  """
  chex.assert_axis_dimension(lattice, -1, 3)
  if lattice.ndim > 2:
    flat = lattice.reshape((-1, 3, 3))
    return jax.vmap(lambda l: reduce_lattice(l, max_sweeps))(flat).reshape(
        lattice.shape)

  def cond(carry):
    _, changed, sweep = carry
    return changed & (sweep < max_sweeps)

  def body(carry):
    basis, _, sweep = carry
    basis, changed = _reduce_step(basis)
    return basis, changed, sweep + 1

  basis, _, _ = jax.lax.while_loop(
      cond, body, (lattice, jnp.array(True), jnp.array(0)))
  return basis


def niggli_reduce_atoms(atoms):
  """Host-side Niggli reduction of an `ase.Atoms` (positions are kept).

  Returns a copy whose cell is Niggli reduced and whose atoms are wrapped into it.
  """
  from ase.build import niggli_reduce  # local: heavy import, host only
  reduced = atoms.copy()
  niggli_reduce(reduced)
  return reduced


def make_right_handed(lattice: jax.Array, frac: jax.Array,
                      graph_index: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Same crystals with right-handed cells (positive determinant).

  An O(3)-equivariant generator cannot prefer a handedness, so about half of
  its cells come out left-handed. Swapping lattice vectors a and b (and the
  first two fractional columns) keeps every Cartesian position, i.e. the
  identical structure, and flips the sign of the determinant.

  Args:
    lattice: [G, 3, 3]; frac: [N, 3]; graph_index: [N] crystal of each atom.
  """
  chex.assert_rank([lattice, frac, graph_index], [3, 2, 1])
  flip = jnp.linalg.det(lattice) < 0
  swapped_lattice = lattice[:, jnp.array([1, 0, 2])]
  swapped_frac = frac[:, jnp.array([1, 0, 2])]
  lattice = jnp.where(flip[:, None, None], swapped_lattice, lattice)
  frac = jnp.where(flip[graph_index][:, None], swapped_frac, frac)
  return lattice, frac
