"""Output folders that never destroy inputs or foreign files, never mix with
an earlier run's, and never look complete when the run that wrote them was
killed.

Ownership. Every folder jaxcrystal writes carries `OWNER`
(`.jaxcrystal-output.json`), naming its kind ('samples', 'evaluation',
'run', ...), the command that wrote it and the entries it wrote. `overwrite`
replaces only a folder carrying an `OWNER` of the same kind that holds
nothing else (a sub-folder with its own `OWNER` counts as owned); never the
current directory or one that holds it, and never a folder that is, holds or
lies inside an input of the command (`check_replaceable`). Each refusal is
one `OutputExistsError` line saying why.

Staging. `output_folder(path, ...)` writes into a hidden sibling
`.NAME.partial` that carries the `INCOMPLETE` marker from the moment it
exists (it is built under a temporary name and renamed into place) and a
`LOCK` file held with `flock` by the writer: a second writer of the same
output refuses at once, and a staging folder left by a killed writer (its
lock died with it) is cleared. Only when the run finished does the staging
folder become `path` (an old `path` replaced with `overwrite` is moved
aside first and deleted last, so a failed run keeps the old results).
`check_complete` (called by every reader) refuses files inside a marked
folder. A resumable output (`resumable=True`: work journaled as it goes)
keeps its staging folder when the run dies, and `resume=True` continues in
it.

`check_writable` runs every check that can be run before any work: call it
at the start of a command, `output_folder` repeats it at the end.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping

from jaxcrystal import errors

MARKER = 'INCOMPLETE'
OWNER = '.jaxcrystal-output.json'
LOCK = 'LOCK'

# Inputs of a command: {flag or role: path}, e.g. {'--checkpoint': 'runs/x'}.
Inputs = Mapping[str, 'str | os.PathLike | None']


def _staging(path: Path) -> Path:
  return path.parent / f'.{path.name}.partial'


# ----------------------------------------------------------------------------
# Ownership


def read_owner(folder: str | os.PathLike) -> dict | None:
  """The `OWNER` record of `folder` ({'kind', 'command', 'entries', ...}),
  or None when it has none (or an unreadable one)."""
  try:
    record = json.loads((Path(folder) / OWNER).read_text())
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) and 'kind' in record else None


def write_owner(folder: str | os.PathLike, kind: str,
                entries: Iterable[str] | None = None) -> None:
  """Mark `folder` as written by jaxcrystal as `kind`. `entries`: the names
  it owns (default: what it holds now), kept with those already recorded."""
  folder = Path(folder)
  if entries is None:
    entries = [p.name for p in folder.iterdir()]
  old = read_owner(folder) or {}
  owned = set(old.get('entries', [])) | set(entries)
  owned -= {OWNER, MARKER, LOCK}
  record = dict(kind=kind, command=os.path.basename(sys.argv[0] or 'python'),
                created=old.get('created', time.strftime('%Y-%m-%dT%H:%M:%S')),
                entries=sorted(owned))
  tmp = folder / f'.{OWNER}.tmp'
  tmp.write_text(json.dumps(record, indent=1) + '\n')
  os.replace(tmp, folder / OWNER)


def _resolved(path) -> Path:
  return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _inside(inner: Path, outer: Path) -> bool:
  """Whether `inner` is `outer` or lies below it (both resolved)."""
  return inner == outer or outer in inner.parents


def check_replaceable(path: str | os.PathLike, kind: str, flag: str = '--out',
                      inputs: Inputs | None = None) -> None:
  """Raise `OutputExistsError` (one line, why) unless `overwrite` may delete
  the existing folder `path`: jaxcrystal's own output of `kind`, holding
  nothing else, not the current directory (or above it), and neither an
  input of the command, nor holding one, nor inside one."""
  path = Path(path)
  real = _resolved(path)
  cwd = Path.cwd().resolve()
  if _inside(cwd, real):
    raise errors.OutputExistsError(
        f'{flag} {path} is the current directory or holds it; --overwrite never '
        'replaces that: choose a folder of its own')
  if real == Path(real.anchor) or real == Path.home().resolve():
    raise errors.OutputExistsError(f'{flag} {path}: --overwrite never replaces '
                                   'the root or home folder')
  for name, value in (inputs or {}).items():
    if not value:
      continue
    other = _resolved(value)
    if _inside(other, real):
      raise errors.OutputExistsError(
          f'{flag} {path} {"is" if other == real else "holds"} {name} {value}, an '
          'input of this command; --overwrite would delete it: choose another folder')
    if other.is_dir() and _inside(real, other):
      raise errors.OutputExistsError(
          f'{flag} {path} lies inside {name} {value}, an input of this command; '
          '--overwrite will not replace a folder there: choose another folder')
  owner = read_owner(path)
  if owner is None:
    raise errors.OutputExistsError(
        f'{flag} {path} was not written by jaxcrystal (it has no {OWNER}); '
        '--overwrite replaces only jaxcrystal\'s own output folders: move it '
        'away yourself or choose another folder')
  if owner['kind'] != kind:
    raise errors.OutputExistsError(
        f'{flag} {path} holds {owner["kind"]} (written by '
        f'{owner.get("command", "?")}), not {kind}; --overwrite replaces only '
        'an output of the same kind: choose another folder')
  owned = set(owner.get('entries', [])) | {OWNER, MARKER, LOCK}
  foreign = sorted(p.name for p in path.iterdir()
                   if p.name not in owned and read_owner(p) is None)
  if foreign:
    shown = ', '.join(foreign[:4]) + (f' and {len(foreign) - 4} more'
                                      if len(foreign) > 4 else '')
    raise errors.OutputExistsError(
        f'{flag} {path} also holds files jaxcrystal did not write there ({shown}); '
        '--overwrite will not delete them: move them away or choose another folder')


def _check_creatable(path: Path, flag: str) -> None:
  """The nearest existing ancestor of `path` must be a writable folder."""
  parent = path.parent if path.name else path
  while not parent.exists() and parent != parent.parent:
    if parent.is_symlink():
      break
    parent = parent.parent
  if parent.exists() and not parent.is_dir():
    raise errors.OutputExistsError(f'{flag} {path}: {parent} is a file, not a folder')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise errors.OutputExistsError(
        f'{flag} {path}: cannot write into {parent} (permission denied)')


def check_writable(path: str | os.PathLike, overwrite: bool, flag: str = '--out',
                   kind: str | None = None, inputs: Inputs | None = None) -> Path:
  """Everything about the output `path` that can be checked before any
  work: not a file, creatable, and new or empty unless `overwrite` is given
  and `check_replaceable(path, kind, flag, inputs)` allows it. Returns `path`.
  """
  if path is None or not str(path).strip():
    raise errors.OutputExistsError(f'{flag} is empty: name an output folder')
  path = Path(path)
  if _inside(Path.cwd().resolve(), _resolved(path)):
    raise errors.OutputExistsError(
        f'{flag} {path} is the current directory or holds it: choose a folder '
        'of its own')
  if path.exists() and not path.is_dir():
    raise errors.OutputExistsError(f'{flag} {path} is a file, not a folder')
  _check_creatable(path, flag)
  if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
    raise errors.OutputExistsError(f'{flag} {path}: cannot write into it '
                                   '(permission denied)')
  if path.is_dir() and any(p.name != LOCK for p in path.iterdir()):
    if not overwrite:
      raise errors.OutputExistsError(
          f'{flag} {path} already holds files from an earlier run; pass '
          '--overwrite to replace them, or choose another folder')
    check_replaceable(path, kind or '?', flag, inputs)
  return path


# ----------------------------------------------------------------------------
# One writer per output


class Lock:
  """An exclusive `flock` on `folder/LOCK`, held until `release` (or the
  process's death: the kernel drops it, so a killed writer's folder is
  recognisably stale)."""

  def __init__(self, folder: Path):
    self.fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(self.fd)
      raise
    os.ftruncate(self.fd, 0)
    os.write(self.fd, f'{os.getpid()}\n'.encode())

  def release(self) -> None:
    if self.fd is not None:
      os.close(self.fd)
      self.fd = None


def _holder(folder: Path) -> str:
  try:
    return f'pid {(folder / LOCK).read_text().strip() or "?"}'
  except OSError:
    return 'another process'


def is_locked(folder: str | os.PathLike) -> bool:
  """Whether a live process holds `folder/LOCK`."""
  try:
    fd = os.open(Path(folder) / LOCK, os.O_RDWR)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return False
  except OSError:
    return True
  finally:
    os.close(fd)


def lock_folder(folder: str | os.PathLike, flag: str, what: str) -> Lock:
  """Take the folder's lock or refuse (`OutputExistsError`) naming the
  process that holds it."""
  folder = Path(folder)
  try:
    return Lock(folder)
  except OSError as err:
    if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise errors.OutputExistsError(f'{flag} {what}: cannot lock {folder} ({err})'
                                     ) from None
    raise errors.OutputExistsError(
        f'{flag} {what}: another command ({_holder(folder)}) is writing it now; '
        'wait for it to finish or choose another folder') from None


def _claim_staging(path: Path, flag: str, resume: bool = False) -> tuple[Path, Lock]:
  """Create `.NAME.partial` atomically with its marker and a held lock; with
  `resume`, take over a killed writer's staging folder as it is."""
  staging = _staging(path)
  staging.parent.mkdir(parents=True, exist_ok=True)
  if resume and (staging / MARKER).is_file():
    return staging, lock_folder(staging, flag, str(path))
  for _ in range(2):
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.new-', dir=staging.parent))
    (tmp / MARKER).write_text(
        f'Written by a run that has not finished (or was killed); it becomes '
        f'{path.name} when the run completes. Do not use these files.\n')
    lock = Lock(tmp)
    try:
      os.rename(tmp, staging)
      return staging, lock
    except OSError as err:
      lock.release()
      shutil.rmtree(tmp, ignore_errors=True)
      if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
        raise
    # Staging exists: a live writer (refuse) or a killed one's (clear it).
    stale = lock_folder(staging, flag, str(path)) if (staging / LOCK).exists() \
        else None
    trash = staging.parent / f'.{path.name}.stale-{os.getpid()}'
    os.rename(staging, trash)
    if stale is not None:
      stale.release()
    shutil.rmtree(trash, ignore_errors=True)
  raise errors.OutputExistsError(f'{flag} {path}: another command is writing it '
                                 'now; wait for it or choose another folder')


def partial(path: str | os.PathLike) -> Path | None:
  """The staging folder a killed (or running) writer of `path` left, if
  any: what `output_folder(..., resume=True)` continues."""
  staging = _staging(Path(path))
  return staging if (staging / MARKER).is_file() else None


def check_resume(path: str | os.PathLike, resume: bool, overwrite: bool,
                 flag: str = '--out') -> None:
  """For a resumable output (`output_folder(..., resumable=True)`), before
  any work: a killed run's journaled work is never cleared without
  `overwrite` (its owner is told to pass --resume), and `resume` on a run
  that finished (nothing to continue) is refused rather than treated as a
  new run. `OutputExistsError`, one line, otherwise nothing."""
  left = partial(path)
  if left is not None and not (resume or overwrite):
    raise errors.OutputExistsError(
        f'{flag} {path}: a run that did not finish left its results in {left}; '
        'pass --resume to continue it, or --overwrite to start afresh')
  path = Path(path)
  if (resume and left is None and not overwrite and path.is_dir()
      and any(p.name != LOCK for p in path.iterdir())):
    raise errors.OutputExistsError(
        f'{flag} {path}: that run finished, so there is nothing to resume; write '
        'into another folder, or pass --overwrite to start afresh')


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, overwrite: bool = False,
                  flag: str = '--out', kind: str = 'output',
                  inputs: Inputs | None = None, resumable: bool = False,
                  resume: bool = False):
  """Yield the staging folder to write into; on success it becomes `path`,
  marked as jaxcrystal's output of `kind`.

  `path` must be new or empty, or (with `overwrite`) replaceable
  (`check_replaceable`); the old folder is deleted only once the new one is
  complete. On an exception the staging folder is removed; on a kill it
  stays, marked incomplete, and the next writer clears it.

  `resumable`: for work written as it goes (e.g. one relaxation per line
  of a journal), the staging folder is kept on an exception or a kill
  (still marked incomplete), and a later call with `resume` continues in
  it instead of clearing it (`check_resume` is applied: a killed run's work
  is cleared only with `overwrite`).
  """
  if resumable:
    check_resume(path, resume, overwrite, flag)
  path = check_writable(path, overwrite, flag, kind, inputs)
  staging, lock = _claim_staging(path, flag, resume=resumable and resume)
  try:
    yield staging
    write_owner(staging, kind)
    path = check_writable(path, overwrite, flag, kind, inputs)  # nothing new since
  except BaseException:
    if not resumable:
      shutil.rmtree(staging, ignore_errors=True)
    lock.release()
    raise
  old = None
  if path.exists():
    old = path.parent / f'.{path.name}.replaced-{os.getpid()}'
    os.rename(path, old)
  os.rename(staging, path)
  (path / MARKER).unlink()
  (path / LOCK).unlink()
  lock.release()
  if old is not None:
    shutil.rmtree(old)


def check_complete(file: str | os.PathLike) -> None:
  """Raise `IncompleteOutputError` if `file` lies in a folder (or under one,
  up to three levels) that an unfinished run is still marking incomplete."""
  file = Path(file).resolve()
  for folder in list(file.parents)[:3]:
    if (folder / MARKER).exists():
      raise errors.IncompleteOutputError(
          f'{file}: {folder} was written by a run that did not finish (it holds '
          f'{MARKER}); rerun it, and read the finished output folder')
