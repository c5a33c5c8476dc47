"""The one training loop of the library (crystal diffusion, the healing
denoiser and graph diffusion all run through `run`).

It owns what every run needs: refusing to overwrite a trained run unless
asked to resume (or to overwrite), exact resume from the latest orbax
checkpoint (the batch of step s is a pure function of s) with the stored
configuration checked against the new one, `config.json`, strict-JSON
`metrics.jsonl`, a progress bar, evaluation of the EMA parameters with a best-by-validation checkpoint,
an optional monitor of the EMA parameters (e.g. the quality of samples) with
a best-by-quality checkpoint and an optional early stop, periodic checkpoints, a check of every step that no graph lost edges and
that the parameters stayed finite (read in one transfer at log, evaluation
and checkpoint steps, so that the host runs ahead of the device; batches are
prepared ahead in a thread), the training curve and `train_summary.json`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxcrystal import errors
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import outputs
from jaxcrystal.geometry import neighbors
from jaxcrystal.plotting import plots
from jaxcrystal.training import checkpoints
from jaxcrystal.training import state as state_lib


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """How long to train and how often to log, evaluate and checkpoint.

  `eval_every` and `checkpoint_every` of 0 mean: only at the last step;
  `monitor_every` of 0: never. `monitor_patience` P > 0 stops the run when
  P monitor checks in a row did not improve on the best quality.
  """
  train_steps: int
  log_every: int = 20
  eval_every: int = 0
  checkpoint_every: int = 0
  monitor_every: int = 0
  monitor_patience: int = 0
  keep_checkpoints: int = 3
  progress: bool = True
  desc: str = 'train'
  # Batches prepared (and placed on the device) ahead of the step that
  # uses them, in a background thread; 0: in the loop itself.
  prefetch: int = 2
  # Divergence: more than this share of the steps in the last `skip_window`
  # (checked at log, evaluation and checkpoint steps) skipped for a
  # non-finite loss or gradient stops the run before anything is saved.
  max_skipped_fraction: float = 0.5
  skip_window: int = 20
  curve_keys: tuple[str, ...] = ('loss', 'lattice', 'coords', 'types')
  # Config fields (the last part of a dotted key) that a resumed run may
  # change; every other difference from the stored config.json is refused.
  may_change_on_resume: tuple[str, ...] = (
      'train_steps', 'progress', 'cache_dir', 'keep_checkpoints', 'eval_every',
      'checkpoint_every', 'log_every', 'monitor_every', 'monitor_samples',
      'monitor_sample_steps', 'monitor_patience')


@contextlib.contextmanager
def prefetch(batch_for_step: Callable[[int], object], start: int, stop: int,
             depth: int):
  """Yield an iterator over `batch_for_step(s)` for s in [start, stop),
  computed up to `depth` batches ahead in a background thread so that host
  work (gathering, device transfer) overlaps the device's steps. The
  batches are the same as in a plain loop (each is a pure function of its
  step); an exception in the thread is raised where its batch is due.
  `depth` 0: no thread."""
  if depth < 1:
    yield (batch_for_step(s) for s in range(start, stop))
    return
  ready: queue.Queue = queue.Queue(maxsize=depth)
  stopping = threading.Event()

  def work():
    for s in range(start, stop):
      try:
        item = (batch_for_step(s), None)
      except BaseException as err:  # handed to the consumer
        item = (None, err)
      while not stopping.is_set():
        try:
          ready.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if stopping.is_set() or item[1] is not None:
        return

  def consume():
    for _ in range(start, stop):
      batch, err = ready.get()
      if err is not None:
        raise err
      yield batch
  worker = threading.Thread(target=work, name='batch-prefetch', daemon=True)
  worker.start()
  try:
    yield consume()
  finally:
    stopping.set()
    worker.join(timeout=10)


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


_state_is_finite = jax.jit(state_lib.all_finite)


def _check_state(state, step: int) -> None:
  """Refuse to checkpoint a state with a NaN or infinity anywhere."""
  if not bool(_state_is_finite(state)):
    raise errors.NonFiniteUpdateError(
        f'training step {step}: the parameters or optimizer state hold NaN or '
        'infinite values; not checkpointed, the last checkpoint is intact')


def _check_steps(unchecked: list) -> None:
  """Raise for the first of the (step, overflow counts or None,
  update_finite or None) whose graph lost edges or whose update would have
  made the parameters non-finite, then forget them. Read in one transfer at
  log, evaluation and checkpoint steps, not every step: a read per step
  keeps the host from running ahead of the device. No update is
  checkpointed before it was checked, and a rejected update leaves the
  parameters as they were, so the steps in between change nothing."""
  if not unchecked:
    return
  flags = jax.device_get([(overflow, ok) for _, overflow, ok in unchecked])
  steps = [step for step, _, _ in unchecked]
  unchecked.clear()
  for step, (overflow, ok) in zip(steps, flags):
    if overflow is not None:
      neighbors.check_overflow(overflow, f'training step {step}')
    if ok is not None and not bool(ok):
      raise errors.NonFiniteUpdateError(
          f'training step {step}: the update would make the parameters NaN or '
          'infinite (learning rate too high, or bad data?); stopped with the '
          'parameters of the step before, the last checkpoint is intact')


class _DivergenceCheck:
  """Stops a run whose recent steps are mostly skipped (non-finite loss or
  gradients): the share over the last `window` steps (from the states seen
  at checks) above `max_fraction`, and at least 3 steps."""

  def __init__(self, start: int, skipped: int, window: int, max_fraction: float):
    self.seen = [(start, skipped)]
    self.window, self.max_fraction = window, max_fraction

  def __call__(self, step: int, skipped: int, last_checkpoint: Callable,
               workdir: Path) -> None:
    self.seen.append((step, skipped))
    base = [s for s in self.seen if s[0] <= step - self.window] or self.seen[:1]
    base_step, base_skipped = base[-1]
    self.seen = [s for s in self.seen if s[0] >= base_step]
    steps, count = step - base_step, skipped - base_skipped
    if steps > 0 and count >= 3 and count > self.max_fraction * steps:
      kept = last_checkpoint()
      kept = (f'the last good checkpoint is step {kept} in {workdir / "checkpoints"}'
              if kept is not None else 'no checkpoint was written')
      raise errors.TrainingDivergedError(
          f'training step {step}: {count} of the last {steps} steps were skipped '
          '(non-finite loss or gradients): the run diverged (learning rate too '
          f'high?); stopped without saving, {kept}')


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
      for i, item in enumerate(value):  # e.g. the model's process table
        out.update(_flatten(item, f'{prefix}{key}.{i}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


# Parts of config.json that older runs did not store: absent in the stored
# file, they are recorded from now on instead of refused.
RECORDED_LATER = ('data',)


def config_changes(workdir: Path, config_dict: dict, may_change: tuple[str, ...],
                   read_config: Callable[[dict], dict] = lambda d: d,
                   filename: str = 'config.json', flag: str = '--workdir',
                   recorded_later: tuple[str, ...] = RECORDED_LATER) -> dict[str, tuple]:
  """Compare `config_dict` with the run's stored `filename` (as
  `read_config` brings it up to date: older runs stored older layouts).

  Returns {dotted key: (stored, new)} of the accepted changes. Raises
  `ConfigChangedError` listing every other differing field in one line
  (`flag`: the option that names the run's folder). Keys of
  `recorded_later` that the stored file lacks (older versions did not
  record them) are recorded from now on instead of refused.
  """
  path = workdir / filename
  if not path.is_file():
    return {}
  try:
    stored = _flatten(read_config(json.loads(path.read_text())))
  except json.JSONDecodeError as err:
    raise errors.ConfigChangedError(f'{path} is damaged ({err}); cannot check '
                                    'that --resume continues the same run') from None
  new = _flatten(json.loads(json.dumps(io_lib.strict_json(config_dict)[0])))
  missing = '<absent>'
  diff = {k: (stored.get(k, missing), new.get(k, missing))
          for k in sorted(set(stored) | set(new)) if stored.get(k) != new.get(k)}
  refused = {k: v for k, v in diff.items()
             if k.split('.')[-1] not in may_change and k.split('.')[0] not in may_change
             and not (k.split('.')[0] in recorded_later and v[0] == missing)}
  if refused:
    def change(key, a, b):
      if key.endswith('_sha256') and a != missing:
        name = key.split('.')[-1][:-len('_sha256')]
        return (f'{name}: the file has changed since the run began (sha256 '
                f'{str(a)[:12]}... -> {str(b)[:12]}...)')
      return f'{key}: {a!r} -> {b!r}'
    listed = '; '.join(change(k, a, b) for k, (a, b) in refused.items())
    raise errors.ConfigChangedError(
        f'{workdir}: --resume would change the results ({listed}); resume with '
        f'the stored values (see {path}) or start a new {flag}')
  return diff


# What a run writes at the top of its workdir (besides `files`).
RUN_ENTRIES = ('config.json', 'metrics.jsonl', 'checkpoints', 'best', 'best_quality',
               'training_curve.png', 'quality_curve.png', 'train_summary.json', 'resume_log.jsonl',
               'skipped_rows.json')


def check_workdir(workdir: str | Path, resume: bool, overwrite: bool,
                  inputs: outputs.Inputs | None = None) -> None:
  """Refuse, before any work, a workdir this command may not train in:

  - not a creatable folder;
  - `overwrite`: anything `outputs.check_replaceable` refuses (not a run's
    own folder, holds foreign files, is or holds an input, ...);
  - `resume`: a non-empty folder without the run's `config.json` (nothing to
    check the configuration against); an empty or new one starts afresh;
  - neither: any non-empty folder (checkpoints or not), except one marked
    as a run that holds only what that run wrote before its configuration
    (e.g. the data a script generates into its workdir).
  """
  workdir = Path(workdir)
  replacing = overwrite and not resume
  if replacing or not workdir.is_dir():
    outputs.check_writable(workdir, overwrite=True, flag='--workdir', kind='run',
                           inputs=inputs)
  elif not os.access(workdir, os.W_OK | os.X_OK):
    raise errors.OutputExistsError(f'--workdir {workdir}: cannot write into it '
                                   '(permission denied)')
  if not workdir.is_dir():
    return
  entries = [p for p in workdir.iterdir() if p.name != outputs.LOCK]
  if not entries or replacing:
    return
  if resume:
    if not (workdir / 'config.json').is_file():
      raise errors.NotARunError(
          f'{workdir}: no config.json, so --resume cannot check that it continues '
          'the same run; start a new --workdir')
    return
  if (workdir / 'checkpoints').is_dir() and any((workdir / 'checkpoints').iterdir()):
    raise errors.OutputExistsError(
        f'{workdir} already holds checkpoints; pass --resume to continue, '
        '--overwrite to start afresh, or choose another --workdir')
  owner = outputs.read_owner(workdir)
  if (not (workdir / 'config.json').is_file() and owner and owner['kind'] == 'run'
      and all(p.name in owner['entries'] or p.name == outputs.OWNER for p in entries)):
    return  # only what a starting run wrote (e.g. its generated data): fresh
  if (workdir / 'config.json').is_file():
    raise errors.OutputExistsError(
        f'{workdir} holds a run with no checkpoint yet (killed early?); pass '
        '--resume to continue it (its configuration is checked), --overwrite to '
        'start afresh, or choose another --workdir')
  raise errors.OutputExistsError(
      f'--workdir {workdir} already holds files that are not a run '
      f'({", ".join(sorted(p.name for p in entries)[:4])}); choose a new or '
      'empty folder')


def run(workdir: str | Path, loop: LoopConfig, state: state_lib.TrainState,
        train_step: Callable, batch_for_step: Callable[[int], object], *,
        evaluate: Callable[[object, int], dict] | None = None,
        monitor: Callable[[object, int], dict] | None = None,
        config_dict: dict | None = None, resume: bool = False,
        overwrite: bool = False, files: dict[str, str] | None = None,
        replicate: Callable = lambda s: s, log: Callable = print,
        inputs: outputs.Inputs | None = None, started: float | None = None,
        read_config: Callable[[dict], dict] = lambda d: d
        ) -> tuple[state_lib.TrainState, dict]:
  """Train `state` with the jitted `train_step(state, batch)` in `workdir`.

  Args:
    loop: steps and intervals.
    state: the fresh state (its structure is what checkpoints restore into).
    batch_for_step: step (0-based) -> the placed batch of that step.
    evaluate: `(ema_params, step) -> {name: mean}` with 'loss'; a lower loss
      saves the best checkpoint.
    monitor: `(ema_params, step) -> {name: value}` with 'quality' (higher is
      better), run every `loop.monitor_every` steps and logged with split
      'monitor'; a higher quality saves the `best_quality` checkpoint, and
      `loop.monitor_patience` checks without one stop the run (the step it
      stopped at is checkpointed; the summary says so).
    config_dict: written to `config.json`; on resume compared with the
      stored one (only `loop.may_change_on_resume` fields may differ; the
      changes are appended to `resume_log.jsonl`), which `read_config`
      first brings to the current layout.
    resume: continue from the latest checkpoint; without it a workdir that
      holds checkpoints is refused.
    overwrite: delete the workdir's contents and start afresh (only a
      run's own folder: `check_workdir`).
    inputs: {flag: path} the run reads (data files, cache): a workdir that
      is, holds or lies inside one is never overwritten.
    files: {name: text} written into the workdir once the configuration is
      accepted (e.g. the flags used).
    replicate: places a (restored) state on the devices.
    started: `time.perf_counter()` when the command began (default: now);
      the summary's `first_step_s` counts from it to the end of the first
      step (one wait on the device, at that step only).
  Returns:
    (final state, summary), the summary also in `train_summary.json`.
  Raises:
    neighbors.GraphOverflowError: a step's graph lost edges (the error names
      the step; the step's update is never checkpointed).
    errors.NonFiniteUpdateError: a step's update would have made the
      parameters or optimizer state non-finite.
    errors.ConfigChangedError: `resume` with a configuration that changes
      the results.
    errors.OutputExistsError: a workdir holding a run, without `resume` or
      `overwrite`; or one that `overwrite` may not replace; or one that
      another process is training in (each workdir has one writer, by lock).
    errors.NotARunError: `resume` in a folder holding no stored configuration.
  """
  workdir = Path(workdir)
  check_workdir(workdir, resume, overwrite, inputs)
  workdir.mkdir(parents=True, exist_ok=True)
  lock = outputs.lock_folder(workdir, '--workdir', str(workdir))
  try:
    return _run_locked(workdir, loop, state, train_step, batch_for_step,
                       evaluate, monitor, config_dict, resume, overwrite, inputs, files,
                       replicate, log,
                       time.perf_counter() if started is None else started, read_config)
  finally:
    lock.release()


def write_record(f, record: dict) -> int:
  """One strict-JSON line of `record` into the open metrics file, flushed;
  returns how many non-finite values were written as null."""
  line, count = io_lib.json_line(record)
  f.write(line)
  f.flush()
  return count


def _run_locked(workdir, loop, state, train_step, batch_for_step, evaluate,
                monitor, config_dict, resume, overwrite, inputs, files, replicate, log,
                started, read_config):
  check_workdir(workdir, resume, overwrite, inputs)  # again, now that it is ours
  if overwrite and not resume:
    for entry in workdir.iterdir():
      if entry.name != outputs.LOCK:
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() \
            else entry.unlink()
  outputs.write_owner(workdir, 'run', RUN_ENTRIES + tuple(files or ()))
  manager = checkpoints.CheckpointManager(workdir, loop.keep_checkpoints)
  metrics_path = workdir / 'metrics.jsonl'
  best_val = float('inf')
  best_quality, since_best = -float('inf'), 0
  if resume and (workdir / 'config.json').is_file() and config_dict is not None:
    changes = config_changes(workdir, config_dict, loop.may_change_on_resume,
                             read_config)
  else:
    changes = {}
  if resume and manager.latest_step() is not None:
    try:
      state, extra = manager.restore_latest(state)
    except (ValueError, KeyError, TypeError) as err:  # orbax: tree or shape mismatch
      raise checkpoints.CheckpointMismatchError(
          f'{workdir}: the latest checkpoint does not fit this run\'s model or '
          f'optimizer ({checkpoints.first_line(err)})') from None
    except Exception as err:  # damaged files: orbax and tensorstore raise many types
      raise checkpoints.DamagedCheckpointError(
          f'{workdir}: the latest checkpoint (step {manager.latest_step()}) cannot '
          f'be read ({checkpoints.first_line(err)}); move it away to resume from '
          'the one before') from None
    state = replicate(state)
    best_val = extra.get('best_val', best_val)
    best_quality = extra.get('best_quality', best_quality)
    since_best = extra.get('checks_since_best_quality', since_best)
    log(f'resumed from step {int(state.step)} in {workdir}')
    if changes:
      log('changed on resume: ' + '; '.join(f'{k}: {a!r} -> {b!r}'
                                            for k, (a, b) in changes.items()))
      with open(workdir / 'resume_log.jsonl', 'a') as f:
        f.write(io_lib.json_line(dict(step=int(state.step), changes=changes))[0])
    checkpoints.truncate_metrics(metrics_path, int(state.step), log)
  else:
    if resume:
      log(f'{workdir}: no checkpoint yet; starting the run from step 0')
    metrics_path.unlink(missing_ok=True)
  if config_dict is not None:
    io_lib.write_json_atomic(workdir / 'config.json', config_dict)
  for name, text in (files or {}).items():
    io_lib.write_text_atomic(workdir / name, text)

  start, total = int(state.step), loop.train_steps
  bar = tqdm(total=total, initial=start, disable=not loop.progress,
             desc=loop.desc, dynamic_ncols=True)
  t0 = t_last = time.perf_counter()
  s_last, last, non_finite_logged = start, {}, 0
  first_step_s = None
  diverged = _DivergenceCheck(start, int(state.skipped), loop.skip_window,
                              loop.max_skipped_fraction)
  check_divergence = lambda done: diverged(done, int(state.skipped),
                                           manager.latest_step, workdir)
  unchecked = []  # (step, overflow, update_finite) not read yet
  check_steps = lambda: _check_steps(unchecked)
  extras = lambda: dict({'best_val': best_val} if np.isfinite(best_val) else {},
                        **({'best_quality': best_quality,
                            'checks_since_best_quality': since_best}
                           if np.isfinite(best_quality) else {}))
  stopped_early = None

  def save_checked(save, done):
    """A checkpoint of the current state, never of a diverged or non-finite one."""
    check_divergence(done)
    _check_state(state, done)
    save(done, state, extras())

  with open(metrics_path, 'a') as mf, prefetch(batch_for_step, start, total,
                                              loop.prefetch) as batches:
    for step, batch in zip(range(start, total), batches):
      state, metrics = train_step(state, batch)
      done = step + 1
      if done == start + 1:
        jax.block_until_ready(metrics)
        first_step_s = time.perf_counter() - started
      unchecked.append((done, metrics.pop('overflow', None),
                        metrics.pop('update_finite', None)))
      if _due(done, loop.log_every, total):
        check_steps()
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        rate = (done - s_last) / max(now - t_last, 1e-9)
        t_last, s_last = now, done
        last = {k: float(v) for k, v in metrics.items()}
        record = dict(step=done, split='train', steps_per_s=rate,
                      skipped=int(state.skipped), **last)
        non_finite_logged += write_record(mf, record)
        check_divergence(done)
        bar.set_postfix(loss=f"{last['loss']:.4f}", it_s=f'{rate:.1f}')
      if evaluate is not None and _due(done, loop.eval_every, total):
        check_steps()
        val = evaluate(state.ema_params, done)
        non_finite_logged += write_record(mf, dict(step=done, split='val', **val))
        if val['loss'] < best_val:
          best_val = val['loss']
          save_checked(manager.save_best, done)
      if monitor is not None and loop.monitor_every and _due(done, loop.monitor_every, total):
        check_steps()
        quality = monitor(state.ema_params, done)
        non_finite_logged += write_record(mf, dict(step=done, split='monitor', **quality))
        if quality['quality'] > best_quality:
          best_quality, since_best = quality['quality'], 0
          save_checked(manager.save_best_quality, done)
        else:
          since_best += 1
        if loop.monitor_patience and since_best >= loop.monitor_patience:
          stopped_early = done
          log(f'stopping early at step {done}: the sample quality did not improve '
              f'on {best_quality:.4f} in {since_best} checks (--monitor_patience)')
      if _due(done, loop.checkpoint_every, total) or stopped_early:
        check_steps()  # never checkpoint an update made on a lossy graph
        save_checked(manager.save, done)
      bar.update(1)
      if stopped_early:
        break
  bar.close()
  check_steps()
  manager.wait()
  records = checkpoints.read_metrics(metrics_path, log)
  plots.plot_training_curve(records, workdir / 'training_curve.png', keys=loop.curve_keys)
  plots.plot_monitor_curve(records, workdir / 'quality_curve.png')
  summary = dict(final_step=int(state.step), skipped_steps=int(state.skipped),
                 first_step_s=first_step_s,
                 best_val_loss=best_val if np.isfinite(best_val) else None,
                 best_quality=best_quality if np.isfinite(best_quality) else None,
                 stopped_early_at=stopped_early,
                 last_train=last, train_seconds=time.perf_counter() - t0,
                 workdir=str(workdir), non_finite_values_logged=non_finite_logged)
  nulls = io_lib.write_json_atomic(workdir / 'train_summary.json', summary)
  if non_finite_logged or nulls:
    log(f'{non_finite_logged + nulls} NaN or infinite values were written as '
        'null in metrics.jsonl and train_summary.json')
  return state, summary
