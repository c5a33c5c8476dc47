"""Layers and features shared by every network of the library (score networks,
the healing denoiser, graph diffusion): time embeddings, periodic Fourier
features, radial bases with a smooth cutoff, masked segment means.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def sinusoidal_embedding(t: jax.Array, dim: int, scale: float = 1000.0) -> jax.Array:
  """Transformer-style embedding of times `t: [G]` in [0, 1] -> `[G, dim]`."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / max(half - 1, 1))
  args = (scale * t)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def fourier_features(frac_delta: jax.Array, num_freqs: int) -> jax.Array:
  """Periodic features of fractional differences, `[E, 3] -> [E, 6 F]`.

  sin and cos of 2 pi k x for k = 0 .. F-1: integer frequencies make them
  invariant to whole-lattice-vector shifts of either atom.
  """
  k = 2.0 * jnp.pi * jnp.arange(num_freqs, dtype=frac_delta.dtype)
  x = (frac_delta[..., None] * k).reshape(frac_delta.shape[0], -1)
  return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def cosine_envelope(d: jax.Array, cutoff: float) -> jax.Array:
  """1 at d = 0 falling smoothly to 0 at the cutoff (and 0 beyond)."""
  return jnp.where(d < cutoff, 0.5 * (jnp.cos(jnp.pi * d / cutoff) + 1.0), 0.0)


def gaussian_basis(d: jax.Array, num_basis: int, cutoff: float) -> jax.Array:
  """Gaussian radial basis of distances `[E] -> [E, num_basis]`, times a
  smooth cosine envelope so features go to zero at the cutoff."""
  centers = jnp.linspace(0.0, cutoff, num_basis)
  width = cutoff / num_basis
  rbf = jnp.exp(-((d[:, None] - centers[None, :]) / width)**2)
  return rbf * cosine_envelope(d, cutoff)[:, None]


def segment_mean(x: jax.Array, segment_ids: jax.Array, num_segments: int,
                 mask: jax.Array) -> jax.Array:
  """Masked mean of rows of `x [M, D]` per segment -> `[num_segments, D]`."""
  w = mask.astype(x.dtype)
  total = jax.ops.segment_sum(x * w[:, None], segment_ids, num_segments)
  count = jax.ops.segment_sum(w, segment_ids, num_segments)
  return total / jnp.maximum(count, 1.0)[:, None]


def safe_norm(v: jax.Array, eps: float = 1e-12) -> jax.Array:
  """|v| along the last axis with a finite gradient at zero."""
  return jnp.sqrt(jnp.sum(v**2, -1) + eps)
