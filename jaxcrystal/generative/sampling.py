"""The predictor-corrector sampler of score models, one `lax.scan` over the
time grid, and what every sampler shares (state, prior draw, scan, templates).
Other samplers: `ddim.py`, `ode.py`; by name: `samplers.py`.

Each step runs the Langevin corrector on the variables whose noise is
variance-exploding (one network call per corrector step; DiffCSP's
corrector on coordinates), then one network call and every variable's
predictor (ancestral DDPM for lattice and types, reverse VE for
coordinates), all through `score_steps.py`, the processes' declared
interface. The whole padded batch moves at once;
a nested scan records a trajectory every k steps; the same key gives the
same structures. The graph's overflow is carried and returned, never dropped.
"""
from __future__ import annotations

from typing import Sequence

import ase
import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import score_steps
from jaxcrystal.geometry import neighbors

# PRNG layouts of the first release: the prior splits [lattice, coords, types,
# carry]; a step splits [carry, corrector, coords, lattice, types]; each
# corrector step's key goes to the coordinates.
PRIOR_SLOTS = (0, 1, 2)
STEP_SLOTS = (3, 2, 4)
CORRECTOR_SLOTS = (None, 0, None)


@flax.struct.dataclass
class SamplerState:
  """Carry of the reverse scan.

  Attributes:
    rng: key of the next step.
    xs: {variable: current state} (e.g. lattice [G, 3, 3], coords [N, 3]).
    overflow: [len(neighbors.OVERFLOW_REASONS)] int32, the largest graph
      overflow of any network call so far (0: no edge was lost).
  """
  rng: jax.Array
  xs: dict
  overflow: jax.Array


def network_outputs(model: model_lib.Model, params, template, xs: dict, t):
  """The network's outputs on states `xs` at scalar time `t` (every crystal
  at t), and the graph's overflow."""
  times = model.time.full(t, template.num_graph_slots)
  return model.apply(params, model.write(template, xs), times, xs)


def jump_keys(model: model_lib.Model, rng: jax.Array):
  """Keys of a step's jump processes (`discrete.py`) for samplers whose step
  draws nothing else: (next rng, key(stream)). With no jump process the rng
  is returned as is, so those samplers keep their key layout."""
  if not any(p.kind == 'jump' for p in model.processes.values()):
    return rng, None
  rng, sub = jax.random.split(rng)
  return rng, lambda stream: jax.random.fold_in(sub, stream)


def initial_state(model: model_lib.Model, rng, template) -> SamplerState:
  """Every variable drawn from its prior (the first release's key layout)."""
  keys, key = model_lib.stream_keys(rng, 4, PRIOR_SLOTS)
  xs = {name: p.prior(key(p.stream), template)
        for name, p in model.processes.items()}
  return SamplerState(keys[3], xs, jnp.zeros((len(neighbors.OVERFLOW_REASONS),),
                                             jnp.int32))


def scan_grid(step, state: SamplerState, grid: tuple[jax.Array, jax.Array],
              trajectory_every: int = 0):
  """Run `step(state, (t, t_prev)) -> state` over the grid in one `lax.scan`
  (nested when a trajectory is kept: the states every k steps,
  `{variable: [S / k, ...]}`). Returns (state, trajectory or None)."""
  body = lambda s, tt: (step(s, tt), None)
  if not trajectory_every:
    return jax.lax.scan(body, state, grid)[0], None
  chunks = tuple(g.reshape(-1, trajectory_every) for g in grid)

  def outer(s, tts):
    s, _ = jax.lax.scan(body, s, tts)
    return s, s.xs
  return jax.lax.scan(outer, state, chunks)


def make_sample(model: model_lib.Model, step, grid, trajectory_every: int = 0):
  """The sampler of a step rule: `step(params, template, state, (t, t_prev))
  -> state` run from the prior over `grid` (`scan_grid`). Returns
  `sample(rng, params, template) -> (batch, trajectory, overflow)`."""
  num_steps = int(grid[0].shape[0])
  if trajectory_every and num_steps % trajectory_every:
    raise ValueError(f'num_steps {num_steps} is not divisible by trajectory_every '
                     f'{trajectory_every}')

  def sample(rng, params, template: batch_lib.CrystalBatch):
    template.validate_shapes()
    state, traj = scan_grid(lambda s, tt: step(params, template, s, tt),
                            initial_state(model, rng, template), grid,
                            trajectory_every)
    return model.finalize(template, state.xs), traj, state.overflow

  return sample


def get_pc_sampler(model: model_lib.Model, step_lr: float = 1e-5,
                   corrector_steps: int = 1, trajectory_every: int = 0,
                   num_steps: int | None = None):
  """Build the predictor-corrector `sample(rng, params, template) -> (batch,
  trajectory, overflow)`.

  Args:
    model: the model (`model.build`); a score model.
    step_lr: Langevin step scale of the correctors.
    corrector_steps: corrector steps per time step (0: predictor only;
      DiffCSP uses 1). Each costs one network call.
    trajectory_every: if k > 0, also return the states every k steps (the
      number of steps must be divisible by k): `{variable: [S / k, ...]}`.
    num_steps: time steps S (default: the model's T); fewer run on a strided
      grid (`times.DiscreteTime.reverse_grid`). Network calls per structure:
      S * (1 + corrector_steps).

  The template is a `CrystalBatch` fixing atom counts and masks, and what
  the task does not generate (species; the cell of fixed-cell tasks).
  `batch` is the finished sample (`Model.finalize`); `overflow` is
  `[len(neighbors.OVERFLOW_REASONS)]` int32: check it with
  `neighbors.describe_overflow` (non-zero: the graph lost edges).
  """
  time = model.time
  grid = time.reverse_grid(num_steps)
  if corrector_steps < 0:
    raise ValueError(f'corrector_steps must be >= 0, got {corrector_steps}')
  score_steps.check(model)
  corrected = {n: p for n, p in model.processes.items() if score_steps.corrects(p)}
  strided = int(grid[0].shape[0]) < time.num_steps

  def step(params, template, state: SamplerState, tt):
    t, t_prev = tt
    keys, key = model_lib.stream_keys(state.rng, 5, STEP_SLOTS)
    is_last = time.is_last(t_prev)

    def correct(carry, rng_k):
      xs, overflow = carry
      out, lost = network_outputs(model, params, template, xs, t)
      _, ckey = model_lib.stream_keys(rng_k, 1, CORRECTOR_SLOTS)
      xs = dict(xs)
      for name, p in corrected.items():
        xs[name] = score_steps.correct(p, ckey(p.stream), xs[name], out[name], t,
                                       is_last, template, step_lr)
      return (xs, jnp.maximum(overflow, lost)), None

    xs, overflow = state.xs, state.overflow
    if corrector_steps and corrected:
      (xs, overflow), _ = jax.lax.scan(correct, (xs, overflow),
                                       jax.random.split(keys[1], corrector_steps))
    out, lost = network_outputs(model, params, template, xs, t)
    xs = {name: score_steps.predict(p, key(p.stream), xs[name], out[name], t, t_prev,
                                    template, strided)
          for name, p in model.processes.items()}
    return SamplerState(keys[0], xs, jnp.maximum(overflow, lost))

  return make_sample(model, step, grid, trajectory_every)


# ----------------------------------------------------------------------------
# Templates: what to sample.


def template_from_compositions(compositions: Sequence[Sequence[int]],
                               budget: batch_lib.Budget | None = None,
                               lattices: Sequence[np.ndarray] | None = None,
                               conditions: dict | None = None,
                               allowed_elements: Sequence[Sequence[int]] | None = None
                               ) -> batch_lib.CrystalBatch:
  """A batch fixing species (atomic numbers per crystal) and atom counts.

  Lattices default to identity (they are generated); pass them for the
  cartesian task, where the cell is given. `conditions`: {property: one
  value per composition} for a conditioned model (NaN or None: unknown).
  `allowed_elements`: per composition the atomic numbers a de novo sample
  may hold (the batch's `allowed_elements` mask; padding crystals allow
  all); None: any element.
  """
  conditions = dict(conditions or {})
  for name, values in conditions.items():
    if len(values) != len(compositions):
      raise ValueError(f'condition {name!r}: {len(values)} values for '
                       f'{len(compositions)} compositions')
  atoms = []
  for k, species in enumerate(compositions):
    cell = np.eye(3) if lattices is None else np.asarray(lattices[k])
    atoms.append(ase.Atoms(numbers=list(species), cell=cell, pbc=True,
                           scaled_positions=np.zeros((len(species), 3)),
                           info={name: values[k] for name, values in conditions.items()}))
  batch = batch_lib.batch_from_atoms(atoms, budget, properties=tuple(conditions))
  if allowed_elements is None:
    return batch
  if len(allowed_elements) != len(compositions):
    raise ValueError(f'{len(allowed_elements)} element sets for '
                     f'{len(compositions)} compositions')
  mask = np.ones((batch.num_graph_slots, batch_lib.NUM_ELEMENTS), bool)
  for k, numbers in enumerate(allowed_elements):
    mask[k] = False
    mask[k, np.asarray(numbers, int) - 1] = True
  return batch.replace(allowed_elements=mask)


def sample_atom_counts(rng: np.random.Generator, train_counts: Sequence[int],
                       num: int) -> np.ndarray:
  """Atom counts drawn from the empirical training distribution (de novo)."""
  return rng.choice(np.asarray(train_counts), size=num, replace=True)


def split_into_batches(items: Sequence, batch_size: int) -> list[Sequence]:
  chex.assert_scalar_positive(batch_size)
  return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
