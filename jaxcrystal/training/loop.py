"""The one training loop of the library (crystal diffusion, the healing
denoiser and graph diffusion all run through `run`).

It owns what every run needs: refusing to overwrite a trained run unless
asked to resume, exact resume from the latest orbax checkpoint (the batch of
step s is a pure function of s), `config.json`, `metrics.jsonl`, a progress
bar, evaluation of the EMA parameters with a best-by-validation checkpoint,
periodic checkpoints, a check after every step that no graph lost edges,
the training curve and `train_summary.json`.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxcrystal.data import io as io_lib
from jaxcrystal.geometry import neighbors
from jaxcrystal.plotting import plots
from jaxcrystal.training import checkpoints
from jaxcrystal.training import state as state_lib


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """How long to train and how often to log, evaluate and checkpoint.

  `eval_every` and `checkpoint_every` of 0 mean: only at the last step.
  """
  train_steps: int
  log_every: int = 20
  eval_every: int = 0
  checkpoint_every: int = 0
  keep_checkpoints: int = 3
  progress: bool = True
  desc: str = 'train'
  curve_keys: tuple[str, ...] = ('loss', 'lattice', 'coords', 'types')


def replayed_draws(seed, draw: Callable) -> Callable[[int], object]:
  """`batch_for_step(step)` from a sequential sampler: `draw(np_rng)` is
  called once per step on one `np.random.Generator(seed)`. Asking for an
  earlier or later step replays the generator from the start, so resumed
  runs see the batches an uninterrupted run saw."""
  holder = {'rng': np.random.default_rng(seed), 'next': 0}

  def batch_for_step(step: int):
    if step < holder['next']:
      holder.update(rng=np.random.default_rng(seed), next=0)
    while holder['next'] < step:
      draw(holder['rng'])
      holder['next'] += 1
    holder['next'] += 1
    return draw(holder['rng'])
  return batch_for_step


def _due(done: int, every: int, last: int) -> bool:
  return done == last or (every > 0 and done % every == 0)


def _settle(pending) -> None:
  """Raise if the (step, overflow counts) of a finished step lost edges."""
  if pending is not None and pending[1] is not None:
    neighbors.check_overflow(pending[1], f'training step {pending[0]}')


def run(workdir: str | Path, loop: LoopConfig, state: state_lib.TrainState,
        train_step: Callable, batch_for_step: Callable[[int], object], *,
        evaluate: Callable[[object, int], dict] | None = None,
        config_dict: dict | None = None, resume: bool = False,
        replicate: Callable = lambda s: s, log: Callable = print
        ) -> tuple[state_lib.TrainState, dict]:
  """Train `state` with the jitted `train_step(state, batch)` in `workdir`.

  Args:
    loop: steps and intervals.
    state: the fresh state (its structure is what checkpoints restore into).
    batch_for_step: step (0-based) -> the placed batch of that step.
    evaluate: `(ema_params, step) -> {name: mean}` with 'loss'; a lower loss
      saves the best checkpoint.
    config_dict: written to `config.json`.
    resume: continue from the latest checkpoint; without it a workdir that
      holds checkpoints is refused.
    replicate: places a (restored) state on the devices.
  Returns:
    (final state, summary), the summary also in `train_summary.json`.
  Raises:
    neighbors.GraphOverflowError: a step's graph lost edges (the error names
      the step; the step's update is never checkpointed).
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  manager = checkpoints.CheckpointManager(workdir, loop.keep_checkpoints)
  metrics_path = workdir / 'metrics.jsonl'
  best_val = float('inf')
  if resume and manager.latest_step() is not None:
    state, extra = manager.restore_latest(state)
    state = replicate(state)
    best_val = extra.get('best_val', best_val)
    log(f'resumed from step {int(state.step)} in {workdir}')
    checkpoints.truncate_metrics(metrics_path, int(state.step))
  elif manager.latest_step() is not None:
    raise FileExistsError(
        f'{workdir} already holds checkpoints; pass --resume to continue or '
        'choose another --workdir')
  else:
    metrics_path.unlink(missing_ok=True)
  if config_dict is not None:
    io_lib.write_json_atomic(workdir / 'config.json', config_dict)

  start, total = int(state.step), loop.train_steps
  bar = tqdm(total=total, initial=start, disable=not loop.progress,
             desc=loop.desc, dynamic_ncols=True)
  t0 = t_last = time.perf_counter()
  s_last, last, pending = start, {}, None
  with open(metrics_path, 'a') as mf:
    for step in range(start, total):
      state, metrics = train_step(state, batch_for_step(step))
      done = step + 1
      # Check the previous step while this one runs (no stall of the device).
      _settle(pending)
      pending = (done, metrics.pop('overflow', None))
      if _due(done, loop.log_every, total):
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
      if evaluate is not None and _due(done, loop.eval_every, total):
        val = evaluate(state.ema_params, done)
        mf.write(json.dumps(dict(step=done, split='val', **val)) + '\n')
        mf.flush()
        if val['loss'] < best_val:
          best_val = val['loss']
          manager.save_best(done, state, {'best_val': best_val})
      if _due(done, loop.checkpoint_every, total):
        _settle(pending)  # never checkpoint an update made on a lossy graph
        manager.save(done, state, {'best_val': best_val})
      bar.update(1)
  bar.close()
  _settle(pending)
  manager.wait()
  plots.plot_training_curve(checkpoints.read_metrics(metrics_path),
                            workdir / 'training_curve.png', keys=loop.curve_keys)
  summary = dict(final_step=int(state.step), skipped_steps=int(state.skipped),
                 best_val_loss=best_val if np.isfinite(best_val) else None,
                 last_train=last, train_seconds=time.perf_counter() - t0,
                 workdir=str(workdir))
  io_lib.write_json_atomic(workdir / 'train_summary.json', summary)
  return state, summary
