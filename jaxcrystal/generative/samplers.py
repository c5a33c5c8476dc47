"""Samplers by name: `get_sampler(model, SamplerConfig)`.

  pc        predictor-corrector (`sampling.py`), score models: DiffCSP's
            sampler; 1 + corrector_steps network calls per step
            (settings `PCSettings`: step_lr, corrector_steps).
  ddim      deterministic DDIM (`ddim.py`), score models; 1 call per step.
  euler, heun, midpoint
            ODE integrators (`ode.py`), flow models; S, 2S - 1 and 2S calls
            for S steps (settings `ODESettings`: anneal_slope).

Every sampler returns `sample(rng, params, template) -> (batch, trajectory,
overflow)`. A new sampler is a factory `(model, num_steps, settings,
trajectory_every) -> sample`, its own settings class, and
`register_sampler(name, factory, kind, calls, defaults)` with
`calls(num_steps, settings) -> network calls per structure`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from jaxcrystal import errors
from jaxcrystal.generative import ddim
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import ode
from jaxcrystal.generative import sampling
from jaxcrystal.generative import settings as settings_lib

# Before the samplers owned their settings, a run stored them flat, with
# these defaults (the samplers' own now).
_LEGACY_FLAT = {'step_lr': 1e-5, 'corrector_steps': 1, 'anneal_slope': 0.0}


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How to sample (stored with a run as its measured defaults).

  Attributes:
    name: a registered sampler; '' picks the model's default (`DEFAULTS`).
    num_steps: time steps; 0 means the model's own `num_steps`.
    settings: `((field, value), ...)`: the sampler's own settings that
      differ from its defaults (`PCSettings`, `ODESettings`, ...); a field
      the sampler does not have is refused when the config is resolved.
  """
  name: str = ''
  num_steps: int = 0
  settings: tuple = ()

  def with_settings(self, **values) -> 'SamplerConfig':
    """This config with some of the sampler's settings changed."""
    merged = dict(self.settings, **values)
    return dataclasses.replace(self, settings=tuple(sorted(merged.items())))

  def sampler_settings(self, model: model_lib.Model) -> settings_lib.Settings:
    """The resolved sampler's settings: its defaults with `settings` in
    place, checked (`errors.ConfigError` naming the sampler and field)."""
    return self._resolved(model)[1]

  def resolve(self, model: model_lib.Model) -> 'SamplerConfig':
    """This config with the name and step count filled in for `model`;
    raises `errors.UserError` if the sampler cannot run that model or
    does not have one of `settings`."""
    return self._resolved(model)[0]

  def _resolved(self, model: model_lib.Model
                ) -> tuple['SamplerConfig', settings_lib.Settings]:
    kind = model_kind(model)
    name = self.name or DEFAULTS[kind]
    entry = SAMPLERS.entry(name)
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
    settings = settings_lib.read(entry.defaults, dict(self.settings), f'sampler {name!r}')
    return dataclasses.replace(self, name=name, num_steps=steps), settings

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
    c, settings = self._resolved(model)
    return SAMPLERS[c.name].calls(c.num_steps, settings)

  def to_dict(self) -> dict:
    return dict(name=self.name, num_steps=self.num_steps, settings=dict(self.settings))

  @classmethod
  def from_dict(cls, d: dict) -> 'SamplerConfig':
    """Inverse of `to_dict`; also reads the flat form runs stored before the
    samplers owned their settings (`step_lr`, `corrector_steps`,
    `anneal_slope` beside `name`: values at their old defaults dropped)."""
    d = dict(d)
    settings = dict(d.pop('settings', {}) or {})
    for field, default in _LEGACY_FLAT.items():
      if field in d:
        value = d.pop(field)
        if value != default:
          settings[field] = value
    unknown = sorted(set(d) - {'name', 'num_steps'})
    if unknown:
      raise errors.ConfigError(f'sampling: unknown setting(s) {unknown}')
    return cls(**d).with_settings(**settings)


@dataclasses.dataclass(frozen=True)
class PCSettings(settings_lib.Settings):
  """The predictor-corrector sampler's settings.

  Attributes:
    step_lr: Langevin step scale of the corrector (DiffCSP's step_lr).
    corrector_steps: corrector steps per time step (0: predictor only).
  """
  step_lr: float = 1e-5
  corrector_steps: int = 1

  def validate(self):
    if self.step_lr < 0 or self.corrector_steps < 0:
      raise ValueError(f'step_lr and corrector_steps must be >= 0, got '
                       f'{self.step_lr} and {self.corrector_steps}')


@dataclasses.dataclass(frozen=True)
class ODESettings(settings_lib.Settings):
  """The flow integrators' settings.

  Attributes:
    anneal_slope: anti-annealing slope of the coordinate velocity,
      1 + s (1 - t) (0: off).
  """
  anneal_slope: float = 0.0

  def validate(self):
    if self.anneal_slope < 0:
      raise ValueError(f'anneal_slope must be >= 0, got {self.anneal_slope}')


@dataclasses.dataclass(frozen=True)
class SamplerEntry(settings_lib.Entry):
  """A registered sampler: `build(model, num_steps, settings,
  trajectory_every) -> sample`, its default settings, the model kind it
  runs ('score' or 'flow') and `calls(num_steps, settings)`."""
  kind: str = 'score'
  calls: Callable = None


SAMPLERS = settings_lib.Registry('sampler')
DEFAULTS = {'score': 'pc', 'flow': 'euler'}


def register_sampler(name: str, factory: Callable, kind: str, calls: Callable,
                     defaults: settings_lib.Settings = settings_lib.NONE) -> None:
  SAMPLERS.add(name, SamplerEntry(factory, defaults, kind, calls))


register_sampler(
    'pc', lambda m, n, s, k: sampling.get_pc_sampler(m, s.step_lr, s.corrector_steps, k, n),
    'score', lambda n, s: n * (1 + s.corrector_steps), PCSettings())
register_sampler('ddim', lambda m, n, s, k: ddim.get_ddim_sampler(m, n, k),
                 'score', lambda n, s: n)
for _method, _calls in ode.CALLS.items():
  register_sampler(
      _method, lambda m, n, s, k, _method=_method: ode.get_ode_sampler(
          m, _method, n, s.anneal_slope, k),
      'flow', lambda n, s, _calls=_calls: _calls(n), ODESettings())


def model_kind(model: model_lib.Model) -> str:
  """'score' or 'flow': what every process of the model is, jump processes
  (`discrete.py`, which every sampler runs) aside."""
  kinds = {p.kind for p in model.processes.values() if p.kind != 'jump'}
  if len(kinds) != 1:
    raise ValueError(f'task {model.config.task!r} mixes process kinds {sorted(kinds)}')
  return kinds.pop()


def get_sampler(model: model_lib.Model, config: SamplerConfig = SamplerConfig(),
                trajectory_every: int = 0):
  """`sample(rng, params, template) -> (batch, trajectory, overflow)` of the
  configured sampler (see the module docstring)."""
  resolved, settings = config._resolved(model)
  return SAMPLERS[resolved.name].build(model, resolved.num_steps, settings,
                                       trajectory_every)
