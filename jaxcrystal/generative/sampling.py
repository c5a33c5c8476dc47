"""Reverse-time samplers: composable predictor and corrector steps, one scan.

Lattice and types use the ancestral DDPM predictor; fractional coordinates use
predictor-corrector (a Langevin corrector, then the reverse VE predictor on the
wrapped normal), as DiffCSP does: two network calls per step. The sampler is a
single `lax.scan` over t = T .. 1 on a whole padded batch (a nested scan when a
trajectory is recorded every k steps); the same key gives the same structures.
"""
from __future__ import annotations

from typing import Sequence

import ase
import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import model as diffusion
from jaxcrystal.geometry import lattice as lattice_lib
from jaxcrystal.geometry import pbc
from jaxcrystal.generative import schedules


# ----------------------------------------------------------------------------
# Predictors and correctors (pure, elementwise over their inputs).


def ddpm_predictor(rng, x, eps_hat, t, schedule: schedules.BetaSchedule):
  """Ancestral DDPM step x_t -> x_{t-1}; `t` broadcasts against x's leading axis.

  x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps_hat) / sqrt(alpha_t) + sigma_t z,
  with sigma_t^2 the posterior variance (zero at t = 1).
  """
  shape = (-1,) + (1,) * (x.ndim - 1)
  beta = schedule.betas[t].reshape(shape)
  alpha = schedule.alphas[t].reshape(shape)
  ab = schedule.alpha_bars[t].reshape(shape)
  std = jnp.sqrt(schedule.posterior_variance[t]).reshape(shape)
  mean = (x - beta / jnp.sqrt(1.0 - ab) * eps_hat) / jnp.sqrt(alpha)
  return mean + std * jax.random.normal(rng, x.shape, x.dtype), mean


def ve_predictor(rng, x, score, sigma, sigma_prev):
  """Reverse variance-exploding step from sigma to sigma_prev (broadcasting).

  x <- x + (sigma^2 - sigma_prev^2) score + sqrt(sigma_prev^2 (sigma^2 -
  sigma_prev^2) / sigma^2) z.
  """
  step = sigma**2 - sigma_prev**2
  std = jnp.sqrt(sigma_prev**2 * step / jnp.maximum(sigma**2, 1e-20))
  mean = x + step * score
  return mean + std * jax.random.normal(rng, x.shape, x.dtype), mean


def langevin_corrector(rng, x, score, sigma, sigma_min, step_lr, add_noise):
  """One Langevin step with DiffCSP's step size step_lr (sigma / sigma_min)^2.

  `add_noise` (0 or 1, broadcasting) switches the noise off at the last step.
  """
  step = step_lr * (sigma / sigma_min)**2
  mean = x + step * score
  noise = jnp.sqrt(2.0 * step) * jax.random.normal(rng, x.shape, x.dtype)
  return mean + add_noise * noise, mean


# ----------------------------------------------------------------------------
# The sampler.


@flax.struct.dataclass
class SamplerState:
  """Carry of the reverse scan: the key and the current noisy sample."""
  rng: jax.Array
  lattice: jax.Array   # [G, 3, 3]
  frac: jax.Array      # [N, 3]
  types: jax.Array     # [N, K] noisy one-hot (dng) or [N, 1] unused


def get_sampler(spec: diffusion.DiffusionSpec, step_lr: float = 1e-5,
                corrector_steps: int = 1, trajectory_every: int = 0):
  """Build `sample(rng, params, template) -> (batch, trajectory)`.

  Args:
    spec: the model.
    step_lr: Langevin step scale of the coordinate corrector.
    corrector_steps: Langevin corrector steps per noise level (0: predictor
      only; DiffCSP uses 1). Each costs one network call.
    trajectory_every: if k > 0, also return the state every k steps
      (T must be divisible by k); trajectory arrays are `[T / k, ...]`.

  The template is a `CrystalBatch` fixing atom counts and masks (and species
  for csp/cartesian; the lattice too for cartesian). `batch` is the final
  sample with species from argmax of the generated types in dng.
  """
  config = spec.config
  T = config.num_steps
  task = config.task
  if corrector_steps < 0:
    raise ValueError(f'corrector_steps must be >= 0, got {corrector_steps}')
  if trajectory_every and T % trajectory_every:
    raise ValueError(f'num_steps {T} is not divisible by trajectory_every '
                     f'{trajectory_every}')
  lat_sched = spec.lattice_process.schedule
  if task == 'cartesian':
    sig_sched = spec.cart_process.schedule
  else:
    sig_sched = spec.frac_process.schedule
  sigma_min = sig_sched.sigmas[1]

  def as_batch(template, state):
    if task == 'cartesian':
      frac = state.frac
      return template.replace(frac=frac)
    species = template.species
    if task == 'dng':
      species = jnp.where(template.atom_mask,
                          jnp.argmax(state.types, -1).astype(jnp.int32) + 1, 0)
    lattice = jnp.where(template.graph_mask[:, None, None], state.lattice,
                        template.lattice)
    return template.replace(lattice=lattice, frac=state.frac, species=species)

  def coord_score(params, template, state, t_graph, t_atom):
    """Network call -> (score for coordinates, lattice eps, type eps)."""
    batch = as_batch(template, state)
    types = state.types if task == 'dng' else None
    out = diffusion.apply_network(spec, params, batch, t_graph, types)
    if task == 'cartesian':
      sigma = sig_sched.sigmas[t_atom][:, None]
      return -out.frac_score / sigma, out.lattice_noise, out.type_logits
    score = spec.frac_process.score_from_prediction(out.frac_score, t_atom)
    return score, out.lattice_noise, out.type_logits

  def move_coords(template, state, new):
    """Apply an update of the coordinates (fractional, or Cartesian for the
    cartesian task), wrapped into the cell; padding atoms stay put."""
    if task == 'cartesian':
      lattice = template.atom_lattice()
      frac = jnp.einsum('ni,nij->nj', new, jnp.linalg.inv(lattice))
    else:
      frac = new
    frac = pbc.wrap_frac(frac)
    return jnp.where(template.atom_mask[:, None], frac, template.frac)

  def coords_of(template, state):
    if task == 'cartesian':
      return jnp.einsum('ni,nij->nj', state.frac, template.atom_lattice())
    return state.frac

  def step(params, template, state: SamplerState, t):
    rng, r_c, r_x, r_l, r_a = jax.random.split(state.rng, 5)
    g, n = template.num_graph_slots, template.num_atom_slots
    t_graph = jnp.full((g,), t, jnp.int32)
    t_atom = jnp.full((n,), t, jnp.int32)
    sigma = sig_sched.sigmas[t]
    sigma_prev = sig_sched.sigmas[t - 1]
    def correct(state, rng_k):
      score, _, _ = coord_score(params, template, state, t_graph, t_atom)
      x, _ = langevin_corrector(rng_k, coords_of(template, state), score, sigma,
                                sigma_min, step_lr, (t > 1).astype(score.dtype))
      return state.replace(frac=move_coords(template, state, x)), None
    if corrector_steps:
      state, _ = jax.lax.scan(correct, state, jax.random.split(r_c, corrector_steps))
    score, eps_l, eps_a = coord_score(params, template, state, t_graph, t_atom)
    x, _ = ve_predictor(r_x, coords_of(template, state), score, sigma, sigma_prev)
    state = state.replace(frac=move_coords(template, state, x))
    if task != 'cartesian':
      lattice, _ = ddpm_predictor(r_l, state.lattice, eps_l, t_graph, lat_sched)
      state = state.replace(lattice=lattice)
    if task == 'dng':
      types, _ = ddpm_predictor(r_a, state.types, eps_a, t_atom,
                                spec.types_process.schedule)
      state = state.replace(types=types)
    return state.replace(rng=rng)

  def initial_state(rng, template):
    r_l, r_f, r_a, rng = jax.random.split(rng, 4)
    g, n = template.num_graph_slots, template.num_atom_slots
    dtype = template.frac.dtype
    frac = jax.random.uniform(r_f, (n, 3), dtype)
    if task == 'cartesian':
      lattice = template.lattice
    else:
      lattice = jax.random.normal(r_l, (g, 3, 3), dtype)
    if task == 'dng':
      types = jax.random.normal(r_a, (n, spec.types_process.num_classes), dtype)
    else:
      types = jnp.zeros((n, 1), dtype)
    frac = jnp.where(template.atom_mask[:, None], frac, template.frac)
    return SamplerState(rng, lattice, frac, types)

  def sample(rng, params, template: batch_lib.CrystalBatch):
    template.validate_shapes()
    state = initial_state(rng, template)
    times = jnp.arange(T, 0, -1, dtype=jnp.int32)
    body = lambda s, t: (step(params, template, s, t), None)
    if trajectory_every:
      chunks = times.reshape(-1, trajectory_every)

      def outer(s, ts):
        s, _ = jax.lax.scan(body, s, ts)
        return s, (s.lattice, s.frac, s.types)
      state, traj = jax.lax.scan(outer, state, chunks)
    else:
      state, _ = jax.lax.scan(body, state, times)
      traj = None
    final = as_batch(template, state)
    if task != 'cartesian':
      lattice, frac = lattice_lib.make_right_handed(final.lattice, final.frac,
                                                    final.graph_index)
      final = final.replace(lattice=lattice, frac=frac)
    return final, traj

  return sample


# ----------------------------------------------------------------------------
# Templates: what to sample.


def template_from_compositions(compositions: Sequence[Sequence[int]],
                               budget: batch_lib.Budget | None = None,
                               lattices: Sequence[np.ndarray] | None = None
                               ) -> batch_lib.CrystalBatch:
  """A batch fixing species (atomic numbers per crystal) and atom counts.

  Lattices default to identity (they are generated); pass them for the
  cartesian task, where the cell is given.
  """
  atoms = []
  for k, species in enumerate(compositions):
    cell = np.eye(3) if lattices is None else np.asarray(lattices[k])
    atoms.append(ase.Atoms(numbers=list(species), cell=cell, pbc=True,
                           scaled_positions=np.zeros((len(species), 3))))
  return batch_lib.batch_from_atoms(atoms, budget)


def sample_atom_counts(rng: np.random.Generator, train_counts: Sequence[int],
                       num: int) -> np.ndarray:
  """Atom counts drawn from the empirical training distribution (de novo)."""
  return rng.choice(np.asarray(train_counts), size=num, replace=True)


def split_into_batches(items: Sequence, batch_size: int) -> list[Sequence]:
  chex.assert_scalar_positive(batch_size)
  return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
