"""Time grids: how a task's time is drawn in training, shown to the network,
and stepped through by the sampler.

Every process reads t = the grid's end (0) as the data and the grid's start as
the prior. `DiscreteTime` runs integer steps t in {1..T} (DDPM, score models);
`ContinuousTime` runs t in [0, 1] (flow matching), integrated in `num_steps`
equal steps. Both give the sampler `(t, t_prev)` pairs from start to end.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal.generative import schedules


@dataclasses.dataclass(frozen=True)
class DiscreteTime:
  """Integer steps 1..T; index 0 is the clean data."""
  num_steps: int
  dtype = jnp.int32

  def sample(self, rng: jax.Array, num: int) -> jax.Array:
    """Training times `[num]` int32, uniform in {1..T}."""
    return schedules.sample_timesteps(rng, num, self.num_steps)

  def fraction(self, t: jax.Array) -> jax.Array:
    """What the network sees: t / T in (0, 1]."""
    return t.astype(jnp.float32) / self.num_steps

  def reverse_grid(self, num_steps: int | None = None
                   ) -> tuple[jax.Array, jax.Array]:
    """(t, t_prev) `[S]` each. S = T (default): T..1 and T-1..0. Fewer
    steps: S integer times evenly spaced from T down to 0 (rounded), each
    step from one to the next."""
    n = self.num_steps if num_steps is None else num_steps
    if not 1 <= n <= self.num_steps:
      raise ValueError(f'num_steps must be in 1..{self.num_steps} (the model\'s '
                       f'steps), got {n}')
    if n == self.num_steps:
      t = jnp.arange(self.num_steps, 0, -1, dtype=jnp.int32)
      return t, t - 1
    grid = np.round(np.linspace(self.num_steps, 0, n + 1)).astype(np.int32)
    return jnp.asarray(grid[:-1]), jnp.asarray(grid[1:])

  def is_last(self, t_prev: jax.Array) -> jax.Array:
    return t_prev == 0

  def full(self, value, num: int) -> jax.Array:
    return jnp.full((num,), value, self.dtype)

  def validate(self, timesteps: Sequence) -> list:
    """Host check of user-given times; returns the bad ones."""
    return [t for t in timesteps if not (float(t).is_integer() and
                                         1 <= int(t) <= self.num_steps)]


@dataclasses.dataclass(frozen=True)
class ContinuousTime:
  """t in [0, 1] (0: data, 1: prior), sampled in `num_steps` equal steps."""
  num_steps: int
  dtype = jnp.float32

  def sample(self, rng: jax.Array, num: int) -> jax.Array:
    return jax.random.uniform(rng, (num,), jnp.float32)

  def fraction(self, t: jax.Array) -> jax.Array:
    return t.astype(jnp.float32)

  def reverse_grid(self, num_steps: int | None = None
                   ) -> tuple[jax.Array, jax.Array]:
    """(t, t_prev) `[S]` each: S equal steps from 1 to 0 (S = `num_steps`,
    default the model's)."""
    n = self.num_steps if num_steps is None else num_steps
    if n < 1:
      raise ValueError(f'num_steps must be >= 1, got {n}')
    grid = jnp.linspace(1.0, 0.0, n + 1, dtype=jnp.float32)
    return grid[:-1], grid[1:]

  def is_last(self, t_prev: jax.Array) -> jax.Array:
    return t_prev <= 0.0

  def full(self, value, num: int) -> jax.Array:
    return jnp.full((num,), value, self.dtype)

  def validate(self, timesteps: Sequence) -> list:
    return [t for t in timesteps if not 0.0 <= float(t) <= 1.0]


TIME_GRIDS = {'discrete': DiscreteTime, 'continuous': ContinuousTime}
