"""Soft-repulsion correction of generated crystals (issue 36): atoms closer
than a threshold are pushed apart, and nothing else moves.

The energy of a crystal is a harmonic wall on every pair (over periodic
images) closer than `threshold` Angstrom,

  E = 1/2 sum_{pairs i<j, images} max(0, threshold - d_ij)^2,

minimised over Cartesian positions (the cell is kept) by gradient descent
with each atom's step capped at `max_step` Angstrom, for at most `steps`
iterations in one `lax.scan` (padded crystals, `vmap`, one compile per
budget). Atoms with no neighbour under the threshold have zero force, so
they stay exactly where they were. Coincident atoms (no direction to push)
are first nudged by a seeded 1e-3 A offset.

This is a correction, not physics: it needs no potential and says nothing
about energies. Its results are reported beside the raw samples and never
enter the papers' metrics, which score what the model made.

  repel(structures, threshold, ...) -> (corrected structures, arrays)
  summarize(arrays) -> counts: moved, invalid -> valid, displacements
"""
from __future__ import annotations

import itertools
from typing import Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal.evaluation import metrics
from jaxcrystal.evaluation import validation
from jaxcrystal.geometry import spacegroup

# the 27 neighbouring cells: pairs closer than the threshold lie within them
# when the threshold is under half the cell's smallest height (checked).
_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), np.float32)
_COINCIDENT = 1e-3  # Angstrom
_UNMOVED = 1e-5  # Angstrom: float32 noise, not a move


def repulsion_energy(cart: jax.Array, lattice: jax.Array, mask: jax.Array,
                     threshold: float) -> jax.Array:
  """E of one padded crystal: `cart [A, 3]` Angstrom, `lattice [3, 3]` rows
  are lattice vectors, `mask [A]` real atoms. Returns a scalar (eV-like
  units of Angstrom^2)."""
  frac = cart @ jnp.linalg.inv(lattice)
  delta = frac[:, None, :] - frac[None, :, :]
  delta = delta - jnp.round(delta)  # [A, A, 3] nearest image in the cell
  vec = (delta[:, :, None, :] + _SHIFTS[None, None]) @ lattice  # [A, A, 27, 3]
  dist = jnp.sqrt(jnp.sum(vec ** 2, -1) + 1e-12)
  a = cart.shape[0]
  self_pair = (jnp.eye(a, dtype=bool)[:, :, None]
               & jnp.all(_SHIFTS == 0, -1)[None, None, :])
  pair = mask[:, None, None] & mask[None, :, None] & ~self_pair
  overlap = jnp.where(pair, jnp.maximum(threshold - dist, 0.0), 0.0)
  return 0.25 * jnp.sum(overlap ** 2)  # each pair counted twice


def _descend(cart, lattice, mask, threshold, steps, max_step, rate):
  """Capped gradient descent on `repulsion_energy` for `steps` iterations."""
  grad = jax.grad(repulsion_energy)

  def step(x, _):
    g = jnp.where(mask[:, None], grad(x, lattice, mask, threshold), 0.0)
    move = -rate * g
    norm = jnp.linalg.norm(move, axis=-1, keepdims=True)
    move = move * jnp.minimum(1.0, max_step / jnp.maximum(norm, 1e-12))
    return x + move, None

  out, _ = jax.lax.scan(step, cart, None, length=steps)
  return out


_descend_batch = jax.jit(jax.vmap(_descend, in_axes=(0, 0, 0, None, None, None, None)),
                         static_argnums=(4,))


def _nudge_coincident(atoms: ase.Atoms, rng: np.random.Generator) -> np.ndarray:
  """Positions with a 1e-3 A seeded offset on atoms that share a site with
  another (their repulsion has no direction); the others unchanged."""
  pos = atoms.get_positions()
  d = validation.nearest_neighbor_distances(atoms) if len(atoms) > 1 else np.ones(1)
  close = d < _COINCIDENT
  pos[close] += rng.normal(0.0, _COINCIDENT, (int(close.sum()), 3))
  return pos


def repel(structures: Sequence[ase.Atoms], threshold: float = 0.7, *,
          steps: int = 200, max_step: float = 0.05, rate: float = 0.5,
          batch_size: int = 256, seed: int = 0) -> tuple[list[ase.Atoms], dict]:
  """Push apart atoms closer than `threshold` Angstrom in each structure.

  Returns (structures, arrays): the corrected copies (cell, species and
  order kept; `info['repelled']` whether any atom moved) and `[S]` arrays
  `moved` (bool), `max_displacement` and `rms_displacement` (Angstrom, over
  the structure's atoms), `min_distance_before/after` and
  `valid_before/after` (structural validity as the papers define it,
  `metrics.structural_validity`).
  Structures whose cell cannot hold the threshold within the neighbouring
  cells (a height under 2 x threshold) or that are not finite are returned
  unchanged, marked `skipped`.
  """
  rng = np.random.default_rng(seed)
  structures = list(structures)
  usable = np.array([_usable(a, threshold) for a in structures], bool)
  out = [a.copy() for a in structures]
  width = max([len(a) for a in structures] + [1])
  index = np.flatnonzero(usable)
  for start in range(0, len(index), batch_size):
    chunk = index[start:start + batch_size]
    cart = np.zeros((len(chunk), width, 3), np.float32)
    lattice = np.tile(np.eye(3, dtype=np.float32), (len(chunk), 1, 1))
    mask = np.zeros((len(chunk), width), bool)
    for k, i in enumerate(chunk):
      atoms = structures[i]
      cart[k, :len(atoms)] = _nudge_coincident(atoms, rng)
      lattice[k] = atoms.cell[:]
      mask[k, :len(atoms)] = True
    moved = np.asarray(_descend_batch(cart, lattice, mask, threshold, steps,
                                      max_step, rate))
    for k, i in enumerate(chunk):
      before = structures[i].get_positions()
      after = moved[k, :len(before)].astype(np.float64)
      # float32 round trips are not moves: atoms without force keep their
      # positions exactly
      still = np.linalg.norm(after - before, axis=-1) < _UNMOVED
      out[i].set_positions(np.where(still[:, None], before, after))
  displacement = [np.linalg.norm(b.get_positions() - a.get_positions(), axis=-1)
                  if len(a) else np.zeros(1) for a, b in zip(structures, out)]
  arrays = {
      'skipped': ~usable,
      'moved': np.array([float(d.max()) > 0 for d in displacement], bool),
      'max_displacement': np.array([float(d.max()) for d in displacement]),
      'rms_displacement': np.array([float(np.sqrt(np.mean(d ** 2))) for d in displacement]),
      'min_distance_before': np.array([_min_distance(a) for a in structures]),
      'min_distance_after': np.array([_min_distance(a) for a in out]),
      'valid_before': np.array([metrics.structural_validity(a) for a in structures], bool),
      'valid_after': np.array([metrics.structural_validity(a) for a in out], bool),
  }
  for atoms, moved_i in zip(out, arrays['moved']):
    atoms.info = {**atoms.info, 'repelled': bool(moved_i), 'repel_threshold': threshold}
  return out, arrays


def summarize(arrays: dict) -> dict:
  """What the correction did: structures moved, invalid -> valid (and
  valid -> invalid, which should be 0), displacements of the moved ones."""
  moved = arrays['moved']
  return {
      'num_structures': int(moved.size),
      'moved': int(moved.sum()),
      'skipped': int(arrays['skipped'].sum()),
      'valid_before': int(arrays['valid_before'].sum()),
      'valid_after': int(arrays['valid_after'].sum()),
      'invalid_to_valid': int((~arrays['valid_before'] & arrays['valid_after']).sum()),
      'valid_to_invalid': int((arrays['valid_before'] & ~arrays['valid_after']).sum()),
      'max_displacement_mean': (float(arrays['max_displacement'][moved].mean())
                                if moved.any() else 0.0),
      'max_displacement_max': (float(arrays['max_displacement'][moved].max())
                               if moved.any() else 0.0),
      'rms_displacement_mean': (float(arrays['rms_displacement'][moved].mean())
                                if moved.any() else 0.0),
  }


def _usable(atoms: ase.Atoms, threshold: float) -> bool:
  cell = np.asarray(atoms.cell[:], float)
  if not len(atoms) or not np.isfinite(cell).all() or not np.isfinite(atoms.positions).all():
    return False
  if spacegroup.absurd_cell(cell) or abs(np.linalg.det(cell)) < 1e-6:
    return False
  heights = abs(np.linalg.det(cell)) / np.linalg.norm(
      np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
  return bool(heights.min() > 2 * threshold)


def _min_distance(atoms: ase.Atoms) -> float:
  try:
    return validation.min_interatomic_distance(atoms)
  except Exception:  # not finite, degenerate
    return float('nan')


