"""Flow-matching processes: straight (conditional optimal-transport) paths in
continuous time t in [0, 1], t = 0 the data and t = 1 the prior.

Each process draws a prior sample x_1 for every data point x_0, places the
network's input on the path between them, and regresses the velocity that
carries x_t toward the data, u = d x_t / d(-t) (so the sampler moves
x <- x + (t - t_prev) u while t falls from 1 to 0):

  lattice_flow     lattice [G, 3, 3] (Angstrom): L_t = (1 - s) L_0 + s L_1
                   with s = t^time_power (1 by default: s = t),
                   L_1 ~ N(0, I); target u = L_0 - L_1 (the velocity in s).
                   A time_power above 1 keeps the lattice nearly clean while
                   the atoms' last displacement is removed (issue 33).
  frac_torus_flow  fractional coordinates [N, 3] on the flat torus: the
                   geodesic F_t = wrap(F_0 + t d) with d the shortest periodic
                   displacement from F_0 to a uniform F_1, minus its mean over
                   the crystal; target u = -d / sqrt(1/12) (unit variance
                   under the uniform prior). Removing the mean makes the
                   target independent of whole-crystal shifts, which a
                   translation-invariant network cannot see, and the
                   shortest displacement makes it independent of the image.
  types_flow       one-hot types [N, K]: T_t = (1 - t) onehot + t eps, target
                   onehot - eps; the type is the argmax at the end.

The same networks serve as for the score models; only the targets and the
time input change. Samplers: `ode.py` (Euler, Heun, midpoint). A flow
process has no predictor or corrector: the score samplers refuse it.
Registered in `processes.PROCESSES` like every process.
"""
from __future__ import annotations

import dataclasses
import math

import chex
import flax.struct
import jax
import jax.numpy as jnp

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import processes
from jaxcrystal.generative import schedules
from jaxcrystal.generative import settings as settings_lib

# Standard deviation of a uniform displacement on [-1/2, 1/2).
UNIFORM_DISPLACEMENT_STD = math.sqrt(1.0 / 12.0)


def _along(t: jax.Array, x: jax.Array) -> jax.Array:
  """Row times `[M]` shaped to broadcast against `x [M, ...]`."""
  return t.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)


def shortest_displacement(delta: jax.Array) -> jax.Array:
  """Shortest periodic representative of a fractional displacement, in
  [-1/2, 1/2) per axis (the flat torus's geodesic)."""
  return delta - jnp.floor(delta + 0.5)


def crystal_mean(x: jax.Array, batch: batch_lib.CrystalBatch) -> jax.Array:
  """Mean of per-atom rows `x [N, D]` over each crystal's real atoms,
  returned per atom `[N, D]` (padding atoms get their slot's mean, unused)."""
  w = batch.atom_mask.astype(x.dtype)[:, None]
  g = batch.num_graph_slots
  total = jax.ops.segment_sum(x * w, batch.graph_index, num_segments=g)
  count = jax.ops.segment_sum(w, batch.graph_index, num_segments=g)
  return (total / jnp.maximum(count, 1.0))[batch.graph_index]


class FlowProcess(processes.Process):
  """Defaults of flow processes.

  velocity(out, template) -> u   the network's output as a velocity.
  advance(x, u, t, t_to, template)  x moved along u from time t to t_to < t
                                  (by t - t_to on a path straight in t).
  anneal                          whether the sampler's anti-annealing
                                  (FlowMM) scales this variable's velocity.
  """
  kind = 'flow'
  anneal = False

  def velocity(self, out, template):
    return out

  def advance(self, x, u, t, t_to, template):
    return x + (t - t_to) * u


@flax.struct.dataclass
class LatticeFlow(processes.LatticeVariable, FlowProcess):
  """Straight path (in s = t^time_power) from a standard normal lattice to
  the data lattice."""
  time_power: float = flax.struct.field(pytree_node=False, default=1.0)

  def path_time(self, t):
    """s(t) = t^time_power: where on the straight path the lattice is at t."""
    return t if self.time_power == 1.0 else t**self.time_power

  def interpolate(self, rng: jax.Array, lattice: jax.Array, t: jax.Array):
    """`lattice: [G, 3, 3]` Angstrom, `t: [G]` in [0, 1] -> (L_t, u) [G, 3, 3]."""
    chex.assert_rank(lattice, 3)
    chex.assert_shape(t, lattice.shape[:1])
    prior = jax.random.normal(rng, lattice.shape, lattice.dtype)
    ss = _along(self.path_time(t), lattice)
    return (1.0 - ss) * lattice + ss * prior, lattice - prior

  def advance(self, x, u, t, t_to, template):
    return x + (self.path_time(t) - self.path_time(t_to)) * u

  def noise(self, rng, batch, t):
    return self.interpolate(rng, batch.lattice, t)


@flax.struct.dataclass
class FracTorusFlow(FlowProcess):
  """Geodesic flow on the flat torus from uniform fractional coordinates."""
  stream = processes.COORDS_STREAM
  anneal = True

  def clean(self, batch):
    return batch.frac

  def prior(self, rng, template):
    return processes._uniform_frac(rng, template)

  def interpolate(self, rng: jax.Array, batch: batch_lib.CrystalBatch,
                  t: jax.Array):
    """Per-atom times `t: [N]` -> (F_t [N, 3] in [0, 1), target [N, 3]).

    The target is the mean-free shortest displacement from F_t's prior end
    to the data, divided by `UNIFORM_DISPLACEMENT_STD`."""
    chex.assert_shape(t, (batch.num_atom_slots,))
    prior = processes._uniform_frac(rng, batch)
    d = shortest_displacement(prior - batch.frac)
    d = jnp.where(batch.atom_mask[:, None], d - crystal_mean(d, batch), 0.0)
    frac_t = processes._place_frac(batch, batch.frac + _along(t, d) * d)
    return frac_t, -d / UNIFORM_DISPLACEMENT_STD

  def noise(self, rng, batch, t):
    return self.interpolate(rng, batch, t)

  def write(self, batch, x):
    return processes._write_frac(batch, x)

  def velocity(self, out, template):
    return out * UNIFORM_DISPLACEMENT_STD

  def advance(self, x, u, t, t_to, template):
    return processes._place_frac(template, x + (t - t_to) * u)


@flax.struct.dataclass
class TypesFlow(processes.TypesVariable, FlowProcess):
  """Straight path from Gaussian vectors to one-hot types (argmax at the end)."""
  num_classes: int = flax.struct.field(pytree_node=False,
                                       default=processes.NUM_ELEMENTS)

  def noise(self, rng, batch, t):
    x0 = self.one_hot(batch.species)
    prior = jax.random.normal(rng, x0.shape, x0.dtype)
    tt = _along(t, x0)
    return (1.0 - tt) * x0 + tt * prior, x0 - prior


@dataclasses.dataclass(frozen=True)
class LatticeFlowSettings(settings_lib.Settings):
  """The lattice flow's settings.

  Attributes:
    time_power: the lattice sits at s = t^time_power on its straight path;
      above 1 it stays nearly clean at small t while the atoms move.
  """
  time_power: float = 1.0

  def validate(self):
    schedules.check_time_power(self.time_power)


processes.register_process('lattice_flow', lambda s, steps: LatticeFlow(
    time_power=float(s.time_power)), LatticeFlowSettings())
processes.register_process('frac_torus_flow', lambda s, steps: FracTorusFlow())
processes.register_process('types_flow', lambda s, steps: TypesFlow())
