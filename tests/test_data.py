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
