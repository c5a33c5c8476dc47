"""The wrapped normal distribution on the unit circle [0, 1) and its score.

p(x; sigma) = sum_k N(x + k; 0, sigma^2). Summing k over [-K, K] converges for
sigma <= 1 with K = 10 (terms beyond are below exp(-50)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_IMAGES = 10


def _images(dtype):
  return jnp.arange(-NUM_IMAGES, NUM_IMAGES + 1, dtype=dtype)


def log_density(x: jax.Array, sigma: jax.Array) -> jax.Array:
  """log p(x; sigma) elementwise; `x` and `sigma` broadcast."""
  x = jnp.asarray(x)
  sigma = jnp.asarray(sigma, x.dtype)
  shifted = x[..., None] + _images(x.dtype)
  return (jax.nn.logsumexp(-shifted**2 / (2.0 * sigma[..., None]**2), axis=-1)
          - jnp.log(jnp.sqrt(2.0 * jnp.pi) * sigma))


def score(x: jax.Array, sigma: jax.Array) -> jax.Array:
  """d/dx log p(x; sigma), the wrapped-normal score, elementwise.

  Computed as a softmax-weighted sum over images, stable for tiny sigma.
  """
  x = jnp.asarray(x)
  sigma = jnp.asarray(sigma, x.dtype)
  shifted = x[..., None] + _images(x.dtype)
  s = sigma[..., None]
  weights = jax.nn.softmax(-shifted**2 / (2.0 * s**2), axis=-1)
  return jnp.sum(weights * (-shifted / s**2), axis=-1)


_SIGMAS_PER_CHUNK = 8  # [8, 801, 21] float64 arrays stay in the CPU's cache


def score_norm(sigmas: np.ndarray, num_points: int = 801) -> np.ndarray:
  """E_x[score(x; sigma)^2] for x ~ WN(0, sigma), by quadrature, `[S] -> [S]`.

  The expectation is the normaliser of the coordinate loss (DiffCSP estimates
  it by Monte Carlo; quadrature makes it deterministic). The grid spans one
  period, or +-12 sigma when that is narrower, so it resolves tiny sigma; for
  small sigma the result tends to 1 / sigma^2.
  """
  sigmas = np.asarray(sigmas, np.float64)
  if len(sigmas) > _SIGMAS_PER_CHUNK:  # row by row the same; in cache, 7x faster
    return np.concatenate([score_norm(sigmas[i:i + _SIGMAS_PER_CHUNK], num_points)
                           for i in range(0, len(sigmas), _SIGMAS_PER_CHUNK)])
  half = np.minimum(0.5, 12.0 * sigmas)[:, None]
  grid = np.linspace(-1.0, 1.0, num_points)[None, :] * half       # [S, P]
  k = np.arange(-NUM_IMAGES, NUM_IMAGES + 1)
  s = sigmas[:, None, None]
  shifted = grid[:, :, None] + k                                   # [S, P, K]
  logw = -shifted**2 / (2 * s**2)
  m = logw.max(axis=-1, keepdims=True)
  w = np.exp(logw - m)
  dens = w.sum(-1) * np.exp(m[..., 0])          # unnormalised density
  sc = (w * (-shifted / s**2)).sum(-1) / w.sum(-1)
  return np.trapezoid(dens * sc**2, grid, axis=1) / np.trapezoid(dens, grid, axis=1)
