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

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import flow  # noqa: F401  (registers the flow processes)
from jaxcrystal.generative import networks
from jaxcrystal.generative import processes as processes_lib
from jaxcrystal.generative import tasks
from jaxcrystal.generative import times as times_lib
from jaxcrystal.geometry import neighbors


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything static about a model (hashable; stored with checkpoints)."""
  task: str = 'csp'
  hidden: int = 128
  num_layers: int = 4
  num_freqs: int = 128
  time_dim: int = 256
  num_steps: int = 1000
  beta_schedule: str = 'cosine'
  sigma_begin: float = 0.005     # fractional units (frac_wrapped_normal)
  sigma_end: float = 0.5
  cart_sigma_begin: float = 0.01  # Angstrom (cart_minimum_image)
  cart_sigma_end: float = 1.0
  graph: str = 'fc'              # 'fc' or 'radius'
  cutoff: float = 6.0            # Angstrom, radius graphs and distance basis
  distance_basis: int = 0
  edge_score_head: bool = False  # see cspnet.CSPNet
  max_image: int = 2
  edge_capacity_per_atom: int = 64  # radius graphs: edge slots per atom slot of a crystal
  num_basis: int = 16            # cartesian EGNN radial basis

  def validate(self) -> None:
    task = tasks.get_task(self.task)
    if self.graph not in ('fc', 'radius'):
      raise ValueError(f"graph must be 'fc' or 'radius', got {self.graph!r}")
    for name in ('hidden', 'num_layers', 'num_freqs', 'time_dim', 'num_steps',
                 'edge_capacity_per_atom'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    if task.graph is not None and self.graph != task.graph:
      raise ValueError(f"task {self.task!r} needs graph={task.graph!r}")
    if self.edge_score_head and self.distance_basis < 1:
      raise ValueError('edge_score_head needs distance_basis >= 1 (its edge '
                       'weights are functions of the bond length)')


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

  def apply(self, params, batch: batch_lib.CrystalBatch, t: jax.Array, xs: dict,
            conditioning=None) -> tuple[dict, jax.Array]:
    """Network outputs `{variable: prediction}` on the noisy `batch` (states
    `xs` already written in) at times `t: [G]`, and the graph's overflow
    counts `[len(neighbors.OVERFLOW_REASONS)]`."""
    graph = self.graph(batch)
    out = self.network.apply(params, batch, self.time.fraction(t), graph, xs,
                             conditioning)
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
  procs = {name: processes_lib.get_process(proc, config)
           for name, proc in task.variables}
  streams = [p.stream for p in procs.values()]
  if len(set(streams)) != len(streams):
    raise ValueError(f'task {config.task!r}: two variables share a PRNG stream '
                     f'({streams}); give each process its own `stream`')
  if task.time not in times_lib.TIME_GRIDS:
    raise ValueError(f'task {config.task!r}: unknown time grid {task.time!r}')
  return Model(config=config, task=task, processes=procs,
               network=networks.get_network(task.network, config, task.names),
               time=times_lib.TIME_GRIDS[task.time](config.num_steps))


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
