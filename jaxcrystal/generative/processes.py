"""Forward (noising) processes as pure functions, picked by name.

Each process is a pytree dataclass holding its schedule; `noise(rng, x0, t,
...) -> (x_t, target)` draws the noisy sample at integer steps `t` (index 0 is
clean, see `schedules`) and the regression target of the network.

  lattice_ddpm         lattice [G, 3, 3]; target: the Gaussian noise eps.
  frac_wrapped_normal  fractional coords [N, 3] on the torus; target: the
                       wrapped-normal score divided by sqrt(E[score^2]), so
                       every t weighs equally in the loss (DiffCSP's scaling).
  cart_minimum_image   Cartesian coords [N, 3] in a given cell (VE noise);
                       target: minimum-image displacement / sigma.
  types_ddpm           one-hot atom types [N, K]; target: eps.
"""
from __future__ import annotations

from typing import Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp

from jaxcrystal.geometry import pbc
from jaxcrystal.generative import schedules
from jaxcrystal.generative import wrapped_normal

NUM_ELEMENTS = 100  # type classes: atomic numbers 1..100 -> classes 0..99


@flax.struct.dataclass
class LatticeDDPM:
  """DDPM on lattice matrices: L_t = sqrt(ab_t) L_0 + sqrt(1 - ab_t) eps."""
  schedule: schedules.BetaSchedule

  def noise(self, rng: jax.Array, lattice: jax.Array, t: jax.Array):
    """`lattice: [G, 3, 3]` Angstrom, `t: [G]` int -> (L_t, eps) both [G, 3, 3]."""
    chex.assert_rank(lattice, 3)
    chex.assert_shape(t, lattice.shape[:1])
    eps = jax.random.normal(rng, lattice.shape, lattice.dtype)
    ab = self.schedule.alpha_bars[t][:, None, None]
    return jnp.sqrt(ab) * lattice + jnp.sqrt(1.0 - ab) * eps, eps


@flax.struct.dataclass
class FracWrappedNormal:
  """Wrapped normal on the torus: F_t = wrap(F_0 + sigma_t eps)."""
  schedule: schedules.SigmaSchedule

  def noise(self, rng: jax.Array, frac: jax.Array, t: jax.Array):
    """`frac: [N, 3]` in [0, 1), `t: [N]` int per atom.

    Returns F_t [N, 3] in [0, 1) and the normalised score
    `score(F_t - F_0; sigma_t) / sqrt(score_norm_t)` [N, 3].
    """
    chex.assert_rank(frac, 2)
    chex.assert_shape(t, frac.shape[:1])
    sigma = self.schedule.sigmas[t][:, None].astype(frac.dtype)
    eps = jax.random.normal(rng, frac.shape, frac.dtype)
    frac_t = pbc.wrap_frac(frac + sigma * eps)
    return frac_t, self.normalised_score(frac_t - frac, t)

  def normalised_score(self, delta: jax.Array, t: jax.Array) -> jax.Array:
    """Score of the wrapped normal at fractional offset `delta [N, 3]`, scaled."""
    sigma = self.schedule.sigmas[t][:, None].astype(delta.dtype)
    norm = self.schedule.score_norms[t][:, None].astype(delta.dtype)
    return wrapped_normal.score(delta, sigma) / jnp.sqrt(norm)

  def score_from_prediction(self, prediction: jax.Array, t: jax.Array) -> jax.Array:
    """Undo the normalisation: network output [N, 3] -> score [N, 3]."""
    norm = self.schedule.score_norms[t][:, None].astype(prediction.dtype)
    return prediction * jnp.sqrt(norm)


@flax.struct.dataclass
class CartesianMinimumImage:
  """VE noise on Cartesian positions inside a fixed cell (lattice and atom
  count given): x_t = wrap(x_0 + sigma_t eps), sigma in Angstrom."""
  schedule: schedules.SigmaSchedule

  def noise(self, rng: jax.Array, cart: jax.Array, t: jax.Array,
            lattice: jax.Array):
    """`cart: [N, 3]` Angstrom, `t: [N]`, `lattice: [N, 3, 3]` (each atom's cell).

    Returns x_t [N, 3] wrapped into the cell, and the target
    `mic(x_t - x_0) / sigma_t` [N, 3]: the noise as seen through the minimum
    image, which is what a periodic model can know.
    """
    chex.assert_rank(cart, 2)
    chex.assert_shape(lattice, (cart.shape[0], 3, 3))
    sigma = self.schedule.sigmas[t][:, None].astype(cart.dtype)
    eps = jax.random.normal(rng, cart.shape, cart.dtype)
    inv = jnp.linalg.inv(lattice)
    frac_t = pbc.wrap_frac(jnp.einsum('ni,nij->nj', cart + sigma * eps, inv))
    cart_t = jnp.einsum('ni,nij->nj', frac_t, lattice)
    delta = jnp.einsum('ni,nij->nj', cart_t - cart, inv)
    disp = jax.vmap(pbc.minimum_image_displacement)(delta, lattice)
    return cart_t, disp / jnp.maximum(sigma, 1e-12)


@flax.struct.dataclass
class TypesDDPM:
  """DDPM on one-hot type vectors (DiffCSP's ab initio variant)."""
  schedule: schedules.BetaSchedule
  num_classes: int = flax.struct.field(pytree_node=False, default=NUM_ELEMENTS)

  def one_hot(self, species: jax.Array) -> jax.Array:
    """Atomic numbers [N] -> one-hot [N, K] (Z = 1 is class 0)."""
    return jax.nn.one_hot(species - 1, self.num_classes)

  def noise(self, rng: jax.Array, species: jax.Array, t: jax.Array):
    """`species: [N]` atomic numbers, `t: [N]` -> (x_t [N, K], eps [N, K])."""
    chex.assert_rank(species, 1)
    chex.assert_shape(t, species.shape)
    x0 = self.one_hot(species)
    eps = jax.random.normal(rng, x0.shape, x0.dtype)
    ab = self.schedule.alpha_bars[t][:, None]
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps, eps


def _lattice_ddpm(num_steps=1000, beta_schedule='cosine'):
  return LatticeDDPM(schedules.make_beta_schedule(beta_schedule, num_steps))


def _frac_wrapped_normal(num_steps=1000, sigma_begin=0.005, sigma_end=0.5):
  return FracWrappedNormal(
      schedules.make_sigma_schedule(num_steps, sigma_begin, sigma_end))


def _cart_minimum_image(num_steps=1000, sigma_begin=0.01, sigma_end=1.0):
  return CartesianMinimumImage(
      schedules.make_sigma_schedule(num_steps, sigma_begin, sigma_end,
                                    wrapped=False))


def _types_ddpm(num_steps=1000, beta_schedule='cosine', num_classes=NUM_ELEMENTS):
  return TypesDDPM(schedules.make_beta_schedule(beta_schedule, num_steps),
                   num_classes)


PROCESSES: dict[str, Callable] = {
    'lattice_ddpm': _lattice_ddpm,
    'frac_wrapped_normal': _frac_wrapped_normal,
    'cart_minimum_image': _cart_minimum_image,
    'types_ddpm': _types_ddpm,
}


def get_process(name: str, **kwargs):
  """Build a forward process by registry name with its schedule options."""
  if name not in PROCESSES:
    raise ValueError(f'unknown forward process {name!r}; choose from '
                     f'{sorted(PROCESSES)}')
  return PROCESSES[name](**kwargs)
