"""Reverse-time update rules: pure, elementwise, broadcasting over their inputs.

Processes (`processes.py`) compose these into their predictor and corrector;
each returns `(x_next, mean)` where `mean` is the update without its noise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcrystal.generative import schedules


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


# Where alpha_bar_t is below this (the last ~1 % of a cosine schedule, down
# to 2.4e-9 at T), x0_hat divides the network's error in eps by sqrt(ab_t):
# a stride from T to t_prev then multiplies it by sqrt(ab_prev / ab_T), up
# to thousands, and few-step lattices came out 30 times too large. There the
# state is noise to within sqrt(1e-4) of the data's scale, so x0_hat is
# taken with ab_t floored at this value.
X0_ALPHA_BAR_FLOOR = 1e-4


def ddim_step(rng, x, eps_hat, t, t_prev, schedule: schedules.BetaSchedule,
              eta: float):
  """DDIM step x_t -> x_{t_prev} for any t_prev < t (Song et al. 2021, eq. 12).

  x0_hat = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t);
  x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s^2) eps_hat + s z, with
  s = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev).
  eta = 0 is deterministic; eta = 1 is the ancestral step over the stride
  (DDPM's posterior when t_prev = t - 1; x0_hat uses ab_t floored at
  `X0_ALPHA_BAR_FLOOR`). `t`, `t_prev` broadcast against
  x's leading axis. `rng` may be None when eta == 0.
  """
  shape = (-1,) + (1,) * (x.ndim - 1)
  ab = schedule.alpha_bars[t].reshape(shape)
  ab_prev = schedule.alpha_bars[t_prev].reshape(shape)
  s = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
  x0_hat = (x - jnp.sqrt(1.0 - ab) * eps_hat) / jnp.sqrt(jnp.maximum(ab, X0_ALPHA_BAR_FLOOR))
  mean = (jnp.sqrt(ab_prev) * x0_hat
          + jnp.sqrt(jnp.maximum(1.0 - ab_prev - s**2, 0.0)) * eps_hat)
  if rng is None:
    if eta != 0.0:
      raise ValueError('ddim_step needs an rng when eta > 0')
    return mean, mean
  return mean + s * jax.random.normal(rng, x.shape, x.dtype), mean


def ve_ddim_step(x, score, sigma, sigma_prev):
  """Deterministic VE step from sigma to sigma_prev (DDIM for variance-
  exploding noise): with eps_hat = -sigma score and x0_hat = x + sigma^2
  score, x_prev = x0_hat + sigma_prev eps_hat = x + sigma (sigma -
  sigma_prev) score. Broadcasting."""
  return x + sigma * (sigma - sigma_prev) * score
