"""A generative model: a task's variables with their processes, a network from
the registry, a time grid and the graph the network runs on.

`build(ModelConfig) -> Model`. The loss (`losses.py`) and the sampler
(`sampling.py`) loop over `model.processes`; nothing here or there asks
which task it is (`tasks.py` holds the table).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import conditions as conditions_lib
from jaxcrystal.generative import discrete  # noqa: F401  (registers the jump processes)
from jaxcrystal.generative import flow  # noqa: F401  (registers the flow processes)
from jaxcrystal.generative import networks
from jaxcrystal.generative import processes as processes_lib
from jaxcrystal.generative import settings as settings_lib
from jaxcrystal.generative import tasks
from jaxcrystal.generative import times as times_lib
from jaxcrystal.geometry import neighbors


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything static about a model (hashable; stored with checkpoints).

  `task` names a preset (`tasks.py`): its variables, each with a process,
  a network and a time grid. Components own their settings (frozen
  dataclasses in their files); the config picks components and settings:
    processes: `((variable, process name, settings), ...)` overriding the
      preset per variable; variables not named get the preset's process
      with its default settings (`process_table`).
    network: `(network name, settings)`, or () for the preset's network
      with its default settings (`network_choice`).
    conditions: `((property, encoder name, settings), ...)`: per-crystal
      properties the network is told (`conditions.py`); () for none.
  The rest describe the time grid and the graph the network runs on.

  Attributes:
    task: a preset of `tasks.py` (csp, dng, csp_flow, dng_flow, cartesian).
    num_steps: diffusion steps T (the training grid of continuous time).
    graph: 'fc' (fully connected) or 'radius'.
    cutoff: Angstrom; radius graphs and distance features.
    max_image: image range searched by radius graphs.
    edge_capacity_per_atom: radius graphs: edge slots per atom slot of a
      crystal.
    condition_dropout: training: each crystal loses all its conditions with
      this probability, and each remaining one with it again, so the model
      also learns the unconditional prediction that classifier-free
      guidance needs (0: never).
  """
  task: str = 'csp'
  num_steps: int = 1000
  processes: tuple = ()
  network: tuple = ()
  conditions: tuple = ()
  graph: str = 'fc'
  cutoff: float = 6.0
  max_image: int = 2
  edge_capacity_per_atom: int = 64
  condition_dropout: float = 0.0

  def process_table(self) -> tuple[tuple[str, str, settings_lib.Settings], ...]:
    """((variable, process name, settings), ...) for every variable of the
    task, in its order: the preset's, with `processes` in place."""
    chosen = {variable: (name, settings) for variable, name, settings in self.processes}
    table = []
    for variable, preset in tasks.get_task(self.task).variables:
      name, settings = chosen.get(variable, (preset, None))
      table.append((variable, name, processes_lib.entry(name).defaults
                    if settings is None else settings))
    return tuple(table)

  def network_choice(self) -> tuple[str, settings_lib.Settings]:
    """(network name, settings): `network`, or the preset's with its defaults."""
    if self.network:
      return self.network
    name = tasks.get_task(self.task).network
    return name, networks.entry(name).defaults

  def with_process(self, variable: str, name: str | None = None,
                   **settings) -> 'ModelConfig':
    """This config with `variable`'s process (default: the current one) and
    some of its settings changed, e.g.
    `config.with_process('coords', sigma_end=0.4)`."""
    current = {v: (n, s) for v, n, s in self.process_table()}
    if variable not in current:
      raise errors.ConfigError(f'task {self.task!r} has no variable {variable!r}; '
                               f'it has {sorted(current)}')
    old_name, old_settings = current[variable]
    name = name or old_name
    base = old_settings if name == old_name else processes_lib.entry(name).defaults
    new = settings_lib.read(base, settings, f'process {name!r} ({variable})')
    others = tuple(p for p in self.processes if p[0] != variable)
    return dataclasses.replace(self, processes=others + ((variable, name, new),))

  def with_network(self, name: str | None = None, **settings) -> 'ModelConfig':
    """This config with its network (default: the current one) and some of
    its settings changed, e.g. `config.with_network(hidden=64, num_layers=3)`."""
    old_name, old_settings = self.network_choice()
    name = name or old_name
    base = old_settings if name == old_name else networks.entry(name).defaults
    return dataclasses.replace(
        self, network=(name, settings_lib.read(base, settings, f'network {name!r}')))

  def with_condition(self, prop: str, encoder: str, **settings) -> 'ModelConfig':
    """This config also conditioned on `prop` (a data file's property
    column) through a registered encoder, e.g.
    `config.with_condition('band_gap', 'scalar', mean=1.2, std=1.5)`."""
    new = settings_lib.read(conditions_lib.entry(encoder).defaults, settings,
                            f'condition {prop!r} ({encoder})')
    others = tuple(c for c in self.conditions if c[0] != prop)
    return dataclasses.replace(self, conditions=others + ((prop, encoder, new),))

  def fit_conditions(self, values: dict, source: str) -> 'ModelConfig':
    """This config with each condition's settings fitted to the training
    data (`conditions.ConditionSettings.fit`: e.g. a scalar's mean, std and
    range). `values`: {property: [S] values of the training crystals, NaN
    unknown}. A value the encoder cannot take raises `errors.DataError`
    naming `source` and the property."""
    fitted = []
    for prop, encoder, settings in self.conditions:
      fit = getattr(settings, 'fit', None)
      if fit is not None:
        try:
          settings = settings_lib.checked(fit(np.asarray(values[prop])),
                                          f'condition {prop!r} ({encoder})')
        except ValueError as err:
          raise errors.DataError(f'{source}: condition {prop!r} ({encoder}): '
                                 f'{err}') from None
      fitted.append((prop, encoder, settings))
    return dataclasses.replace(self, conditions=tuple(fitted))

  @property
  def properties(self) -> tuple[str, ...]:
    """The properties the model is conditioned on, in order."""
    return tuple(prop for prop, _, _ in self.conditions)

  def to_dict(self) -> dict:
    """JSON-ready, with every choice resolved: each variable's process and
    the network, with all their settings."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d['processes'] = [dict(variable=v, process=n, settings=s.to_dict())
                      for v, n, s in self.process_table()]
    name, settings = self.network_choice()
    d['network'] = dict(name=name, settings=settings.to_dict())
    d['conditions'] = [dict(property=p, encoder=e, settings=s.to_dict())
                       for p, e, s in self.conditions]
    return d

  @classmethod
  def from_dict(cls, d: dict) -> 'ModelConfig':
    """Inverse of `to_dict`; also reads the flat settings of runs written
    before issue 31 (`hidden`, `sigma_begin`, `cart_sigma_end`, ...), the one
    legacy reader."""
    d = dict(d)
    legacy = {k: d.pop(k) for k in _LEGACY_PROCESS_KEYS + _LEGACY_NETWORK_KEYS if k in d}
    stored_processes = d.pop('processes', None)
    stored_network = d.pop('network', None)
    stored_conditions = d.pop('conditions', [])
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise errors.ConfigError(f'model: unknown setting(s) {unknown}')
    config = cls(**d)
    try:
      if stored_processes is None:
        table = [(variable, name, _legacy_settings(defaults, _LEGACY_FIELDS.get(name, {}),
                                                   legacy, f'process {name!r} ({variable})'))
                 for variable, name, defaults in _legacy_table(config)]
      else:
        table = [(p['variable'], p['process'], settings_lib.read(
            processes_lib.entry(p['process']).defaults, p.get('settings', {}),
            f"process {p['process']!r} ({p['variable']})")) for p in stored_processes]
      if stored_network is None:
        name, defaults = config.network_choice()
        names = {f.name: f.name for f in dataclasses.fields(defaults)}
        network = (name, _legacy_settings(defaults, names, legacy, f'network {name!r}'))
      else:
        name = stored_network['name']
        network = (name, settings_lib.read(networks.entry(name).defaults,
                                           stored_network.get('settings', {}),
                                           f'network {name!r}'))
      conditions = tuple(
          (c['property'], c['encoder'], settings_lib.read(
              conditions_lib.entry(c['encoder']).defaults, c.get('settings', {}),
              f"condition {c['property']!r} ({c['encoder']})"))
          for c in stored_conditions)
    except (KeyError, TypeError, AttributeError) as err:
      raise errors.ConfigError(f'model: processes must be a list of {{variable, '
                               f'process, settings}}, network a {{name, settings}} and '
                               f'conditions a list of {{property, encoder, settings}} '
                               f'({err!r})') from None
    return dataclasses.replace(config, processes=tuple(table), network=network,
                               conditions=conditions)

  def validate(self) -> None:
    task = tasks.get_task(self.task)
    for entry in self.processes:
      if not (isinstance(entry, tuple) and len(entry) == 3):
        raise errors.ConfigError('model: processes must hold (variable, process, '
                                 f'settings) triples, got {entry!r}')
      if entry[0] not in task.names:
        raise errors.ConfigError(f'model: task {self.task!r} has no variable '
                                 f'{entry[0]!r}; it has {list(task.names)}')
    if len({entry[0] for entry in self.processes}) != len(self.processes):
      raise errors.ConfigError('model: a variable is named twice in processes')
    if self.network and not (isinstance(self.network, tuple) and len(self.network) == 2):
      raise errors.ConfigError(f'model: network must be (name, settings), got {self.network!r}')
    chosen = [(processes_lib.entry(name), f'process {name!r} ({variable})', settings)
              for variable, name, settings in self.process_table()]
    for entry in self.conditions:
      if not (isinstance(entry, tuple) and len(entry) == 3):
        raise errors.ConfigError('model: conditions must hold (property, encoder, '
                                 f'settings) triples, got {entry!r}')
      chosen.append((conditions_lib.entry(entry[1]),
                     f'condition {entry[0]!r} ({entry[1]})', entry[2]))
    if len(set(self.properties)) != len(self.properties):
      raise errors.ConfigError(f'model: a property is conditioned on twice: '
                               f'{list(self.properties)}')
    name, settings = self.network_choice()
    for entry, where, settings in chosen + [(networks.entry(name), f'network {name!r}',
                                             settings)]:
      settings_lib.checked_like(settings, entry.defaults, where)
    if self.graph not in ('fc', 'radius'):
      raise errors.ConfigError(f"model: graph must be 'fc' or 'radius', got {self.graph!r}")
    for field in ('num_steps', 'edge_capacity_per_atom'):
      if getattr(self, field) < 1:
        raise errors.ConfigError(f'model: {field} must be >= 1, got {getattr(self, field)}')
    if self.max_image < 0 or not self.cutoff > 0:
      raise errors.ConfigError(f'model: max_image must be >= 0 and cutoff > 0, got '
                               f'{self.max_image} and {self.cutoff}')
    if task.graph is not None and self.graph != task.graph:
      raise errors.ConfigError(f"model: task {self.task!r} needs graph={task.graph!r}")
    if not 0 <= self.condition_dropout < 1:
      raise errors.ConfigError(f'model: condition_dropout must be in [0, 1), got '
                               f'{self.condition_dropout}')
    if self.condition_dropout and not self.conditions:
      raise errors.ConfigError('model: condition_dropout needs conditions (--condition '
                               'NAME); this model has none')


@dataclasses.dataclass(frozen=True)
class Model:
  """A model config with its processes, network and time grid built.

  Attributes:
    config: the `ModelConfig`.
    task: its row of the task table.
    processes: {variable: process}, in the task's order.
    network: registry adapter (`networks.py`).
    time: `times.DiscreteTime` or `times.ContinuousTime`.
  """
  config: ModelConfig
  task: tasks.Task
  processes: dict[str, Any]
  network: Any
  time: Any
  guidance: float = 0.0

  def with_guidance(self, weight: float) -> 'Model':
    """This model with classifier-free guidance of `weight` w >= 0: each
    network output becomes `cond + w * (cond - uncond)`, uncond the
    prediction with every condition unknown (two network calls per step;
    w = 0: the conditional prediction alone, one call). Raises
    `errors.ConfigError` if the model cannot be guided: no conditions, or
    trained without `condition_dropout` (it never learned `uncond`)."""
    weight = float(weight)
    if not (np.isfinite(weight) and weight >= 0):
      raise errors.ConfigError(f'guidance must be a finite number >= 0, got {weight}')
    if weight and not self.config.conditions:
      raise errors.ConfigError('guidance needs a conditioned model; this one was '
                               'trained without conditions')
    if weight and not self.config.condition_dropout:
      raise errors.ConfigError(
          'guidance needs a model trained with --condition_dropout > 0 (it learns '
          f'the unconditional prediction); this one, conditioned on '
          f'{list(self.config.properties)}, was trained without it')
    return dataclasses.replace(self, guidance=weight)

  def graph(self, batch: batch_lib.CrystalBatch) -> neighbors.NeighborList:
    """The network's graph of `batch` (built under jit; static capacity).
    Radius graphs hold `edge_capacity_per_atom * A` edges per crystal (A: the
    batch's atoms-per-crystal budget); `overflow` counts what did not fit."""
    c = self.config
    if c.graph == 'fc':
      return neighbors.fully_connected_graph(
          batch, nearest_image=self.network.nearest_image)
    return neighbors.radius_graph(batch, c.cutoff, c.max_image,
                                  c.edge_capacity_per_atom * batch.max_atoms_per_graph)

  def check_edge_capacity(self, batches, source: str, headroom: float = 1.25) -> int:
    """Host check before training: the most edges per atom slot any clean
    crystal of `batches` needs in the radius graph, with `headroom` for noise,
    must fit `edge_capacity_per_atom`. Returns that need (0 for fully
    connected graphs, which cannot overflow); raises
    `neighbors.GraphCapacityError` naming the value to set otherwise. Noise
    can still exceed it: the loss reports overflow and every step is checked."""
    c = self.config
    if c.graph != 'radius':
      return 0
    need = 0
    for b in batches:
      per_crystal = neighbors.estimate_capacity(batch_lib.to_device(b), c.cutoff,
                                                c.max_image, multiplier=headroom)
      need = max(need, -(-per_crystal // b.max_atoms_per_graph))
    if need > c.edge_capacity_per_atom:
      raise neighbors.GraphCapacityError(
          f'{source}: the radius graph (cutoff {c.cutoff} A) needs up to {need} '
          f'edge slots per atom with {headroom:.2f}x head room for noise, more '
          f'than --edge_capacity_per_atom={c.edge_capacity_per_atom}; set it to '
          f'at least {need}')
    return need

  def write(self, batch: batch_lib.CrystalBatch, xs: dict) -> batch_lib.CrystalBatch:
    """`batch` with every variable's state `xs[name]` in place."""
    for name, process in self.processes.items():
      batch = process.write(batch, xs[name])
    return batch

  def finalize(self, template: batch_lib.CrystalBatch, xs: dict) -> batch_lib.CrystalBatch:
    """The finished crystals of sampler states `xs` (e.g. argmax types,
    right-handed cells)."""
    batch = self.write(template, xs)
    for name, process in self.processes.items():
      batch = process.finalize(batch, xs[name])
    return batch

  def apply(self, params, batch: batch_lib.CrystalBatch, t: jax.Array,
            xs: dict) -> tuple[dict, jax.Array]:
    """Network outputs `{variable: prediction}` on the noisy `batch` (states
    `xs` already written in; its `conditions` are what a conditioned model
    is told) at times `t: [G]`, and the graph's overflow counts
    `[len(neighbors.OVERFLOW_REASONS)]`."""
    graph = self.graph(batch)
    fraction = self.time.fraction(t)
    out = self.network.apply(params, batch, fraction, graph, xs)
    if self.guidance:
      unknown = {k: jnp.zeros_like(m) for k, m in batch.condition_mask.items()}
      uncond = self.network.apply(params, batch.replace(condition_mask=unknown),
                                  fraction, graph, xs)
      out = jax.tree.map(lambda c, u: c + self.guidance * (c - u), out, uncond)
    return out, graph.overflow

  def init_params(self, rng: jax.Array, batch: batch_lib.CrystalBatch):
    """Initialise parameters on an example batch (shapes only matter)."""
    xs = {name: p.clean(batch) for name, p in self.processes.items()}
    t = self.time.full(1, batch.num_graph_slots)
    return self.network.init(rng, batch, self.time.fraction(t), self.graph(batch), xs)


def build(config: ModelConfig) -> Model:
  """Processes, network and time grid of a validated `ModelConfig`."""
  config.validate()
  task = tasks.get_task(config.task)
  procs = {variable: processes_lib.get_process(name, settings, config.num_steps)
           for variable, name, settings in config.process_table()}
  streams = [p.stream for p in procs.values()]
  if len(set(streams)) != len(streams):
    raise ValueError(f'task {config.task!r}: two variables share a PRNG stream '
                     f'({streams}); give each process its own `stream`')
  if task.time not in times_lib.TIME_GRIDS:
    raise ValueError(f'task {config.task!r}: unknown time grid {task.time!r}')
  return Model(config=config, task=task, processes=procs,
               network=networks.get_network(*config.network_choice(), task.names,
                                            config.cutoff, config.conditions),
               time=times_lib.TIME_GRIDS[task.time](config.num_steps))


# Before issue 31, component settings were flat ModelConfig fields. Process
# settings: {process: {settings field: old field}}; network settings had
# the same names as now.
_LEGACY_FIELDS = {
    'lattice_ddpm': {'beta_schedule': 'beta_schedule'},
    'types_ddpm': {'beta_schedule': 'beta_schedule'},
    'frac_wrapped_normal': {'sigma_begin': 'sigma_begin', 'sigma_end': 'sigma_end'},
    'cart_minimum_image': {'sigma_begin': 'cart_sigma_begin', 'sigma_end': 'cart_sigma_end'},
}
_LEGACY_PROCESS_KEYS = ('beta_schedule', 'sigma_begin', 'sigma_end', 'cart_sigma_begin',
                        'cart_sigma_end')
_LEGACY_NETWORK_KEYS = ('hidden', 'num_layers', 'num_freqs', 'time_dim', 'distance_basis',
                        'edge_score_head', 'num_basis')


# Presets that changed after runs stored their processes by task alone:
# {(task, variable): the process such a run was trained with}.
_LEGACY_PRESETS = {('dng_flow', 'types'): 'types_flow'}


def _legacy_table(config: ModelConfig):
  """`config.process_table()` with the presets of the time a run stored no
  processes (`_LEGACY_PRESETS`)."""
  return [(v, _LEGACY_PRESETS.get((config.task, v), n),
           processes_lib.entry(_LEGACY_PRESETS[(config.task, v)]).defaults
           if (config.task, v) in _LEGACY_PRESETS else s)
          for v, n, s in config.process_table()]


def _legacy_settings(defaults, fields: dict, legacy: dict, where: str):
  """`defaults` with the flat values `legacy[old]` of `fields` {field: old}."""
  return settings_lib.read(defaults, {field: legacy[old] for field, old in fields.items()
                                      if old in legacy}, where)


def stream_keys(rng: jax.Array, num: int, slots: tuple) -> tuple[jax.Array, Any]:
  """Keys of the variables' PRNG streams.

  Splits `rng` into `num` keys (`num == 1`: `rng` itself). `key(stream)` is
  `keys[slots[stream]]` for the first release's streams (0 lattice, 1
  coordinates, 2 types; a None slot or any other stream gets
  `fold_in(rng, stream)`). The loss and the sampler keep the first
  release's layouts, so a seed gives the structures it always gave.
  Returns (keys, key).
  """
  keys = jax.random.split(rng, num) if num > 1 else rng[None]

  def key(stream: int) -> jax.Array:
    if stream < len(slots) and slots[stream] is not None:
      return keys[slots[stream]]
    return jax.random.fold_in(rng, stream)
  return keys, key
