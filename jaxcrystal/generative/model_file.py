"""One portable file for a trained model: `pretrained/NAME.jcm`.

A zip archive written with `numpy.savez` (read with `allow_pickle=False`):

  meta          JSON (a 0-d string array): format 'jaxcrystal-model',
                version, the run's resolved `TrainConfig` (model, sampler
                defaults, ...), its data record (file sha256s, the largest
                structure, the atoms-per-crystal histogram de novo sampling
                draws from), the checkpoint step and which one, the
                parameter paths with their shapes and dtype, and the sha256
                of the parameter bytes.
  p0, p1, ...   the (EMA) parameter arrays in `meta['params']` order.

`read(path)` checks all of it: a file that is not a zip, is cut short,
belongs to another program or version, or whose parameters do not hash to
the recorded sha256 raises `ModelFileError` in one line naming the file and
what is wrong. `generate.load_run` reads these files and run directories
alike.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import jax
import numpy as np

from jaxcrystal import errors
from jaxcrystal.data import io as io_lib
from jaxcrystal.training import checkpoints

FORMAT = 'jaxcrystal-model'
VERSION = 1
SUFFIX = '.jcm'


class ModelFileError(errors.UserError, ValueError):
  """A model file that cannot be used: damaged, truncated, edited or foreign."""


def with_suffix(path: str | Path) -> Path:
  """`path` ending in `.jcm` (added if it has another ending or none)."""
  path = Path(path)
  return path if path.suffix == SUFFIX else path.with_name(path.name + SUFFIX)


def resolve(path: str | Path) -> Path | None:
  """The model file `path` names (`pretrained/NAME` finds
  `pretrained/NAME.jcm`), or None if it names none (a run directory)."""
  path = Path(path)
  if path.is_file():
    return path
  if not path.name:  # '', '.', '/': a folder at most
    return None
  named = with_suffix(path)
  return named if named.is_file() else None


def _digest(arrays: list[np.ndarray]) -> str:
  h = hashlib.sha256()
  for a in arrays:
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def write(path: str | Path, params, config_dict: dict, step: int, which: str,
          extra: dict | None = None) -> dict:
  """Write `params` (a pytree of arrays) with the run's `config_dict`
  (`TrainConfig.to_dict()` plus its 'data' record) atomically to `path`.
  Returns the meta record."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  arrays = [np.asarray(leaf, np.float32) if np.issubdtype(np.asarray(leaf).dtype,
                                                          np.floating)
            else np.asarray(leaf) for _, leaf in leaves]
  meta = dict(format=FORMAT, version=VERSION, config=config_dict, step=int(step),
              which=str(which),
              params=[dict(path=jax.tree_util.keystr(k), shape=list(a.shape),
                           dtype=a.dtype.str) for (k, _), a in zip(leaves, arrays)],
              params_sha256=_digest(arrays), **(extra or {}))
  text = json.dumps(io_lib.strict_json(meta)[0], sort_keys=True)
  with io_lib.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, meta=np.array(text), **{f'p{i}': a for i, a in enumerate(arrays)})
  return meta


def _fail(path: Path, what: str):
  raise ModelFileError(f'{path}: {what}')


def _meta(z, path: Path) -> dict:
  """The checked meta record of an open model file."""
  if 'meta' not in z.files:
    _fail(path, f'not a jaxcrystal model file (no meta record; holds {sorted(z.files)[:5]})')
  meta = json.loads(str(z['meta']))
  if not isinstance(meta, dict) or meta.get('format') != FORMAT:
    _fail(path, f'not a jaxcrystal model file (format {meta.get("format")!r})'
          if isinstance(meta, dict) else 'not a jaxcrystal model file')
  if meta.get('version') != VERSION:
    _fail(path, f'model file version {meta.get("version")!r}; this jaxcrystal reads '
          f'version {VERSION} (update jaxcrystal, or export the run again)')
  return meta


def _open(path: Path, read_params: bool) -> tuple[dict, list[np.ndarray]]:
  if not zipfile.is_zipfile(path):
    _fail(path, 'not a jaxcrystal model file (not a zip archive: truncated, or '
          'another kind of file)')
  try:
    with np.load(path, allow_pickle=False) as z:
      meta = _meta(z, path)
      arrays = [z[f'p{i}'] for i in range(len(meta['params']))] if read_params else []
  except ModelFileError:
    raise
  except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, TypeError) as err:
    _fail(path, f'damaged or truncated ({checkpoints.first_line(err)})')
  return meta, arrays


def read_meta(path: str | Path) -> dict:
  """The meta record of a model file (format and version checked; the
  parameters are neither read nor hashed: `read` does that)."""
  return _open(Path(path), read_params=False)[0]


def read(path: str | Path) -> tuple[dict, list[np.ndarray]]:
  """(meta, parameter arrays in meta['params'] order) of a model file,
  checked; `ModelFileError` naming the file and the fault otherwise."""
  path = Path(path)
  meta, arrays = _open(path, read_params=True)
  for spec, a in zip(meta['params'], arrays):
    if list(a.shape) != spec['shape'] or a.dtype.str != spec['dtype']:
      _fail(path, f"parameter {spec['path']} is {a.dtype.str}{list(a.shape)}, the "
            f"record says {spec['dtype']}{spec['shape']}")
  if _digest(arrays) != meta.get('params_sha256'):
    _fail(path, 'the parameters do not match their recorded sha256 (the file was '
          'edited or damaged)')
  return meta, arrays


def params_like(meta: dict, arrays: list[np.ndarray], like, path: str | Path):
  """The parameter tree of `like` (e.g. `jax.eval_shape` of the model's
  init) filled from a model file's arrays; `ModelFileError` naming the
  first differing paths if the file holds another model's parameters."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in leaves}
  have = {spec['path']: tuple(spec['shape']) for spec in meta['params']}
  if want != have:
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[:3]
    raise ModelFileError(f'{path}: its parameters do not fit its model config '
                         f'(first differences: {diff})')
  by_path = dict(zip((spec['path'] for spec in meta['params']), arrays))
  return jax.tree_util.tree_unflatten(
      treedef, [by_path[jax.tree_util.keystr(k)] for k, _ in leaves])
