"""One shared symmetry helper (in the spirit of e3nn-jax's assert_equivariant)."""
import jax
import numpy as np


def random_orthogonal(rng: np.random.Generator, reflect: bool) -> np.ndarray:
  """A random 3x3 rotation, times -1 (a rotoinversion) if `reflect`."""
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  if np.linalg.det(q) < 0:
    q[:, 0] *= -1
  return -q if reflect else q


def assert_transform_consistent(fn, inputs, transform_in, transform_out, *,
                                atol=1e-4, rtol=1e-4, must_change=True):
  """Check fn(transform_in(x)) == transform_out(fn(x)) leaf by leaf.

  Also checks outputs are not all zero and, if `must_change`, that the
  transformation actually changed the inputs (a test that cannot fail is
  a defect).
  """
  out = fn(inputs)
  moved_in = transform_in(inputs)
  if must_change:
    changed = jax.tree_util.tree_map(
        lambda a, b: not np.allclose(np.asarray(a), np.asarray(b)), inputs, moved_in)
    assert any(jax.tree_util.tree_leaves(changed)), 'transform left inputs unchanged'
  got = fn(moved_in)
  want = transform_out(out)
  for leaf_out, leaf_got, leaf_want in zip(jax.tree_util.tree_leaves(out),
                                           jax.tree_util.tree_leaves(got),
                                           jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(leaf_got), np.asarray(leaf_want),
                               atol=atol, rtol=rtol)
  assert any(np.abs(np.asarray(l)).max() > 1e-6 for l in jax.tree_util.tree_leaves(out))
  return out
