"""Each component's own settings: a small frozen dataclass per registered
process (and, in turn, network, time grid and sampler), with its defaults
and its own `validate`.

  @dataclasses.dataclass(frozen=True)
  class SigmaSettings(settings.Settings):
    sigma_begin: float = 0.005
    sigma_end: float = 0.5

    def validate(self):
      if not 0 < self.sigma_begin < self.sigma_end:
        raise ValueError('sigma_begin must be > 0 and below sigma_end, ...')

A component registers its defaults (an instance); the class is the schema.
`read(defaults, values, where)` builds settings from a stored dict and
`checked(settings, where)` validates them, both raising `errors.ConfigError`
as one line naming the component (`where`) and the field.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

from jaxcrystal import errors


@dataclasses.dataclass(frozen=True)
class Settings:
  """Base of every component's settings (a component with none uses it as is).
  `validate` raises ValueError naming the field; numbers must be finite."""

  def validate(self) -> None:
    pass

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


NONE = Settings()


def checked(settings: Settings, where: str) -> Settings:
  """`settings` if valid; else `errors.ConfigError('{where}: {reason}')`."""
  for field in dataclasses.fields(settings):
    value = getattr(settings, field.name)
    if isinstance(value, float) and not math.isfinite(value):
      raise errors.ConfigError(f'{where}: {field.name} must be a finite number, got {value}')
  try:
    settings.validate()
  except ValueError as err:
    raise errors.ConfigError(f'{where}: {err}') from None
  return settings


def checked_like(settings: Settings, defaults: Settings, where: str) -> Settings:
  """`checked(settings)`, which must be of `defaults`' class (the
  component's own), else `errors.ConfigError` naming `where`."""
  if type(settings) is not type(defaults):
    raise errors.ConfigError(f'{where}: settings must be {type(defaults).__name__}, '
                             f'got {settings!r}')
  return checked(settings, where)


def read(defaults: Settings, values: dict, where: str) -> Settings:
  """Settings of `defaults`' class with `values` (a stored dict) in place;
  unknown fields and values of the wrong type are refused in one line."""
  known = {f.name: f for f in dataclasses.fields(defaults)}
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise errors.ConfigError(
        f'{where}: unknown setting(s) {unknown}; it has {sorted(known) or "none"}')
  typed = {}
  for name, value in values.items():
    default = getattr(defaults, name)
    if isinstance(default, bool) != isinstance(value, bool) or (
        isinstance(default, (int, float)) and not isinstance(value, (int, float))) or (
        isinstance(default, str) and not isinstance(value, str)):
      raise errors.ConfigError(f'{where}: {name} must be like {default!r}, got {value!r}')
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
      if not value.is_integer():
        raise errors.ConfigError(f'{where}: {name} must be an integer, got {value!r}')
      value = int(value)
    typed[name] = float(value) if isinstance(default, float) else value
  return checked(dataclasses.replace(defaults, **typed), where)


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registered component: how to build it and its default settings (an
  instance of its own settings class)."""
  build: Callable
  defaults: Settings


class Registry(dict):
  """Components of one kind by name (processes, networks, condition
  encoders): `{name: Entry}`, with one way to add and to look up."""

  def __init__(self, kind: str):
    super().__init__()
    self.kind = kind

  def register(self, name: str, build: Callable, defaults: Settings = NONE) -> None:
    self.add(name, Entry(build, defaults))

  def add(self, name: str, entry: Entry) -> None:
    """Add an entry (a subclass of `Entry` where the kind needs more, e.g.
    the samplers' model kind and call count)."""
    if name in self:
      raise ValueError(f'{self.kind} {name!r} is already registered')
    self[name] = entry

  def entry(self, name: str) -> Entry:
    """The entry of `name`; `errors.ConfigError` listing the others if none."""
    if name not in self:
      raise errors.ConfigError(f'unknown {self.kind} {name!r}; choose from {sorted(self)}')
    return self[name]
