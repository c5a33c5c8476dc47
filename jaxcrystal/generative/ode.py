"""ODE integrators of flow-matching models: Euler, Heun and midpoint, each
one `lax.scan` over equal steps from t = 1 (prior) to 0 (data).

The network's output for each variable becomes a velocity
(`process.velocity`) and moves the state from t to t_prev
(`process.advance`, which wraps coordinates on the torus and follows a
process's own clock, e.g. a lattice at t^time_power). Anti-annealing
(FlowMM's inference trick) multiplies the velocity of the processes marked
`anneal` (coordinates) by 1 + slope (1 - t): late steps move further toward
the data, which sharpens positions when few steps are taken.

Network calls: euler 1 per step; midpoint 2 per step; heun 2 per step
except the last, an Euler step (as in Karras et al. 2022): its second
evaluation would be at t = 0, where the velocity of a sharp data point is
0 / 0.

Jump processes (`discrete.py`, e.g. masked types) take their own random
reverse step from t to t_prev with the step's first network output, after
the integrator has moved the other variables (they stay put in between).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import sampling

# Network calls per structure of `num_steps` steps.
CALLS = {'euler': lambda n: n, 'heun': lambda n: 2 * n - 1, 'midpoint': lambda n: 2 * n}


def get_ode_sampler(model: model_lib.Model, method: str = 'euler',
                    num_steps: int | None = None, anneal_slope: float = 0.0,
                    trajectory_every: int = 0):
  """`sample(rng, params, template) -> (batch, trajectory, overflow)`.

  Args:
    model: a flow model (every process has `velocity` and `advance`).
    method: 'euler', 'heun' or 'midpoint'.
    num_steps: integration steps S (default: the model's `num_steps`).
    anneal_slope: s >= 0 of the anti-annealing factor 1 + s (1 - t).
    trajectory_every: keep the states every k steps (see `sampling.py`).
  The key only draws the prior.
  """
  if method not in CALLS:
    raise ValueError(f'method must be one of {sorted(CALLS)}, got {method!r}')
  if anneal_slope < 0:
    raise ValueError(f'anneal_slope must be >= 0, got {anneal_slope}')
  grid = model.time.reverse_grid(num_steps)
  flowing = {n: p for n, p in model.processes.items() if p.kind != 'jump'}
  jumping = {n: p for n, p in model.processes.items() if p.kind == 'jump'}

  def velocities(params, template, xs, t):
    """(velocities of the flowing variables, overflow, the network's output)."""
    out, lost = sampling.network_outputs(model, params, template, xs, t)
    factor = 1.0 + anneal_slope * (1.0 - t)
    us = {n: p.velocity(out[n], template) * (factor if p.anneal else 1.0)
          for n, p in flowing.items()}
    return us, lost, out

  def advance(template, xs, us, t, t_to):
    return {n: (p.advance(xs[n], us[n], t, t_to, template) if n in flowing else xs[n])
            for n, p in model.processes.items()}

  def step(params, template, state: sampling.SamplerState, tt):
    t, t_prev = tt
    h = t - t_prev
    xs = state.xs
    u1, lost, out = velocities(params, template, xs, t)
    if method == 'euler':
      new = advance(template, xs, u1, t, t_prev)
    elif method == 'heun':
      def second_order(_):
        u2, lost2, _ = velocities(params, template, advance(template, xs, u1, t, t_prev),
                                  t_prev)
        return (advance(template, xs, jax.tree.map(lambda a, b: 0.5 * (a + b), u1, u2),
                        t, t_prev), jnp.maximum(lost, lost2))
      new, lost = jax.lax.cond(model.time.is_last(t_prev),
                               lambda _: (advance(template, xs, u1, t, t_prev), lost),
                               second_order, None)
    else:  # midpoint
      u2, lost2, _ = velocities(params, template, advance(template, xs, u1, t, t - 0.5 * h),
                             t - 0.5 * h)
      new = advance(template, xs, u2, t, t_prev)
      lost = jnp.maximum(lost, lost2)
    rng, key = sampling.jump_keys(model, state.rng)
    for n, p in jumping.items():
      new[n] = p.jump(key(p.stream), xs[n], out[n], t, t_prev, template)
    return state.replace(rng=rng, xs=new, overflow=jnp.maximum(state.overflow, lost))

  return sampling.make_sample(model, step, grid, trajectory_every)
