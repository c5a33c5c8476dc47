"""The denoising (or flow-matching) loss of a model, masked on padding.

`get_loss_fn(model) -> loss_fn(rng, params, batch) -> (loss, aux)` follows
score_sde: the factory closes over the static parts and returns a pure
function. It loops over the model's variables: each process noises its
variable and gives the target, the network predicts every variable at once,
and each term is the process's loss over real rows (crystals or atoms): a mean
squared error, or a cross-entropy for jump processes (`discrete.py`).
"""
from __future__ import annotations

import dataclasses

import chex
import jax

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import model as model_lib


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weight of each variable's term (a variable not named here weighs 1).

  Attributes:
    lattice: weight of the lattice term.
    coords: weight of the coordinate term.
    types: weight of the atom-type term (de novo tasks).
  """
  lattice: float = 1.0
  coords: float = 1.0
  types: float = 1.0

  def validate(self) -> None:
    for field in dataclasses.fields(self):
      if getattr(self, field.name) < 0:
        raise errors.ConfigError(f'loss_weights: {field.name} must be >= 0, got '
                                 f'{getattr(self, field.name)}')


# PRNG layout of the loss: split(rng, 4) = [times, lattice, coords, types].
LOSS_SLOTS = (1, 2, 3)


# The condition dropout's key: fold_in(rng, DROPOUT_STREAM), outside the
# split above, so a model without dropout draws what it always drew.
DROPOUT_STREAM = 1001


def drop_conditions(rng: jax.Array, batch: batch_lib.CrystalBatch,
                    rate: float) -> batch_lib.CrystalBatch:
  """`batch` with conditions made unknown for classifier-free guidance:
  each crystal loses all of them with probability `rate`, and each
  remaining one independently with probability `rate` again (so partial
  requests are trained too). Values stay; only `condition_mask` changes."""
  names = sorted(batch.condition_mask)
  if not names:
    return batch
  g = batch.num_graph_slots
  u = jax.random.uniform(rng, (len(names) + 1, g))
  keep_all = u[0] >= rate
  mask = {name: batch.condition_mask[name] & keep_all & (u[k + 1] >= rate)
          for k, name in enumerate(names)}
  return batch.replace(condition_mask=mask)


def row_mask(batch: batch_lib.CrystalBatch, per: str) -> jax.Array:
  return batch.graph_mask if per == 'graph' else batch.atom_mask


def get_loss_fn(model: model_lib.Model, weights: LossWeights = LossWeights()):
  """Loss at times drawn from the model's time grid, one per crystal.

  Returns `loss_fn(rng, params, batch) -> (loss, aux)`; aux holds each
  variable's term under its name, 'loss', and 'overflow' (the graph's
  overflow counts by reason, `[len(neighbors.OVERFLOW_REASONS)]` int32).
  """
  loss_at_times = get_loss_at_times_fn(model, weights)
  dropout = model.config.condition_dropout

  def loss_fn(rng, params, batch: batch_lib.CrystalBatch):
    t = model.time.sample(jax.random.split(rng, 4)[0], batch.num_graph_slots)
    if dropout:
      batch = drop_conditions(jax.random.fold_in(rng, DROPOUT_STREAM), batch, dropout)
    return loss_at_times(rng, params, batch, t)

  return loss_fn


def get_loss_at_times_fn(model: model_lib.Model, weights: LossWeights = LossWeights(),
                         clean: tuple[str, ...] = ()):
  """The loss of `get_loss_fn` at given times.

  Returns `loss_at_times(rng, params, batch, t) -> (loss, aux)` with `t: [G]`
  on the model's time grid; with the t that `get_loss_fn` draws from the
  same rng it gives the same result. Used to see at which noise levels a
  model fails (`loss_by_noise_level`).

  `clean`: names of variables handed to the network clean (not noised): a
  diagnostic of how much one variable's noise hides another's (their own
  terms are then meaningless and left out of the loss).
  """
  unknown = set(clean) - set(model.processes)
  if unknown:
    raise ValueError(f'clean: unknown variables {sorted(unknown)}; the model has '
                     f'{sorted(model.processes)}')
  if set(clean) >= set(model.processes):
    raise ValueError('clean: at least one variable must stay noised')
  def loss_at_times(rng, params, batch: batch_lib.CrystalBatch, t: jax.Array):
    batch.validate_shapes()
    chex.assert_shape(t, (batch.num_graph_slots,))
    _, key = model_lib.stream_keys(rng, 4, LOSS_SLOTS)
    xs, targets = {}, {}
    for name, process in model.processes.items():
      rows = t if process.per == 'graph' else t[batch.graph_index]
      xs[name], targets[name] = process.noise(key(process.stream), batch, rows)
      if name in clean:
        xs[name] = process.clean(batch)
    out, overflow = model.apply(params, model.write(batch, xs), t, xs)
    aux, loss = {}, None
    for name, process in model.processes.items():
      if name in clean:
        continue
      aux[name] = process.loss(out[name], targets[name], row_mask(batch, process.per))
      term = getattr(weights, name, 1.0) * aux[name]
      loss = term if loss is None else loss + term
    aux['loss'] = loss
    aux['overflow'] = overflow
    return loss, aux

  return loss_at_times
