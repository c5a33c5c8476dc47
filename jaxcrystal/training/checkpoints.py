"""Checkpoints with orbax: periodic (last K), best-by-validation and, when a
run monitors its samples, best-by-quality.

Layout in a workdir: `checkpoints/<step>/`, `best/<step>/` and
`best_quality/<step>/` (only with a monitor), each holding the
train state and a small JSON of extras. Orbax writes to a temporary folder
and renames it when complete, so a run killed mid-save leaves the previous
checkpoints intact and the half-written one is ignored.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxcrystal import errors

from jaxcrystal.data import io as io_lib


class CheckpointMismatchError(errors.UserError, ValueError):
  """A checkpoint does not fit the model its run's config describes."""


class DamagedCheckpointError(errors.UserError):
  """A checkpoint whose files cannot be read (damaged or cut short)."""


def first_line(err: Exception) -> str:
  """'Type: first line of the message' of an exception, at most 200
  characters: orbax's errors run to hundreds of lines."""
  text = str(err).strip()
  return f'{type(err).__name__}: ' + (text.splitlines()[0] if text else 'no message')[:200]


def _kept_steps(workdir: str | Path) -> dict[str, list[int]]:
  """{'best': [step], 'best_quality': [step], 'periodic': [steps]} of the
  checkpoints a run keeps (read from folder names, so damaged ones are
  listed too)."""
  workdir = Path(workdir)
  steps = lambda d: sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) \
      if d.is_dir() else []
  return {'best': steps(workdir / 'best'), 'best_quality': steps(workdir / 'best_quality'),
          'periodic': steps(workdir / 'checkpoints')}


def _others(workdir: Path, which: str, step: int) -> str:
  """What else a user may load, as --which values."""
  kept = _kept_steps(workdir)
  options = [f'--which={s}' for s in kept['periodic'] if str(s) != str(which)
             and not (which == 'latest' and s == step)]
  for name in ('best_quality', 'best'):
    if which != name and kept[name]:
      options.insert(0, f'--which={name} (step {kept[name][-1]})')
  return ('other checkpoints: ' + ', '.join(options) if options
          else 'the run keeps no other checkpoint')


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory.resolve(), options=options)


class CheckpointManager:
  """Periodic and best checkpoints of a train state in `workdir`."""

  def __init__(self, workdir: str | Path, keep: int = 3):
    workdir = Path(workdir)
    self.workdir = workdir
    self.periodic = _manager(workdir / 'checkpoints', keep)
    self.best = _manager(workdir / 'best', 1)
    self._best_quality = None  # made at the first save: most runs have none

  def latest_step(self) -> int | None:
    return self.periodic.latest_step()

  def _save(self, manager, step: int, state, extra: dict) -> None:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)))

  def save(self, step: int, state, extra: dict | None = None) -> None:
    self._save(self.periodic, step, state, extra or {})

  def save_best(self, step: int, state, extra: dict | None = None) -> None:
    self._save(self.best, step, state, extra or {})

  def save_best_quality(self, step: int, state, extra: dict | None = None) -> None:
    """The best checkpoint by the sample-quality monitor (`best_quality/`)."""
    if self._best_quality is None:
      self._best_quality = _manager(self.workdir / 'best_quality', 1)
    self._save(self._best_quality, step, state, extra or {})

  def wait(self) -> None:
    self.periodic.wait_until_finished()
    self.best.wait_until_finished()
    if self._best_quality is not None:
      self._best_quality.wait_until_finished()

  def restore_latest(self, like) -> tuple[Any, dict]:
    return restore(self.periodic, self.periodic.latest_step(), like)


def read_config(workdir: str | Path, from_dict: Callable[[dict], Any],
                what: str) -> Any:
  """`from_dict` of a run's `config.json`; `NotARunError` naming `what` the
  folder should be (e.g. 'a train_denoiser.py workdir') when it is missing,
  damaged or another kind of run's."""
  path = Path(workdir) / 'config.json'
  if not path.is_file():
    raise errors.NotARunError(f'{workdir}: no config.json; expected {what}')
  try:
    return from_dict(json.loads(path.read_text()))
  except json.JSONDecodeError as err:
    raise errors.NotARunError(f'{path}: damaged ({err})') from None
  except (TypeError, KeyError, ValueError) as err:
    raise errors.NotARunError(f'{workdir}: its config.json is not that of '
                              f'{what} ({type(err).__name__}: {err})') from None


def restore(manager: ocp.CheckpointManager, step: int, like) -> tuple[Any, dict]:
  """Restore the state saved at `step` into the structure of `like`."""
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
  return out['state'], dict(out['extra'] or {})


def restore_params(workdir: str | Path, which: str = 'best', use_ema: bool = True,
                   like=None) -> tuple[Any, int]:
  """Parameters of a run's best (or 'best_quality': the sample-quality
  monitor's best; 'latest'; or the periodic checkpoint of a
  step given as digits, e.g. '4000') checkpoint, without building an
  optimizer: the saved tree is read as it is and its (EMA) parameters taken.

  With `like` (e.g. `jax.eval_shape` of the model's init), the restored tree
  must have the same structure and shapes; otherwise
  `CheckpointMismatchError` names the first differences (a checkpoint of
  another model or width).
  Returns (params, step).
  """
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise errors.NotARunError(f'{workdir}: no such run directory')
  step, manager = None, None
  if str(which).isdigit():  # a periodic checkpoint by its step
    manager = _manager(workdir / 'checkpoints', 1000)
    if int(which) not in manager.all_steps():
      raise errors.NotARunError(
          f'{workdir}: no checkpoint at step {which} (kept: '
          f'{sorted(manager.all_steps()) or "none"})')
    step = int(which)
  elif which == 'best':
    manager = _manager(workdir / 'best', 1)
    step = manager.latest_step()
  elif which == 'best_quality':
    if not (workdir / 'best_quality').is_dir():
      raise errors.NotARunError(f'{workdir}: no best_quality checkpoint (the run '
                                'did not monitor its samples: --monitor_every)')
    manager = _manager(workdir / 'best_quality', 1)
    step = manager.latest_step()
    if step is None:
      raise errors.NotARunError(f'{workdir}: no best_quality checkpoint yet')
  if step is None:
    manager = _manager(workdir / 'checkpoints', 1000)
    step = manager.latest_step()
  if step is None:
    raise errors.NotARunError(f'{workdir}: no checkpoints found')
  try:
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    params = out['state']['ema_params' if use_ema else 'params']
  except Exception as err:  # orbax and tensorstore raise many types on damage
    raise DamagedCheckpointError(
        f'{workdir}: the checkpoint of step {step} ({which}) cannot be read '
        f'({first_line(err)}); {_others(workdir, which, step)}') from None
  if like is not None:
    want = {jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_leaves_with_path(like)}
    got = {jax.tree_util.keystr(k): tuple(np.shape(v))
           for k, v in jax.tree_util.tree_leaves_with_path(params)}
    diff = sorted(f'{k}: checkpoint {got.get(k, "missing")}, model '
                  f'{want.get(k, "missing")}'
                  for k in set(want) | set(got) if want.get(k) != got.get(k))
    if diff:
      raise CheckpointMismatchError(f'{workdir} step {step}: the checkpoint does not fit the '
                       f'model of its config.json ({len(diff)} differences, e.g. '
                       + '; '.join(diff[:3]) + ')')
    params = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(like),
        [jnp.asarray(v) for v in jax.tree_util.tree_leaves(params)])
  return params, int(step)


def read_metrics(path: str | Path, log: Callable = print) -> list[dict]:
  """The records of a `metrics.jsonl`. A partial last line (a run killed
  while writing it) is dropped with a message through `log`; a damaged line
  elsewhere raises `errors.UserError` naming it."""
  path = Path(path)
  if not path.is_file():
    return []
  lines = [(k, line) for k, line in enumerate(path.read_text().splitlines(), 1)
           if line.strip()]
  records = []
  for k, line in lines:
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if k == lines[-1][0]:
        log(f'{path}: dropped the partial last line {k} (a run killed while '
            'writing it)')
        break
      raise errors.UserError(f'{path}, line {k}: not JSON; the metrics log is '
                             'damaged') from None
  return records


def truncate_metrics(path: str | Path, step: int, log: Callable = print) -> None:
  """Drop metric records after `step` (written after the checkpoint a resumed
  run restarts from), so the log reads as one uninterrupted run."""
  records = [r for r in read_metrics(path, log) if r.get('step', 0) <= step]
  io_lib.write_text_atomic(path, ''.join(io_lib.json_line(r)[0] for r in records))
