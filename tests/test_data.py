import numpy as np
import pytest

from jaxcrystal.data import pipeline as data_lib
from jaxcrystal.data import datasets


def _dataset(batch_size=4, edges=(4, 8)):
  return data_lib.BucketedDataset(datasets.builtin_structures(), batch_size, edges)


def test_epoch_covers_every_structure_once_and_is_deterministic():
  ds = _dataset()
  plan = ds.epoch_plan(seed=3, epoch=0)
  seen = np.concatenate([idx for _, idx in plan])
  assert sorted(seen.tolist()) == list(range(21))
  assert len(plan) == ds.steps_per_epoch()
  again = ds.epoch_plan(seed=3, epoch=0)
  assert all(np.array_equal(a[1], b[1]) for a, b in zip(plan, again))
  other = ds.epoch_plan(seed=3, epoch=1)
  assert any(not np.array_equal(a[1], b[1]) for a, b in zip(plan, other))


def test_buckets_keep_padding_small():
  ds = _dataset()
  assert ds.bucket_edges == (4, 8, 16)
  for b, budget in enumerate(ds.budgets):
    assert budget.max_atoms_per_graph == ds.bucket_edges[b]
    assert all(len(ds.structures[i]) <= budget.max_atoms_per_graph for i in ds.members[b])
  batch = ds.batch_for_step(seed=0, step=5)
  sizes = batch.n_atoms[batch.graph_mask]
  assert sizes.max() <= batch.max_atoms_per_graph
  # step s of epoch 1 is the (s - steps_per_epoch)-th batch of epoch 1's plan
  s = ds.steps_per_epoch() + 2
  bucket, idx = ds.epoch_plan(0, 1)[2]
  b = ds.batch_for_step(0, s)
  assert int(b.graph_mask.sum()) == len(idx)


def test_budgets_divide_device_count():
  ds = data_lib.BucketedDataset(datasets.builtin_structures(), 5, (8,), num_devices=4)
  for budget in ds.budgets:
    assert budget.max_graphs % 4 == 0 and budget.max_atoms % 4 == 0


def test_bad_arguments():
  with pytest.raises(ValueError, match='no structures'):
    data_lib.BucketedDataset([], 4)
  with pytest.raises(ValueError, match='batch_size'):
    data_lib.BucketedDataset(datasets.builtin_structures(), 0)


def _assert_batches_equal(old, new):
  for field in ('lattice', 'frac', 'species', 'graph_index', 'atom_mask',
                'graph_mask', 'n_atoms'):
    a, b = getattr(old, field), getattr(new, field)
    assert a.dtype == b.dtype and a.shape == b.shape, field
    np.testing.assert_array_equal(a, b, err_msg=field)
  assert old.max_atoms_per_graph == new.max_atoms_per_graph


def test_packed_batches_equal_the_atoms_path_bit_for_bit():
  """Every batch of four epochs and of the evaluation pass, in every
  bucket, against `batch_from_atoms` of the same crystals; one crystal has
  a coordinate just below 1, which float32 rounds to 1.0 (wrapped to 0)."""
  import ase
  from jaxcrystal.data import batch as batch_lib
  structures = list(datasets.builtin_structures())
  edge = ase.Atoms('Cu2', cell=np.diag([3.6, 3.7, 3.8]), pbc=True,
                   scaled_positions=[[1 - 1e-9, 0.5, 0.25], [0.1, 1 - 2e-9, 0.0]])
  structures.append(edge)
  ds = data_lib.BucketedDataset(structures, 4, (4, 8))
  assert len(ds.budgets) == 3
  buckets = set()
  for step in range(4 * ds.steps_per_epoch()):
    epoch, index = divmod(step, ds.steps_per_epoch())
    bucket, members = ds.epoch_plan(7, epoch)[index]
    buckets.add(bucket)
    _assert_batches_equal(batch_lib.batch_from_atoms(
        [structures[i] for i in members], ds.budgets[bucket]), ds.batch_for_step(7, step))
  assert buckets == {0, 1, 2}
  count = 0
  for b, members in enumerate(ds.members):
    for i in range(0, len(members), 4):
      chunk = members[i:i + 4]
      old = batch_lib.batch_from_atoms([structures[k] for k in chunk], ds.budgets[b])
      _assert_batches_equal(old, list(ds.all_batches())[count])
      count += 1
  packed = ds.packed.batch([len(structures) - 1], ds.budgets[0])
  assert packed.frac[0, 0] == 0.0 and packed.frac[1, 1] == 0.0   # wrapped
  with pytest.raises(batch_lib.BudgetError, match='exceed max_graphs'):
    ds.packed.batch(list(range(6)), ds.budgets[0])
