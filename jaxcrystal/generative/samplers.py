"""Samplers by name: `get_sampler(model, SamplerConfig)`.

  pc        predictor-corrector (`sampling.py`), score models: DiffCSP's
            sampler; 1 + corrector_steps network calls per step.
  ddim      deterministic DDIM (`ddim.py`), score models; 1 call per step.
  euler, heun, midpoint
            ODE integrators (`ode.py`), flow models; S, 2S - 1 and 2S calls
            for S steps.

Every sampler returns `sample(rng, params, template) -> (batch, trajectory,
overflow)`. A new sampler is a factory `(model, config, trajectory_every)
-> sample` and `register_sampler(name, factory, kind, calls)` with
`calls(resolved config) -> network calls per structure`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from jaxcrystal import errors
from jaxcrystal.generative import ddim
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import ode
from jaxcrystal.generative import sampling


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How to sample (stored with a run as its measured defaults).

  Attributes:
    name: a registered sampler; '' picks the model's default (`DEFAULTS`).
    num_steps: time steps; 0 means the model's own `num_steps`.
    step_lr: Langevin step scale of the 'pc' corrector (DiffCSP's step_lr).
    corrector_steps: 'pc' corrector steps per time step.
    anneal_slope: anti-annealing slope of flow samplers (0: off).
  """
  name: str = ''
  num_steps: int = 0
  step_lr: float = 1e-5
  corrector_steps: int = 1
  anneal_slope: float = 0.0

  def resolve(self, model: model_lib.Model) -> 'SamplerConfig':
    """This config with the name and step count filled in for `model`;
    raises `errors.UserError` if the sampler cannot run that model."""
    kind = model_kind(model)
    name = self.name or DEFAULTS[kind]
    if name not in SAMPLERS:
      raise errors.UserError(f'unknown sampler {name!r}; choose from {sorted(SAMPLERS)}')
    entry = SAMPLERS[name]
    if entry.kind != kind:
      fits = sorted(n for n, e in SAMPLERS.items() if e.kind == kind)
      raise errors.UserError(
          f'sampler {name!r} runs {entry.kind} models; this is a {kind} model '
          f'(task {model.config.task!r}): use one of {fits}')
    steps = self.num_steps or model.time.num_steps
    if steps < 1 or (kind == 'score' and steps > model.time.num_steps):
      raise errors.UserError(
          f'sampler steps (--sample_steps) must be in 1..{model.time.num_steps} for '
          f'this model, got {steps}')
    return dataclasses.replace(self, name=name, num_steps=steps)

  def for_calls(self, model: model_lib.Model, calls: int) -> 'SamplerConfig':
    """This sampler with the most steps whose network calls per structure
    are at most `calls`; raises `errors.UserError` if one step costs more."""
    best = None
    for n in range(1, calls + 1):
      c = dataclasses.replace(self, num_steps=n)
      try:
        if c.calls_per_structure(model) <= calls:
          best = c
      except errors.UserError:
        break  # more steps than the model has
    if best is None:
      raise errors.UserError(f'one step of sampler {self.resolve(model).name!r} '
                             f'costs more than {calls} network calls')
    return best.resolve(model)

  def calls_per_structure(self, model: model_lib.Model) -> int:
    """Network calls each structure costs (a batch costs the same)."""
    c = self.resolve(model)
    return SAMPLERS[c.name].calls(c)


@dataclasses.dataclass(frozen=True)
class SamplerEntry:
  factory: Callable     # (model, config, trajectory_every) -> sample
  kind: str             # 'score' or 'flow'
  calls: Callable       # resolved config -> network calls per structure


SAMPLERS: dict[str, SamplerEntry] = {}
DEFAULTS = {'score': 'pc', 'flow': 'euler'}


def register_sampler(name: str, factory: Callable, kind: str,
                     calls: Callable) -> None:
  if name in SAMPLERS:
    raise ValueError(f'sampler {name!r} is already registered')
  SAMPLERS[name] = SamplerEntry(factory, kind, calls)


register_sampler(
    'pc', lambda m, c, k: sampling.get_pc_sampler(m, c.step_lr, c.corrector_steps, k,
                                               c.num_steps),
    'score', lambda c: c.num_steps * (1 + c.corrector_steps))
register_sampler('ddim', lambda m, c, k: ddim.get_ddim_sampler(m, c.num_steps, k),
                 'score', lambda c: c.num_steps)
for _method, _calls in ode.CALLS.items():
  register_sampler(
      _method, lambda m, c, k, _method=_method: ode.get_ode_sampler(
          m, _method, c.num_steps, c.anneal_slope, k),
      'flow', lambda c, _calls=_calls: _calls(c.num_steps))


def model_kind(model: model_lib.Model) -> str:
  """'score' or 'flow': what every process of the model is."""
  kinds = {p.kind for p in model.processes.values()}
  if len(kinds) != 1:
    raise ValueError(f'task {model.config.task!r} mixes process kinds {sorted(kinds)}')
  return kinds.pop()


def get_sampler(model: model_lib.Model, config: SamplerConfig = SamplerConfig(),
                trajectory_every: int = 0):
  """`sample(rng, params, template) -> (batch, trajectory, overflow)` of the
  configured sampler (see the module docstring)."""
  config = config.resolve(model)
  return SAMPLERS[config.name].factory(model, config, trajectory_every)
