"""A local equivariant denoiser that moves damaged atoms back onto their
lattice sites, its training loss, and iterative healing.

The predicted displacement of atom i is a sum over its neighbours j within a
cutoff of learned scalar weights times unit vectors to them,

    d_i = sum_j w(r_ij, h_i, h_j, Z_i, Z_j[, sigma]) * u_ij,

with r_ij the minimum-image distance (a Gaussian radial basis with a smooth
cosine envelope), h the atoms' radial environments and Z their species. The
weights are invariant, so d rotates with the crystal and ignores
translations; at a centrosymmetric site of a perfect lattice the terms cancel
in +/- pairs, so a perfect crystal stays put. Cost is linear in the number of
edges, and the graph is any `NeighborList` (cell list for large systems).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.geometry import neighbors
from jaxcrystal.geometry import pbc
from jaxcrystal.nn.layers import cosine_envelope
from jaxcrystal.nn.layers import gaussian_basis


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
  """Static settings of the denoiser (lengths in Angstrom)."""
  cutoff: float = 4.5          # between Pt's 2nd (3.92) and 3rd (4.80) shells
  num_basis: int = 16
  hidden: int = 64
  species_dim: int = 16
  noise_conditioning: bool = False
  sigma_min: float = 0.01      # training damage range, per coordinate
  sigma_max: float = 0.10

  def validate(self) -> None:
    if not 0 < self.sigma_min <= self.sigma_max:
      raise ValueError(f'need 0 < sigma_min <= sigma_max, got {self.sigma_min}, '
                       f'{self.sigma_max}')
    if self.cutoff <= 0 or self.num_basis < 1 or self.hidden < 1:
      raise ValueError(f'bad denoiser sizes: {self}')


class LocalDenoiser(nn.Module):
  """Displacement field `[N, 3]` (Angstrom) of a (possibly damaged) structure."""
  config: DenoiserConfig

  @nn.compact
  def __call__(self, frac: jax.Array, lattice: jax.Array, species: jax.Array,
               nbrs: neighbors.NeighborList,
               sigma: jax.Array | None = None) -> jax.Array:
    """
    Args:
      frac: [N, 3] fractional coordinates.
      lattice: [3, 3] (one system) or [N, 3, 3] (each atom's crystal), rows
        are lattice vectors in Angstrom.
      species: [N] atomic numbers (0 on padding).
      nbrs: graph with cutoff >= config.cutoff; longer edges weigh zero.
      sigma: [N] damage scale per atom (only with noise_conditioning).
    Returns:
      [N, 3] predicted displacement back to the lattice site (Angstrom).
    """
    c = self.config
    n = frac.shape[0]
    chex.assert_shape(frac, (n, 3))
    chex.assert_shape(species, (n,))
    vec = neighbors.edge_vectors(frac, lattice, nbrs)           # [E, 3], j - i
    dist = jnp.sqrt(jnp.sum(vec**2, -1) + 1e-12)
    env = cosine_envelope(dist, c.cutoff) * nbrs.edge_mask
    rbf = gaussian_basis(dist, c.num_basis, c.cutoff) * nbrs.edge_mask[:, None]
    # Radial environment of each atom: how its shells are filled (sees vacancies).
    density = jax.ops.segment_sum(rbf, nbrs.receivers, n)       # [N, K]
    h = nn.silu(nn.Dense(c.hidden, name='environment')(density))
    z = nn.Embed(119, c.species_dim, name='species')(species)
    parts = [rbf, h[nbrs.receivers], h[nbrs.senders], z[nbrs.receivers],
             z[nbrs.senders]]
    if c.noise_conditioning:
      if sigma is None:
        raise ValueError('a noise-conditioned denoiser needs sigma')
      parts.append(jnp.log(sigma)[nbrs.receivers][:, None])
    x = jnp.concatenate(parts, -1)
    x = nn.silu(nn.Dense(c.hidden, name='edge_1')(x))
    x = nn.silu(nn.Dense(c.hidden, name='edge_2')(x))
    weight = nn.Dense(1, name='edge_weight')(x)[:, 0] * env     # [E]
    unit = vec / dist[:, None]
    return jax.ops.segment_sum(weight[:, None] * unit, nbrs.receivers, n)


def graph_capacity(batch: batch_lib.CrystalBatch, cutoff: float) -> tuple[int, int]:
  """Host estimate of (max_image, edge capacity) of a damaged batch's radius
  graph (the estimate's margin covers damage of a few tenths of an Angstrom)."""
  max_image = neighbors.estimate_max_image(batch.lattice, cutoff, batch.graph_mask)
  return max_image, neighbors.estimate_capacity(batch, cutoff, max_image)


def get_loss_fn(model: LocalDenoiser, max_image: int, capacity: int) -> Callable:
  """`loss_fn(rng, params, batch) -> (loss, aux)` on ideal crystals.

  Damages every crystal with Gaussian noise (sigma drawn per crystal, uniform
  in [sigma_min, sigma_max] A), rebuilds the radius graph on the damaged
  positions, and regresses the displacement back (-noise) in units of sigma
  so every damage scale weighs alike. Padding atoms are masked out.
  """
  c = model.config

  def loss_fn(rng, params, batch: batch_lib.CrystalBatch):
    k_sigma, k_eps = jax.random.split(rng)
    g, n = batch.num_graph_slots, batch.num_atom_slots
    sigma_g = jax.random.uniform(k_sigma, (g,), minval=c.sigma_min, maxval=c.sigma_max)
    sigma = sigma_g[batch.graph_index]
    noise = sigma[:, None] * jax.random.normal(k_eps, (n, 3))
    noise = jnp.where(batch.atom_mask[:, None], noise, 0.0)
    lat = batch.atom_lattice()
    cart = jnp.einsum('ni,nij->nj', batch.frac, lat) + noise
    frac = pbc.wrap_frac(jnp.einsum('ni,nij->nj', cart, jnp.linalg.inv(lat)))
    damaged = batch.replace(frac=jnp.where(batch.atom_mask[:, None], frac, batch.frac))
    nbrs = neighbors.radius_graph(damaged, c.cutoff, max_image, capacity)
    pred = model.apply(params, damaged.frac, lat, batch.species, nbrs, sigma)
    err = jnp.sum((pred + noise) ** 2, -1) / sigma**2
    mask = batch.atom_mask.astype(err.dtype)
    loss = jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0) / 3.0
    rmse = jnp.sqrt(jnp.sum(jnp.sum((pred + noise) ** 2, -1) * mask) /
                    jnp.maximum(jnp.sum(mask), 1.0))
    return loss, dict(loss=loss, rmse_angstrom=rmse,
                      overflow=nbrs.overflow)

  return loss_fn


def init_params(model: LocalDenoiser, rng: jax.Array, batch: batch_lib.CrystalBatch):
  nbrs = neighbors.fully_connected_graph(batch)
  sigma = jnp.full((batch.num_atom_slots,), model.config.sigma_max)
  return model.init(rng, batch.frac, batch.atom_lattice(), batch.species, nbrs, sigma)


def step_schedule(num_steps: int, first: float = 1.0, last: float = 0.5) -> jax.Array:
  """Healing step sizes, geometric from `first` to `last`, `[num_steps]`."""
  return jnp.geomspace(first, last, num_steps)


def get_healer(model: LocalDenoiser, num_steps: int = 60, tolerance: float = 1e-3,
               first_step: float = 1.0, last_step: float = 0.5,
               sigma_schedule: tuple[float, float] | None = None) -> Callable:
  """`heal(params, frac, lattice, species, nbrs) -> (frac, trajectory, max_disp)`.

  One `lax.scan` of `num_steps` updates x <- x + step_k * d(x). Once the
  largest predicted move falls below `tolerance` A the structure is frozen
  (a mask, so shapes stay static). The graph `nbrs` is built once by the
  caller with a skin beyond the cutoff; the envelope ignores longer edges.
  A noise-conditioned model is given sigma annealed over `sigma_schedule`.

  Returns the final frac `[N, 3]`, the trajectory `[num_steps + 1, N, 3]`
  (fractional, starting with the input) and the largest move per step
  `[num_steps]` (Angstrom).
  """
  steps = step_schedule(num_steps, first_step, last_step)
  lo, hi = sigma_schedule or (model.config.sigma_min, model.config.sigma_max)
  sigmas = jnp.geomspace(hi, lo, num_steps)

  def heal(params, frac, lattice, species, nbrs):
    chex.assert_shape(lattice, (3, 3))
    inv = jnp.linalg.inv(lattice)

    def body(carry, inputs):
      frac, done = carry
      step, sigma = inputs
      disp = model.apply(params, frac, lattice, species, nbrs,
                         jnp.full(frac.shape[:1], sigma))
      largest = jnp.max(jnp.linalg.norm(disp, axis=-1))
      done = done | (largest < tolerance)
      move = jnp.where(done, 0.0, step) * disp
      frac = frac + move @ inv
      return (frac, done), (frac, largest)

    (final, _), (traj, largest) = jax.lax.scan(body, (frac, jnp.array(False)),
                                               (steps, sigmas))
    return final, jnp.concatenate([frac[None], traj], 0), largest

  return heal
