"""Output folders that are never mixed with an earlier run's and never look
complete when the run that wrote them was killed.

`output_folder(path, overwrite)` refuses a non-empty folder unless
`overwrite` is given (then the old folder goes first), stages everything in a
hidden sibling `.NAME.partial` that holds an `INCOMPLETE` marker, and renames
it onto `path` only when the run finished. A killed run therefore leaves no
`path` at all, only the marked sibling; `check_complete` (called by every
reader) refuses files inside a marked folder.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from jaxcrystal import errors

MARKER = 'INCOMPLETE'


def _staging(path: Path) -> Path:
  return path.parent / f'.{path.name}.partial'


def check_writable(path: str | os.PathLike, overwrite: bool,
                   flag: str = '--out') -> Path:
  """Refuse (OutputExistsError) a `path` that is a file, or a non-empty
  folder when `overwrite` is False. Returns `path`."""
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise errors.OutputExistsError(f'{flag} {path} is a file, not a folder')
  if path.is_dir() and any(path.iterdir()) and not overwrite:
    raise errors.OutputExistsError(
        f'{flag} {path} already holds files from an earlier run; pass '
        '--overwrite to replace them, or choose another folder')
  return path


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, overwrite: bool = False,
                  flag: str = '--out'):
  """Yield the staging folder to write into; on success it becomes `path`.

  With `overwrite`, an existing `path` is deleted before anything is written
  (so a killed run cannot leave old results beside new ones). On an exception
  the staging folder is removed; on a kill it stays, marked incomplete.
  """
  path = check_writable(path, overwrite, flag)
  staging = _staging(path)
  if staging.exists():  # left by a killed run
    shutil.rmtree(staging)
  if path.exists():
    shutil.rmtree(path)
  staging.mkdir(parents=True)
  (staging / MARKER).write_text(
      f'Written by a run that has not finished (or was killed); it becomes '
      f'{path.name} when the run completes. Do not use these files.\n')
  try:
    yield staging
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  (staging / MARKER).unlink()
  os.replace(staging, path)


def check_complete(file: str | os.PathLike) -> None:
  """Raise `IncompleteOutputError` if `file` lies in a folder (or under one,
  up to three levels) that an unfinished run is still marking incomplete."""
  file = Path(file).resolve()
  for folder in list(file.parents)[:3]:
    if (folder / MARKER).exists():
      raise errors.IncompleteOutputError(
          f'{file}: {folder} was written by a run that did not finish (it holds '
          f'{MARKER}); rerun it, and read the finished output folder')
