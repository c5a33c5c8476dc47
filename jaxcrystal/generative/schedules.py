"""Noise schedules: discrete beta schedules (linear, cosine, sigmoid) with their
continuous-time alpha-bar, and the exponential sigma schedule of fractional
coordinates.

Indexing follows DiffCSP: arrays have length T + 1 and index 0 is the clean
data (beta_0 = 0, alpha_bar_0 = 1, sigma_0 = 0); steps run t = 1 .. T.
"""
from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal.generative import wrapped_normal


# ----------------------------------------------------------------------------
# Continuous-time alpha-bar(t), t in [0, 1].


def linear_alpha_bar(t, beta_start: float = 1e-4, beta_end: float = 0.02,
                     num_steps: int = 1000):
  """alpha_bar of DDPM's linear schedule in continuous time (the VP SDE with
  beta(t) = T * (beta_start + t (beta_end - beta_start)))."""
  integral = num_steps * (beta_start * t + 0.5 * (beta_end - beta_start) * t**2)
  return jnp.exp(-integral)


def cosine_alpha_bar(t, s: float = 0.008):
  """Nichol & Dhariwal (2021): cos^2(pi/2 (t + s) / (1 + s)), normalised to 1 at 0."""
  f = lambda u: jnp.cos((u + s) / (1.0 + s) * math.pi / 2.0)**2
  return f(t) / f(0.0)


def sigmoid_alpha_bar(t, start: float = -3.0, end: float = 3.0, tau: float = 1.0):
  """Sigmoid schedule (Chen 2023; Jabri et al. 2023), 1 at t = 0 and 0 at t = 1."""
  v_start = jax.nn.sigmoid(start / tau)
  v_end = jax.nn.sigmoid(end / tau)
  return (v_end - jax.nn.sigmoid((t * (end - start) + start) / tau)) / (
      v_end - v_start)


ALPHA_BAR_FNS = {
    'linear': linear_alpha_bar,
    'cosine': cosine_alpha_bar,
    'sigmoid': sigmoid_alpha_bar,
}


@flax.struct.dataclass
class BetaSchedule:
  """Discrete DDPM schedule, arrays of length T + 1 (index 0 = clean).

  Attributes:
    betas: beta_t.
    alphas: 1 - beta_t.
    alpha_bars: prod_{s <= t} alpha_s.
    posterior_variance: variance of q(x_{t-1} | x_t, x_0)
      = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) (0 at t = 0, 1).
    name: schedule name (static).
    time_power: p of the warped time u^p at which the schedule is read
      (static; 1: as named).
  """
  betas: jax.Array
  alphas: jax.Array
  alpha_bars: jax.Array
  posterior_variance: jax.Array
  name: str = flax.struct.field(pytree_node=False, default='cosine')
  time_power: float = flax.struct.field(pytree_node=False, default=1.0)

  @property
  def num_steps(self) -> int:
    return self.betas.shape[0] - 1

  def snr(self) -> jax.Array:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar), `[T + 1]` (inf at 0)."""
    return self.alpha_bars / (1.0 - self.alpha_bars)

  def alpha_bar_continuous(self, t: jax.Array) -> jax.Array:
    """alpha_bar at continuous time t in [0, 1] (closed form of this schedule)."""
    return ALPHA_BAR_FNS[self.name](t**self.time_power)


TIME_POWER_RANGE = (0.25, 8.0)


def check_time_power(time_power: float) -> None:
  """ValueError unless `time_power` (a process's clock t -> t^p, the
  `time_power` setting of DDPM and lattice-flow processes) is in
  `TIME_POWER_RANGE`."""
  lo, hi = TIME_POWER_RANGE
  if not lo <= time_power <= hi:
    raise ValueError(f'time_power must be in [{lo:g}, {hi:g}], got {time_power}')


def make_beta_schedule(name: str, num_steps: int = 1000,
                       max_beta: float = 0.999, time_power: float = 1.0) -> BetaSchedule:
  """Build a discrete schedule by name: 'linear', 'cosine' or 'sigmoid'.

  Linear uses DDPM's betas linspace(1e-4, 0.02); cosine and sigmoid take
  beta_t = 1 - alpha_bar(u_t) / alpha_bar(u_{t-1}) with u_t = (t/T)^time_power,
  clipped to `max_beta`. A time_power above 1 keeps the variable cleaner at
  small t and still reaches the prior at T: a lattice that is nearly fixed
  while the atoms' last, small noise is removed (issue 33: the lattice's
  noise hid the atoms' from the network).
  """
  check_time_power(time_power)
  if name == 'linear' and time_power != 1.0:
    raise ValueError("time_power applies to the 'cosine' and 'sigmoid' schedules, "
                     "not 'linear'")
  if name not in ALPHA_BAR_FNS:
    raise ValueError(f'unknown beta schedule {name!r}; choose from '
                     f'{sorted(ALPHA_BAR_FNS)}')
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}')
  if name == 'linear':
    scale = 1000.0 / num_steps  # keeps the total noise fixed as T changes
    betas = np.linspace(1e-4 * scale, 0.02 * scale, num_steps)
  else:
    u = np.linspace(0.0, 1.0, num_steps + 1)**time_power
    ab = np.asarray(ALPHA_BAR_FNS[name](u), np.float64)
    betas = np.clip(1.0 - ab[1:] / ab[:-1], 1e-8, max_beta)
  betas = np.concatenate([[0.0], betas])
  alphas = 1.0 - betas
  alpha_bars = np.cumprod(alphas)
  prev = np.concatenate([[1.0], alpha_bars[:-1]])
  post = np.where(np.arange(num_steps + 1) >= 1,
                  betas * (1.0 - prev) / np.maximum(1.0 - alpha_bars, 1e-12), 0.0)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return BetaSchedule(f32(betas), f32(alphas), f32(alpha_bars), f32(post), name,
                      float(time_power))


@flax.struct.dataclass
class SigmaSchedule:
  """Exponential noise scales of a variance-exploding process, `[T + 1]`.

  Attributes:
    sigmas: sigma_t, geometric from sigma_begin (t = 1) to sigma_end (t = T);
      sigma_0 = 0.
    score_norms: E[|score|^2] per coordinate of the wrapped normal at each
      sigma (1 at t = 0), the per-time loss normalisation DiffCSP uses,
      computed here by quadrature instead of Monte Carlo.
  """
  sigmas: jax.Array
  score_norms: jax.Array

  @property
  def num_steps(self) -> int:
    return self.sigmas.shape[0] - 1


@functools.lru_cache(maxsize=32)
def make_sigma_schedule(num_steps: int = 1000, sigma_begin: float = 0.005,
                        sigma_end: float = 0.5,
                        wrapped: bool = True) -> SigmaSchedule:
  """Geometric sigma schedule; with `wrapped`, the score norms of the wrapped
  normal on the unit torus, otherwise of the plain normal (1 / sigma^2)."""
  if not 0 < sigma_begin < sigma_end:
    raise ValueError(f'need 0 < sigma_begin < sigma_end, got {sigma_begin}, '
                     f'{sigma_end}')
  sig = np.exp(np.linspace(np.log(sigma_begin), np.log(sigma_end), num_steps))
  if wrapped:
    norms = np.asarray(wrapped_normal.score_norm(sig))
  else:
    norms = 1.0 / sig**2
  sigmas = jnp.asarray(np.concatenate([[0.0], sig]), jnp.float32)
  score_norms = jnp.asarray(np.concatenate([[1.0], norms]), jnp.float32)
  return SigmaSchedule(sigmas, score_norms)


def sample_timesteps(rng: jax.Array, num_graphs: int, num_steps: int) -> jax.Array:
  """Uniform training times t in {1, ..., T}, `[num_graphs]` int32."""
  return jax.random.randint(rng, (num_graphs,), 1, num_steps + 1)
