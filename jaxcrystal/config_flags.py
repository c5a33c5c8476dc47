"""Command-line flags generated from the configuration classes.

A run's configuration is a tree of frozen dataclasses (`TrainConfig` with
its `ModelConfig`, `OptimConfig`, ...) and, inside the model, each chosen
component's own settings class (`CSPNetSettings`, `SigmaSettings`, ...).
This module turns that tree into absl flags, so that a new field in any of
those classes is a flag with no other edit:

  --batch_size=256                 a field of the run itself (flat)
  --task=csp_flow --num_steps=50   fields of the model (flat)
  --optim.learning_rate=2e-3       `OptimConfig` fields
  --loss_weights.types=20          `LossWeights` fields
  --network=cspnet                 the network ('' = the task's)
  --network.hidden=256             a setting of the chosen network
  --coords.process=NAME            a variable's process ('' = the task's)
  --coords.sigma_end=0.4           a setting of that variable's process
  --condition=heat_ref             condition on a data column (repeatable;
  --condition=num_elements:categorical   NAME[:ENCODER], scalar by default)

Help texts come from each class's docstring ("Attributes:" lines), so the
field, its help and its flag live in one place. Component flags exist for
every component registered when the flags are defined; a setting the chosen
component lacks is refused in one line naming the flag and the component.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import typing

from absl import flags

from jaxcrystal import errors
from jaxcrystal.data import properties as properties_lib
from jaxcrystal.generative import conditions
from jaxcrystal.generative import losses
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import networks
from jaxcrystal.generative import processes
from jaxcrystal.generative import tasks
from jaxcrystal.generative import train
from jaxcrystal.training import state as state_lib

_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, str: flags.DEFINE_string}


def field_help(cls) -> dict[str, str]:
  """{field: help} from the "Attributes:" section of `cls`'s docstring
  (Google style: `name: text`, continuation lines indented deeper)."""
  doc = cls.__doc__ or ''
  lines = doc.splitlines()
  helps, current, indent = {}, None, None
  inside = False
  for line in lines:
    if line.strip() == 'Attributes:':
      inside = True
      continue
    if not inside:
      continue
    if not line.strip():
      current = None
      continue
    depth = len(line) - len(line.lstrip())
    match = re.match(r'\s*(\w+)(?: \([^)]*\))?: (.*)', line)
    if match and (indent is None or depth <= indent):
      indent = depth
      current = match.group(1)
      helps[current] = match.group(2).strip()
    elif current is not None and depth > (indent or 0):
      helps[current] += ' ' + line.strip()
    else:
      break
  return helps


def scalar_fields(cls) -> list[tuple[str, type, object]]:
  """(name, type, default) of `cls`'s bool/int/float/str fields."""
  hints = typing.get_type_hints(cls)
  out = []
  for field in dataclasses.fields(cls):
    kind = hints.get(field.name)
    if kind in _DEFINE and field.default is not dataclasses.MISSING:
      out.append((field.name, kind, field.default))
  return out


def _caller_module() -> str:
  """The module that called into this one: the flags are its own (for
  `--help` and `flags_by_module_dict`), as if it had defined them."""
  return sys._getframe(2).f_globals.get('__name__', '__main__')


def define_fields(cls, prefix: str = '', flag_values=flags.FLAGS,
                  module: str | None = None) -> None:
  """One flag per scalar field of dataclass `cls` (`{prefix}{field}`), its
  default the field's, its help the field's docstring line."""
  module = module or _caller_module()
  helps = field_help(cls)
  for name, kind, default in scalar_fields(cls):
    if name not in helps:
      raise ValueError(f'{cls.__name__}.{name} has no line in its docstring\'s '
                       'Attributes: section (it becomes the flag\'s help)')
    _DEFINE[kind](prefix + name, default, helps[name], flag_values=flag_values,
                  module_name=module)


def read_fields(cls, prefix: str = '', base=None, flag_values=flags.FLAGS):
  """`base` (default: `cls()`) with the flags of `define_fields` in place."""
  base = cls() if base is None else base
  values = {name: flag_values[prefix + name].value for name, _, _ in scalar_fields(cls)}
  return dataclasses.replace(base, **values)


@dataclasses.dataclass(frozen=True)
class ComponentFlags:
  """The flags of one component slot: `--{slot}` picks the component and
  `--{slot}.{field}` sets one of its settings (unset flags: None)."""
  slot: str
  choice_flag: str
  fields: tuple[str, ...]

  def choice(self, flag_values=flags.FLAGS) -> str:
    return flag_values[self.choice_flag].value

  def given(self, flag_values=flags.FLAGS) -> dict:
    """{field: value} of the settings flags set on the command line."""
    return {f: flag_values[f'{self.slot}.{f}'].value for f in self.fields
            if flag_values[f'{self.slot}.{f}'].value is not None}

  def named(self, flag_values=flags.FLAGS) -> list[str]:
    """The slot's flags set on the command line, as `--name`."""
    return [f'--{self.choice_flag}'] * bool(self.choice(flag_values)) + [
        f'--{self.slot}.{f}' for f in self.given(flag_values)]


def define_component(slot: str, registry, what: str, choice_flag: str | None = None,
                     flag_values=flags.FLAGS, module: str | None = None) -> ComponentFlags:
  """`--{choice_flag}` (default `--{slot}`): a name from `registry` or ''
  (`what` says what '' means), and `--{slot}.{field}` for every settings
  field of every registered component; each help names the components that
  have it, with their defaults."""
  module = module or _caller_module()
  by_field: dict[str, list] = {}
  for name, entry in sorted(registry.items()):
    helps = field_help(type(entry.defaults))
    for field, kind, _ in scalar_fields(type(entry.defaults)):
      by_field.setdefault(field, []).append(
          (name, kind, getattr(entry.defaults, field), helps.get(field, '')))
  flags.DEFINE_string(choice_flag or slot, '',
                      f"{what}; one of {sorted(registry)}.",
                      flag_values=flag_values, module_name=module)
  for field, owners in sorted(by_field.items()):
    kinds = {kind for _, kind, _, _ in owners}
    if len(kinds) != 1:
      raise ValueError(f'{what} setting {field!r} has different types in '
                       f'{[name for name, *_ in owners]}; give it one type or two names')
    text = next((h for *_, h in owners if h), field)
    defaults = ', '.join(f'{name} {default!r}' for name, _, default, _ in owners)
    _DEFINE[kinds.pop()](f'{slot}.{field}', None,
                         f'{text} (unset: the default of {defaults})',
                         flag_values=flag_values, module_name=module)
  return ComponentFlags(slot, choice_flag or slot, tuple(sorted(by_field)))


def apply_component(flags_: ComponentFlags, apply, flag_values=flags.FLAGS):
  """`apply(name or None, **given)` with the slot's flags; a config error
  is re-raised naming the flags."""
  try:
    return apply(flags_.choice(flag_values) or None, **flags_.given(flag_values))
  except errors.ConfigError as err:
    named = ', '.join(flags_.named(flag_values)) or flags_.slot
    raise errors.ConfigError(f'{named}: {err}') from None


def define_train_config(sampling=lambda: train.TrainConfig().sampling,
                        flag_values=flags.FLAGS, module: str | None = None):
  """The flags of a whole `train.TrainConfig` (the module docstring lists
  them); returns `read() -> TrainConfig`, validated, raising
  `errors.ConfigError` in one line naming the flag or component.
  `sampling()` gives the run's sampler defaults (a script's own flags)."""
  module = module or _caller_module()
  kw = dict(flag_values=flag_values, module=module)
  define_fields(train.TrainConfig, **kw)
  define_fields(model_lib.ModelConfig, **kw)
  define_fields(state_lib.OptimConfig, 'optim.', **kw)
  define_fields(losses.LossWeights, 'loss_weights.', **kw)
  network = define_component('network', networks.NETWORKS,
                             "the network ('' = the task's)", **kw)
  variables = sorted({v for task in tasks.TASKS.values() for v in task.names})
  per_variable = {v: define_component(v, processes.PROCESSES,
                                      f"the process of {v!r} ('' = the task's)",
                                      f'{v}.process', **kw) for v in variables}
  flags.DEFINE_multi_string(
      'condition', [], 'Condition the model on a per-crystal property: '
      'NAME[:ENCODER] (repeatable), NAME a numeric column of the data files or '
      f'one computed from the structure ({", ".join(sorted(properties_lib.DERIVED_PROPERTIES))}), '
      f'ENCODER one of {sorted(conditions.CONDITIONS)} (default scalar: '
      'standardised with the training data\'s mean and std).',
      flag_values=flag_values, module_name=module)
  flags.register_validator('task', lambda v: v in tasks.TASKS,
                           message=f'--task must be one of {sorted(tasks.TASKS)}',
                           flag_values=flag_values)

  def read() -> train.TrainConfig:
    model = read_fields(model_lib.ModelConfig, flag_values=flag_values)
    names = tasks.get_task(model.task).names
    for variable in sorted(set(variables) - set(names)):
      named = per_variable[variable].named(flag_values)
      if named:
        raise errors.ConfigError(f'{", ".join(named)}: task {model.task!r} has no '
                                 f'variable {variable!r}; it has {list(names)}')
    for variable in [n for n in names if n in per_variable]:  # the task's order
      model = apply_component(per_variable[variable], lambda choice, **given: model
                              .with_process(variable, choice, **given), flag_values)
    model = apply_component(network, model.with_network, flag_values)
    for spec in flag_values['condition'].value:
      name, _, encoder = spec.partition(':')
      if not name or encoder and encoder not in conditions.CONDITIONS:
        raise errors.ConfigError(f'--condition={spec}: give NAME or NAME:ENCODER, '
                                 f'ENCODER one of {sorted(conditions.CONDITIONS)}')
      default, settings = properties_lib.DEFAULT_ENCODERS.get(name, ('scalar', {}))
      encoder = encoder or default
      model = model.with_condition(name, encoder, **(settings if encoder == default else {}))
    config = read_fields(train.TrainConfig, flag_values=flag_values, base=train.TrainConfig(
        model=model,
        optim=read_fields(state_lib.OptimConfig, 'optim.', flag_values=flag_values),
        loss_weights=read_fields(losses.LossWeights, 'loss_weights.',
                                 flag_values=flag_values),
        sampling=sampling()))
    config.validate()
    return config
  return read
