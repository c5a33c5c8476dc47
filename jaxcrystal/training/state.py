"""Train state, optimizer and the pure, jittable train step shared by every
model of the library (crystal diffusion, the healing denoiser, graph
diffusion, the benchmark helpers).

The step is a pure function of (state, batch); its randomness comes from the
key carried in the state, so a run resumed from a checkpoint continues
exactly. A non-finite loss or gradient skips the update (no Python branch).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxcrystal import errors


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly.

  Attributes:
    step: [] int32 optimizer steps taken (skipped ones included).
    params, ema_params: network parameters and their exponential average.
    opt_state: optax state.
    rng: PRNG key for the next step.
    skipped: [] int32 steps skipped for a non-finite loss or gradient.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  skipped: jax.Array


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with clipping, warm-up and a schedule; an EMA of the parameters.

  Attributes:
    learning_rate: peak learning rate.
    warmup_steps: linear warm-up steps.
    schedule: 'cosine' (decay to end_lr_fraction), 'constant' or 'plateau'
      (reduce on a validation-loss plateau).
    end_lr_fraction: final rate of 'cosine', as a fraction of the peak.
    weight_decay: AdamW weight decay.
    grad_clip: global gradient-norm clip.
    ema_decay: decay of the parameters' exponential moving average.
    plateau_patience: 'plateau': evaluations without improvement before a cut.
    plateau_factor: 'plateau': factor of each cut.
  """
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  schedule: str = 'cosine'
  end_lr_fraction: float = 0.01
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  ema_decay: float = 0.999
  plateau_patience: int = 10
  plateau_factor: float = 0.6

  def validate(self) -> None:
    """Raises `errors.ConfigError` naming the first bad field."""
    checks = [
        ('learning_rate', self.learning_rate > 0, '> 0'),
        ('warmup_steps', self.warmup_steps >= 0, '>= 0'),
        ('schedule', self.schedule in ('cosine', 'constant', 'plateau'),
         "'cosine', 'constant' or 'plateau'"),
        ('end_lr_fraction', 0 <= self.end_lr_fraction <= 1, 'in [0, 1]'),
        ('weight_decay', self.weight_decay >= 0, '>= 0'),
        ('grad_clip', self.grad_clip > 0, '> 0'),
        ('ema_decay', 0 <= self.ema_decay < 1, 'in [0, 1)'),
        ('plateau_patience', self.plateau_patience >= 1, '>= 1'),
        ('plateau_factor', 0 < self.plateau_factor < 1, 'in (0, 1)')]
    for field, ok, rule in checks:
      if not ok:
        raise errors.ConfigError(f'optim: {field} must be {rule}, got '
                                 f'{getattr(self, field)!r}')


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and warm-up, then cosine decay, a
  constant rate, or reduce-on-plateau (which takes the loss as `value`)."""
  if cfg.schedule == 'cosine':
    total = max(total_steps, 2)
    lr = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, min(max(cfg.warmup_steps, 1), total - 1), total,
        cfg.learning_rate * cfg.end_lr_fraction)
  elif cfg.schedule in ('constant', 'plateau'):
    lr = optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1)),
         optax.constant_schedule(cfg.learning_rate)], [max(cfg.warmup_steps, 1)])
  else:
    raise ValueError(f"optimizer schedule must be 'cosine', 'constant' or "
                     f"'plateau', got {cfg.schedule!r}")
  parts = [optax.clip_by_global_norm(cfg.grad_clip),
           optax.adamw(lr, weight_decay=cfg.weight_decay)]
  if cfg.schedule == 'plateau':
    parts.append(optax.contrib.reduce_on_plateau(
        factor=cfg.plateau_factor, patience=cfg.plateau_patience))
  return optax.chain(*parts)


def initial_state(params, optimizer: optax.GradientTransformation,
                  rng: jax.Array) -> TrainState:
  """A fresh state: step 0, EMA equal to `params`, no skips."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=optimizer.init(params), rng=rng,
                    skipped=jnp.zeros((), jnp.int32))


def all_finite(tree) -> jax.Array:
  """True if every leaf is finite (an empty tree is); jittable."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                    ema_decay: float):
  """`train_step(state, batch) -> (state, metrics)`, pure and jittable.

  `loss_fn(rng, params, batch) -> (loss, aux)`. A non-finite loss or
  gradient leaves params, EMA and optimizer state untouched (selected with
  `where`, no Python branching) and counts a skip. An update that is not
  finite from finite gradients (a learning rate of inf, an optimizer whose
  moments overflowed) is not applied either, and `update_finite` is False:
  the training loop stops there, naming the step. Finite parameters plus a
  finite update (its norm finite, so no element near overflow) stay finite;
  the whole state, optimizer moments included, is checked by the loop before
  every checkpoint (`all_finite`). One norm of the update costs a few
  percent of a small model's step, where checking parameters and optimizer
  state every step cost a quarter.
  metrics = aux plus `grad_norm`, `finite` and `update_finite`.
  """
  def train_step(state: TrainState, batch):
    rng, step_rng = jax.random.split(state.rng)
    (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
        step_rng, state.params, batch)
    ok = jnp.isfinite(loss) & all_finite(grads)
    safe_grads = jax.tree_util.tree_map(lambda g: jnp.where(ok, g, 0.0), grads)
    updates, opt_state = optimizer.update(safe_grads, state.opt_state,
                                          state.params, value=loss)
    update_finite = jnp.isfinite(optax.tree.norm(updates))
    params = optax.apply_updates(state.params, updates)
    apply = ok & update_finite
    keep = lambda new, old: jax.tree_util.tree_map(
        lambda a, b: jnp.where(apply, a, b), new, old)
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
    ema = jax.tree_util.tree_map(
        lambda e, p: jnp.where(apply, ema_decay * e + (1.0 - ema_decay) * p, e),
        state.ema_params, params)
    metrics = dict(aux, grad_norm=optax.tree.norm(grads), finite=ok,
                   update_finite=update_finite | ~ok)
    return TrainState(step=state.step + 1, params=params, ema_params=ema,
                      opt_state=opt_state, rng=rng,
                      skipped=state.skipped + (~ok).astype(jnp.int32)), metrics

  return train_step


def make_eval_step(loss_fn: Callable):
  """`eval_step(params, batch, rng) -> aux` (losses at random t, fixed key)."""
  def eval_step(params, batch, rng):
    _, aux = loss_fn(rng, params, batch)
    return aux
  return eval_step
