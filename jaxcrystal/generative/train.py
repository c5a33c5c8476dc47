"""Training: state, optimizer, a jitted pure train step, and the train loop.

Layout after flax's examples: `create_train_state`, `make_train_step` and
`train_and_evaluate(config, workdir)`. The step is a pure function of
(state, batch); its randomness comes from the key carried in the state, so a
run resumed from a checkpoint continues exactly.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.training import checkpoints
from jaxcrystal.data import pipeline as data_lib
from jaxcrystal.generative import model as diffusion
from jaxcrystal.data import io as io_lib
from jaxcrystal.plotting import plots
from jaxcrystal.training import sharding


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
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  schedule: str = 'cosine'      # 'cosine', 'constant' or 'plateau'
  end_lr_fraction: float = 0.01
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  ema_decay: float = 0.999
  plateau_patience: int = 10
  plateau_factor: float = 0.6


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
  """A fresh state: step 0, EMA equal to `params`, no skips. Shared by every
  trainer (crystal diffusion, the healing denoiser, graph diffusion)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=optimizer.init(params), rng=rng,
                    skipped=jnp.zeros((), jnp.int32))


def create_train_state(rng: jax.Array, spec: diffusion.DiffusionSpec,
                       example: batch_lib.CrystalBatch,
                       optimizer: optax.GradientTransformation) -> TrainState:
  init_rng, rng = jax.random.split(rng)
  params = diffusion.init_params(spec, init_rng, batch_lib.to_device(example))
  return initial_state(params, optimizer, rng)


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                    ema_decay: float):
  """`train_step(state, batch) -> (state, metrics)`, pure and jittable.

  A non-finite loss or gradient leaves params, EMA and optimizer state
  untouched (selected with `where`, no Python branching) and counts a skip.
  """
  def train_step(state: TrainState, batch: batch_lib.CrystalBatch):
    rng, step_rng = jax.random.split(state.rng)
    (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
        step_rng, state.params, batch)
    ok = jnp.isfinite(loss) & _all_finite(grads)
    safe_grads = jax.tree_util.tree_map(lambda g: jnp.where(ok, g, 0.0), grads)
    updates, opt_state = optimizer.update(safe_grads, state.opt_state,
                                          state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree_util.tree_map(
        lambda a, b: jnp.where(ok, a, b), new, old)
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
    ema = jax.tree_util.tree_map(
        lambda e, p: jnp.where(ok, ema_decay * e + (1.0 - ema_decay) * p, e),
        state.ema_params, params)
    metrics = dict(aux, grad_norm=optax.tree.norm(grads), finite=ok)
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


def evaluate(eval_step, params, dataset: data_lib.BucketedDataset, seed: int,
             place: Callable) -> dict:
  """Mean losses over a dataset, weighting batches by crystal count."""
  rng = jax.random.PRNGKey(seed)
  return _crystal_weighted_means(
      dataset.all_batches(),
      lambda k, b: eval_step(params, place(b), jax.random.fold_in(rng, k)))


def _crystal_weighted_means(batches, losses_of: Callable) -> dict:
  """Means of the dicts `losses_of(k, batch)` over batches, each batch
  weighted by its number of real crystals (batch means are per crystal)."""
  totals, count = {}, 0
  for k, batch in enumerate(batches):
    n = int(batch.graph_mask.sum())
    for key, value in losses_of(k, batch).items():
      totals[key] = totals.get(key, 0.0) + float(value) * n
    count += n
  return {k: v / max(count, 1) for k, v in totals.items()}


def loss_by_noise_level(spec: diffusion.DiffusionSpec, params,
                        dataset: data_lib.BucketedDataset, timesteps: Sequence[int],
                        weights: diffusion.LossWeights = diffusion.LossWeights(),
                        seed: int = 0, progress: bool = True) -> dict:
  """Loss components with every crystal of `dataset` noised to each step t.

  The training loss averages over t; this shows where a model fails. The
  coords component is the normalised-score MSE, so 1 means nothing learned
  at that noise level (the target has unit variance) and a well-trained
  model is near 0 at small t, where the clean structure is nearly given.

  Args:
    timesteps: diffusion steps in {1..T} (`spec.config.num_steps`).
  Returns:
    {'t': [S] steps; the coordinate noise scale 'sigma_frac' [S]
    (fractional; csp, dng) or 'sigma_angstrom' [S] (cartesian); and each
    loss component: [S] crystal-weighted means}.
  """
  T = spec.config.num_steps
  bad = [int(t) for t in timesteps if not 1 <= int(t) <= T]
  if bad or not len(timesteps):
    raise ValueError(f'timesteps must be in 1..{T} (non-empty); got {bad or "none"}')
  loss_at_times = jax.jit(diffusion.get_loss_at_times_fn(spec, weights))
  batches = list(dataset.all_batches())
  rng = jax.random.PRNGKey(seed)
  out = {'t': np.asarray(timesteps, np.int32)}
  for t in tqdm(timesteps, desc='noise levels', disable=not progress):
    means = _crystal_weighted_means(batches, lambda k, b: loss_at_times(
        jax.random.fold_in(rng, k), params, b,
        jnp.full((b.num_graph_slots,), int(t), jnp.int32))[1])
    for key, value in means.items():
      out.setdefault(key, []).append(value)
  if spec.config.task == 'cartesian':
    out['sigma_angstrom'] = np.asarray(spec.cart_process.schedule.sigmas)[out['t']]
  else:
    out['sigma_frac'] = np.asarray(spec.frac_process.schedule.sigmas)[out['t']]
  return {k: np.asarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole run; built from flags by `experiments/train_ddpm.py`."""
  model: diffusion.ModelConfig = diffusion.ModelConfig()
  optim: OptimConfig = OptimConfig()
  loss_weights: diffusion.LossWeights = diffusion.LossWeights()
  train_data: str = 'builtin'     # 'builtin' or a path (CSV or ASE format)
  val_data: str = ''              # '' = no validation
  batch_size: int = 64
  num_buckets: int = 4
  train_steps: int = 1000
  eval_every: int = 200
  checkpoint_every: int = 200
  keep_checkpoints: int = 3
  seed: int = 0
  max_atoms: int = 64
  skip_bad: bool = True
  niggli: bool = False            # Niggli-reduce cells read from files
  cache_dir: str = ''
  log_every: int = 20
  progress: bool = True

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> 'TrainConfig':
    d = dict(d)
    d['model'] = diffusion.ModelConfig(**d['model'])
    d['optim'] = OptimConfig(**d['optim'])
    d['loss_weights'] = diffusion.LossWeights(**d['loss_weights'])
    return cls(**d)


def load_structures(path: str, config: TrainConfig):
  """The built-in set or a file; returns (structures, report text)."""
  from jaxcrystal.data import datasets
  if path == 'builtin':
    s = datasets.builtin_structures()
    return s, f'builtin: {len(s)} structures'
  if path.endswith('.csv'):
    structures, report = io_lib.read_cdvae_csv(
        path, skip_bad=config.skip_bad, max_atoms=config.max_atoms,
        niggli=config.niggli, cache_dir=config.cache_dir or None,
        progress=config.progress)
  else:
    structures, report = io_lib.read_structures(
        path, skip_bad=config.skip_bad, max_atoms=config.max_atoms,
        niggli=config.niggli)
  if not structures:
    raise io_lib.DataError(f'{path}: no usable structures\n{report.summary()}')
  return structures, report.summary()


def train_and_evaluate(config: TrainConfig, workdir: str | Path,
                       resume: bool = False, log: Callable = print) -> dict:
  """Train `config` in `workdir`; resume from its latest checkpoint if asked.

  Writes `config.json`, `metrics.jsonl`, `training_curve.png`, periodic
  checkpoints (last `keep_checkpoints`) and the best-by-validation one.
  Returns a summary dict.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  spec = diffusion.build(config.model)
  train_structures, text = load_structures(config.train_data, config)
  log(text)
  mesh = sharding.make_mesh()
  ndev = mesh.size
  edges = data_lib.default_bucket_edges([len(s) for s in train_structures],
                                        config.num_buckets)
  train_set = data_lib.BucketedDataset(train_structures, config.batch_size,
                                       edges, ndev)
  val_set = None
  if config.val_data:
    val_structures, text = load_structures(config.val_data, config)
    log(text)
    val_set = data_lib.BucketedDataset(val_structures, config.batch_size,
                                       edges, ndev)

  loss_fn = diffusion.get_loss_fn(spec, config.loss_weights)
  optimizer = make_optimizer(config.optim, config.train_steps)
  place = lambda b: sharding.shard_batch(b, mesh)
  train_step = jax.jit(make_train_step(loss_fn, optimizer, config.optim.ema_decay),
                       donate_argnums=0)
  eval_step = jax.jit(make_eval_step(loss_fn))

  state = create_train_state(jax.random.PRNGKey(config.seed), spec,
                             train_set.batch_for_step(config.seed, 0), optimizer)
  state = sharding.replicate(state, mesh)
  manager = checkpoints.CheckpointManager(workdir, config.keep_checkpoints)
  metrics_path = workdir / 'metrics.jsonl'
  best_val = float('inf')
  if resume and manager.latest_step() is not None:
    state, extra = manager.restore_latest(state)
    state = sharding.replicate(state, mesh)
    best_val = extra.get('best_val', best_val)
    log(f'resumed from step {int(state.step)} in {workdir}')
    checkpoints.truncate_metrics(metrics_path, int(state.step))
  elif manager.latest_step() is not None:
    raise FileExistsError(
        f'{workdir} already holds checkpoints; pass --resume to continue or '
        'choose another --workdir')
  else:
    metrics_path.unlink(missing_ok=True)
  io_lib.write_json_atomic(workdir / 'config.json', config.to_dict())

  start = int(state.step)
  bar = tqdm(total=config.train_steps, initial=start, disable=not config.progress,
             desc='train', dynamic_ncols=True)
  t_last, s_last = time.perf_counter(), start
  last = {}
  with open(metrics_path, 'a') as mf:
    for step in range(start, config.train_steps):
      host_batch = train_set.batch_for_step(config.seed, step)
      state, metrics = train_step(state, place(host_batch))
      done = step + 1
      if done % config.log_every == 0 or done == config.train_steps:
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        rate = (done - s_last) / max(now - t_last, 1e-9)
        t_last, s_last = now, done
        last = {k: float(v) for k, v in metrics.items()}
        record = dict(step=done, split='train', steps_per_s=rate,
                      skipped=int(state.skipped), **last)
        mf.write(json.dumps(record) + '\n')
        mf.flush()
        bar.set_postfix(loss=f"{last['loss']:.4f}", it_s=f'{rate:.1f}')
      if val_set is not None and (done % config.eval_every == 0 or
                                  done == config.train_steps):
        val = evaluate(eval_step, state.ema_params, val_set, config.seed, place)
        mf.write(json.dumps(dict(step=done, split='val', **val)) + '\n')
        mf.flush()
        if val['loss'] < best_val:
          best_val = val['loss']
          manager.save_best(done, state, {'best_val': best_val})
      if done % config.checkpoint_every == 0 or done == config.train_steps:
        manager.save(done, state, {'best_val': best_val})
      bar.update(1)
  bar.close()
  manager.wait()
  plots.plot_training_curve(checkpoints.read_metrics(metrics_path),
                            workdir / 'training_curve.png')
  summary = dict(final_step=int(state.step), skipped_steps=int(state.skipped),
                 best_val_loss=best_val if np.isfinite(best_val) else None,
                 last_train=last, workdir=str(workdir))
  io_lib.write_json_atomic(workdir / 'train_summary.json', summary)
  return summary
