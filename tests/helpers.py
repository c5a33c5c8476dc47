"""Small shared test helpers."""
import numpy as np


def rattled(structures, sigma, seed=0):
  """Copies of `structures` with Gaussian noise of `sigma` A on every position."""
  rng = np.random.default_rng(seed)
  out = []
  for a in structures:
    b = a.copy()
    b.positions += rng.normal(0.0, sigma, b.positions.shape)
    out.append(b)
  return out
