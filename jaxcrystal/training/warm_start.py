"""Start a run from another run's parameters (fine-tuning, `--init_from`).

The typical use: a pretrained unconditional model taught a condition. The
new model has every parameter of the old one plus the condition's
embedding; the old parameters are copied, the new ones keep their fresh
initialisation. Anything else (a parameter of the source with no place in
the new model, or with another shape) means a different network and is
refused in one line naming the parameter.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcrystal import errors


def _flat(tree) -> dict:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def transplant(source, target, where: str):
  """`target`'s parameter tree with every leaf that `source` holds at the
  same path replaced by the source's (cast to the target's dtype).

  Args:
    source: parameter tree to copy from (e.g. a pretrained model's EMA
      parameters).
    target: freshly initialised parameter tree of the new model.
    where: names the source in errors (a path).
  Returns:
    (tree, taken, new): the merged tree, the number of leaves copied, and
    the sorted paths of the target's leaves the source lacks.
  Raises:
    errors.UserError: a source leaf whose path the target lacks or whose
      shape differs, or no leaf in common.
  """
  have, want = _flat(source), _flat(target)
  for path, leaf in sorted(have.items()):
    if path not in want:
      raise errors.UserError(f'--init_from {where}: its parameter {path} has no place in '
                             'this model (another network or task?)')
    if tuple(leaf.shape) != tuple(want[path].shape):
      raise errors.UserError(f'--init_from {where}: parameter {path} is '
                             f'{list(leaf.shape)} there and {list(want[path].shape)} here '
                             '(another network size?)')
  if not have:
    raise errors.UserError(f'--init_from {where}: it holds no parameters')
  leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
  merged = [jnp.asarray(have[jax.tree_util.keystr(path)], leaf.dtype)
            if jax.tree_util.keystr(path) in have else leaf for path, leaf in leaves]
  new = sorted(set(want) - set(have))
  return jax.tree_util.tree_unflatten(treedef, merged), len(have), new
