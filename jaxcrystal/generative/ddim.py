"""Deterministic sampler of score models (DDIM): fewer steps for checkpoints
trained with DDPM and wrapped-normal noise.

Each step makes one network call and every variable's noise-free update
from t to t_prev on a strided grid (`score_steps.deterministic`): DDIM with
eta = 0 for the lattice and types (Song et al. 2021), and its
variance-exploding form x + sigma_t (sigma_t - sigma_prev) score for
coordinates. No corrector runs. Jump processes (`discrete.py`) take their
own random reverse step, from keys split off the state's. One `lax.scan`.
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import sampling
from jaxcrystal.generative import score_steps


def get_ddim_sampler(model: model_lib.Model, num_steps: int | None = None,
                     trajectory_every: int = 0):
  """`sample(rng, params, template) -> (batch, trajectory, overflow)` in
  `num_steps` deterministic steps (default: the model's T); one network call
  per step. The key only draws the prior."""
  score_steps.check(model)
  grid = model.time.reverse_grid(num_steps)

  def step(params, template, state: sampling.SamplerState, tt):
    t, t_prev = tt
    out, lost = sampling.network_outputs(model, params, template, state.xs, t)
    rng, key = sampling.jump_keys(model, state.rng)
    xs = {name: (p.jump(key(p.stream), state.xs[name], out[name], t, t_prev, template)
                 if p.kind == 'jump' else
                 score_steps.deterministic(p, state.xs[name], out[name], t, t_prev,
                                           template))
          for name, p in model.processes.items()}
    return state.replace(rng=rng, xs=xs, overflow=jnp.maximum(state.overflow, lost))

  return sampling.make_sample(model, step, grid, trajectory_every)
