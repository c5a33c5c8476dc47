"""The task table: a task is a set of variables, each with its process, plus
a network and a time grid. This table is the only place that says what
'csp', 'dng' and 'cartesian' are; the loss, the sampler and the tools read
what they need from the `Task` (which variables, whether the lattice and the
types are generated).

  csp        crystal structure prediction: composition given; lattice (DDPM)
             and fractional coordinates (wrapped normal) generated.
  dng        de novo generation: csp plus atom types (DDPM on one-hot vectors).
  csp_flow   csp by flow matching (`flow.py`): straight paths from a normal
             lattice and uniform coordinates (geodesics on the torus).
  dng_flow   dng by flow matching for the lattice and coordinates; types
             by masking (absorbing-state D3PM, `discrete.py`), chosen over a
             flow on one-hot vectors (`types_flow`) by measurement (Perov-5
             val, 8k steps: struct. / comp. validity 87.1 / 97.9 % against
             67.1 / 95.9 %, COV-R 87.3 against 56.9 %; docs/benchmarks.md).
  cartesian  positions in a fixed, given cell (VE noise under the minimum
             image), with the E(3)-equivariant `CartesianEGNN`.

Any variable's process can be swapped per run (`ModelConfig.with_process`,
`--VAR.process=NAME`), e.g. masked types with DDPM (`--task=dng
--types.process=types_masked`) or flow types (`--task=dng_flow
--types.process=types_flow`).

A new task is `register_task(name, Task(...))`.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Task:
  """Attributes:
    variables: ((variable, process name), ...) in the order the loss sums them.
      Variable names: 'lattice' [G, 3, 3], 'coords' [N, 3], 'types' [N, K],
      or a new one a registered network predicts.
    network: registered network name (`networks.py`).
    time: 'discrete' (integer steps) or 'continuous' (t in [0, 1]).
    graph: a graph the network requires ('radius'), or None for the config's.
  """
  variables: tuple[tuple[str, str], ...]
  network: str
  time: str = 'discrete'
  graph: str | None = None

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.variables)

  @property
  def generates_lattice(self) -> bool:
    """False: the cell is given (sampling needs cells)."""
    return 'lattice' in self.names

  @property
  def generates_types(self) -> bool:
    """True: only atom counts are given (de novo generation)."""
    return 'types' in self.names


_CSP = (('lattice', 'lattice_ddpm'), ('coords', 'frac_wrapped_normal'))
_CSP_FLOW = (('lattice', 'lattice_flow'), ('coords', 'frac_torus_flow'))
TASKS: dict[str, Task] = {
    'csp': Task(_CSP, 'cspnet'),
    'dng': Task(_CSP + (('types', 'types_ddpm'),), 'cspnet'),
    'csp_flow': Task(_CSP_FLOW, 'cspnet', time='continuous'),
    'dng_flow': Task(_CSP_FLOW + (('types', 'types_masked'),), 'cspnet',
                     time='continuous'),
    'cartesian': Task((('coords', 'cart_minimum_image'),), 'cartesian_egnn',
                      graph='radius'),
}


def register_task(name: str, task: Task) -> None:
  if name in TASKS:
    raise ValueError(f'task {name!r} is already registered')
  TASKS[name] = task


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f'task must be one of {sorted(TASKS)}, got {name!r}')
  return TASKS[name]
