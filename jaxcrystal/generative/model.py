"""A diffusion model = a network, its forward processes and its graph; losses.

Three tasks:
  csp        crystal structure prediction: composition given; lattice (DDPM)
             and fractional coordinates (wrapped normal) are generated.
  dng        de novo generation: types too (DDPM on one-hot vectors).
  cartesian  positions in a fixed, known cell (VE noise under the minimum
             image), with the E(3)-equivariant `CartesianEGNN`.

`get_loss_fn(spec) -> loss_fn(rng, params, batch) -> (loss, aux)` follows
score_sde: the factory closes over the static parts and returns a pure function.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import processes as forward
from jaxcrystal.generative import networks
from jaxcrystal.geometry import neighbors
from jaxcrystal.generative import schedules

TASKS = ('csp', 'dng', 'cartesian')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything static about a model (hashable; stored with checkpoints)."""
  task: str = 'csp'
  hidden: int = 128
  num_layers: int = 4
  num_freqs: int = 128
  time_dim: int = 256
  num_steps: int = 1000
  beta_schedule: str = 'cosine'
  sigma_begin: float = 0.005     # fractional units (csp, dng)
  sigma_end: float = 0.5
  cart_sigma_begin: float = 0.01  # Angstrom (cartesian)
  cart_sigma_end: float = 1.0
  graph: str = 'fc'              # 'fc' or 'radius'
  cutoff: float = 6.0            # Angstrom, radius graphs and distance basis
  distance_basis: int = 0
  edge_score_head: bool = False  # see networks.CSPNet
  max_image: int = 2
  edge_capacity_per_atom: int = 64
  num_basis: int = 16            # cartesian EGNN radial basis

  def validate(self) -> None:
    if self.task not in TASKS:
      raise ValueError(f'task must be one of {TASKS}, got {self.task!r}')
    if self.graph not in ('fc', 'radius'):
      raise ValueError(f"graph must be 'fc' or 'radius', got {self.graph!r}")
    for name in ('hidden', 'num_layers', 'num_freqs', 'time_dim', 'num_steps'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    if self.task == 'cartesian' and self.graph != 'radius':
      raise ValueError("task 'cartesian' needs graph='radius'")
    if self.edge_score_head and self.distance_basis < 1:
      raise ValueError('edge_score_head needs distance_basis >= 1 (its edge '
                       'weights are functions of the bond length)')


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
  """A model config with its network and forward processes built."""
  config: ModelConfig
  network: nn.Module
  lattice_process: Any
  frac_process: Any
  types_process: Any
  cart_process: Any

  def graph(self, batch: batch_lib.CrystalBatch) -> neighbors.NeighborList:
    """The network's graph of `batch` (built under jit; static capacity)."""
    c = self.config
    if c.graph == 'fc':
      return neighbors.fully_connected_graph(
          batch, nearest_image=c.distance_basis > 0 or c.task == 'cartesian')
    return neighbors.radius_graph(batch, c.cutoff, c.max_image,
                                  c.edge_capacity_per_atom * batch.num_atom_slots)

  def time_fraction(self, t: jax.Array) -> jax.Array:
    return t.astype(jnp.float32) / self.config.num_steps


def build(config: ModelConfig) -> DiffusionSpec:
  """Network and processes for a validated `ModelConfig`."""
  config.validate()
  T = config.num_steps
  if config.task == 'cartesian':
    network = networks.CartesianEGNN(
        hidden=config.hidden, num_layers=config.num_layers,
        num_basis=config.num_basis, cutoff=config.cutoff,
        time_dim=config.time_dim)
  else:
    network = networks.CSPNet(
        hidden=config.hidden, num_layers=config.num_layers,
        num_freqs=config.num_freqs, time_dim=config.time_dim,
        predict_types=config.task == 'dng',
        distance_basis=config.distance_basis, cutoff=config.cutoff,
        edge_score_head=config.edge_score_head)
  return DiffusionSpec(
      config=config, network=network,
      lattice_process=forward.get_process('lattice_ddpm', num_steps=T,
                                          beta_schedule=config.beta_schedule),
      frac_process=forward.get_process('frac_wrapped_normal', num_steps=T,
                                       sigma_begin=config.sigma_begin,
                                       sigma_end=config.sigma_end),
      types_process=forward.get_process('types_ddpm', num_steps=T,
                                        beta_schedule=config.beta_schedule),
      cart_process=forward.get_process('cart_minimum_image', num_steps=T,
                                       sigma_begin=config.cart_sigma_begin,
                                       sigma_end=config.cart_sigma_end))


def apply_network(spec: DiffusionSpec, params, batch: batch_lib.CrystalBatch,
                  t: jax.Array, type_features=None) -> networks.ScoreOutput:
  """Run the network on a (noisy) batch at integer steps `t: [G]`.

  For the cartesian task the EGNN's vectors are returned in `frac_score`'s
  slot (they are Cartesian noise predictions there, in units of sigma).
  """
  nbrs = spec.graph(batch)
  tf = spec.time_fraction(t)
  if spec.config.task == 'cartesian':
    vec = spec.network.apply(params, batch, nbrs, tf)
    n = batch.num_atom_slots
    return networks.ScoreOutput(jnp.zeros_like(batch.lattice), vec,
                                jnp.zeros((n, 1), vec.dtype))
  return spec.network.apply(params, batch, tf, nbrs, type_features)


def init_params(spec: DiffusionSpec, rng: jax.Array,
                batch: batch_lib.CrystalBatch):
  """Initialise parameters on an example batch."""
  t = jnp.ones((batch.num_graph_slots,), jnp.int32)
  nbrs = spec.graph(batch)
  tf = spec.time_fraction(t)
  if spec.config.task == 'cartesian':
    return spec.network.init(rng, batch, nbrs, tf)
  types = None
  if spec.config.task == 'dng':
    types = spec.types_process.one_hot(batch.species)
  return spec.network.init(rng, batch, tf, nbrs, types)


@dataclasses.dataclass(frozen=True)
class LossWeights:
  lattice: float = 1.0
  coords: float = 1.0
  types: float = 1.0


def _masked_mean(sq: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of per-row squared errors `[M, ...]` over rows where mask is True."""
  per_row = jnp.mean(sq.reshape(sq.shape[0], -1), axis=-1)
  return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1)


def get_loss_fn(spec: DiffusionSpec, weights: LossWeights = LossWeights()):
  """Denoising loss of `spec`, masked on padding (jraph's graph/node masks).

  Returns `loss_fn(rng, params, batch) -> (loss, aux)` with aux holding each
  component: lattice (eps MSE), coords (normalised-score MSE or Cartesian
  eps MSE) and types (eps MSE, dng only). Times are uniform in {1..T}.
  """
  loss_at_times = get_loss_at_times_fn(spec, weights)

  def loss_fn(rng, params, batch: batch_lib.CrystalBatch):
    rng_t = jax.random.split(rng, 4)[0]
    t = schedules.sample_timesteps(rng_t, batch.num_graph_slots,
                                   spec.config.num_steps)
    return loss_at_times(rng, params, batch, t)

  return loss_fn


def get_loss_at_times_fn(spec: DiffusionSpec,
                         weights: LossWeights = LossWeights()):
  """The loss of `get_loss_fn` at given diffusion times.

  Returns `loss_at_times(rng, params, batch, t) -> (loss, aux)` with
  `t: [G] int32` steps in {1..T}; with the t that `get_loss_fn` draws from
  the same rng it gives the same result. Used to see at which noise levels a
  model fails (`loss_by_noise_level`).
  """
  task = spec.config.task

  def loss_at_times(rng, params, batch: batch_lib.CrystalBatch, t: jax.Array):
    batch.validate_shapes()
    chex.assert_shape(t, (batch.num_graph_slots,))
    _, rng_l, rng_f, rng_a = jax.random.split(rng, 4)
    t_atom = t[batch.graph_index]
    gmask, amask = batch.graph_mask, batch.atom_mask
    aux = {}
    if task == 'cartesian':
      lattice = batch.atom_lattice()
      cart_t, target = spec.cart_process.noise(rng_f, batch.cart(), t_atom, lattice)
      frac_t = jnp.einsum('ni,nij->nj', cart_t, jnp.linalg.inv(lattice))
      noisy = batch.replace(frac=jnp.where(amask[:, None], frac_t, batch.frac))
      out = apply_network(spec, params, noisy, t)
      aux['coords'] = _masked_mean((out.frac_score - target)**2, amask)
      aux['loss'] = weights.coords * aux['coords']
      return aux['loss'], aux

    lattice_t, eps_l = spec.lattice_process.noise(rng_l, batch.lattice, t)
    frac_t, target_f = spec.frac_process.noise(rng_f, batch.frac, t_atom)
    noisy = batch.replace(
        lattice=jnp.where(gmask[:, None, None], lattice_t, batch.lattice),
        frac=jnp.where(amask[:, None], frac_t, batch.frac))
    types_t = eps_a = None
    if task == 'dng':
      types_t, eps_a = spec.types_process.noise(rng_a, batch.species, t_atom)
    out = apply_network(spec, params, noisy, t, types_t)
    aux['lattice'] = _masked_mean((out.lattice_noise - eps_l)**2, gmask)
    aux['coords'] = _masked_mean((out.frac_score - target_f)**2, amask)
    loss = weights.lattice * aux['lattice'] + weights.coords * aux['coords']
    if task == 'dng':
      aux['types'] = _masked_mean((out.type_logits - eps_a)**2, amask)
      loss = loss + weights.types * aux['types']
    aux['loss'] = loss
    return loss, aux

  return loss_at_times
