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
