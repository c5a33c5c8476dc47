"""Space groups by spglib, guarded: the one place spglib is asked for a
crystal's symmetry dataset (validation, the derived space_group property,
symmetrizing). Absurd cells (a failed sample's) are not passed to spglib,
which crashes or runs for minutes on them; what its C code prints is
counted, not shown.

  absurd_cell(lattice) -> bool
  symmetry_dataset(atoms, symprec, messages) -> spglib dataset or None
  capture_c_stderr(lines)   context manager
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings

import ase
import numpy as np

MAX_SYMMETRY_LENGTH = 1000.0  # Angstrom; longer lattice vectors get no space group


def spglib_cell(atoms: ase.Atoms) -> tuple:
  """(lattice [3, 3] A, frac [N, 3] in [0, 1), numbers [N]): spglib's cell."""
  return (np.asarray(atoms.cell[:], float), atoms.get_scaled_positions(wrap=True),
          np.asarray(atoms.numbers))


def symmetry_dataset(atoms: ase.Atoms, symprec: float, messages: list | None = None):
  """spglib's symmetry dataset of `atoms` within `symprec` Angstrom, or None
  where there is none: an absurd or empty cell, or spglib finding no group
  (overlapping atoms) or raising (degenerate cells, in recent versions).
  Lines spglib's C code prints are appended to `messages`."""
  import spglib
  if not len(atoms) or absurd_cell(atoms.cell[:]):
    return None
  try:
    with warnings.catch_warnings():  # spglib's deprecation notice, per call
      warnings.simplefilter('ignore', DeprecationWarning)
      with capture_c_stderr(messages if messages is not None else []):
        return spglib.get_symmetry_dataset(spglib_cell(atoms), symprec=symprec)
  except Exception:  # spglib raises on degenerate cells in recent versions
    return None


def absurd_cell(lattice) -> bool:
  """True for a cell no crystal has: non-finite, a lattice vector longer than
  MAX_SYMMETRY_LENGTH Angstrom, or nearly flat (volume under 1e-3 of the
  product of the edge lengths). Failed samples produce these, and spglib and
  pymatgen's Niggli reduction crash or run for minutes on them.

  lattice: [3, 3] rows are lattice vectors, Angstrom.
  """
  lattice = np.asarray(lattice, float)
  if lattice.shape != (3, 3) or not np.all(np.isfinite(lattice)):
    return True
  lengths = np.linalg.norm(lattice, axis=1)
  return bool(lengths.max() > MAX_SYMMETRY_LENGTH or
              abs(np.linalg.det(lattice)) < 1e-3 * np.prod(lengths))


@contextlib.contextmanager
def capture_c_stderr(lines: list):
  """Capture what C code writes to file descriptor 2 into `lines`.

  spglib prints warnings such as 'spglib: ssm_get_exact_positions failed.'
  straight to fd 2 when it cannot refine a sample's symmetry; `space_group`
  already reports that case as (0, ''), so the lines are counted instead of
  shown. Lines from anything else are passed on to stderr.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with tempfile.TemporaryFile() as tmp:
      os.dup2(tmp.fileno(), 2)
      try:
        yield
      finally:
        os.dup2(saved, 2)
        tmp.seek(0)
        text = tmp.read().decode(errors='replace')
    for line in text.splitlines():
      if line.startswith('spglib'):
        lines.append(line)
      elif line.strip():
        print(line, file=sys.stderr)
  finally:
    os.close(saved)
