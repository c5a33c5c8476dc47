"""Input pipeline: deterministic, bucketed, padded batches.

Crystals are grouped into size buckets; each bucket has its own static budget
(so a Carbon-24 batch of 6-atom cells is not padded to 24 atoms per cell), and
each budget compiles once. The order of batches is a pure function of
(seed, epoch), so training resumed at step s sees exactly the batches an
uninterrupted run would have seen from step s.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import ase
import numpy as np

from jaxcrystal.data import batch as batch_lib


@dataclasses.dataclass
class BucketedDataset:
  """Crystals split into size buckets with one padding budget each.

  Attributes:
    structures: the crystals.
    batch_size: crystals per batch.
    bucket_edges: upper atom-count bound of each bucket (ascending).
    num_devices: budgets are rounded so leading axes divide this.
    properties: names of per-crystal values (`info` of each structure, a
      data file's property columns) that batches carry as `conditions`.
  """
  structures: Sequence[ase.Atoms]
  batch_size: int
  bucket_edges: tuple[int, ...] = ()
  num_devices: int = 1
  properties: tuple[str, ...] = ()

  def __post_init__(self):
    if not self.structures:
      raise ValueError('BucketedDataset: no structures')
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {self.batch_size}')
    sizes = np.array([len(s) for s in self.structures])
    edges = sorted(set(self.bucket_edges) | {int(sizes.max())})
    edges = [e for e in edges if e <= sizes.max()]
    self.bucket_edges = tuple(edges)
    self.sizes = sizes
    self.bucket_of = np.searchsorted(np.array(edges), sizes)
    self.members = [np.flatnonzero(self.bucket_of == b) for b in range(len(edges))]
    # A bucket smaller than a batch gets a budget of its own size: padding a
    # lone 16-atom crystal to a full batch would waste most of its step.
    self.budgets = [self._budget(edge, min(self.batch_size, len(m)))
                    for edge, m in zip(edges, self.members)]
    # Arrays built once: each batch is a gather, not a walk over ase.Atoms.
    self.packed = batch_lib.PackedStructures.from_atoms(self.structures,
                                                        properties=self.properties)

  def _budget(self, max_per_graph: int, per_batch: int) -> batch_lib.Budget:
    d = self.num_devices
    per_batch = max(per_batch, 1)
    graphs = int(np.ceil((per_batch + 1) / d) * d)
    atoms = int(np.ceil((per_batch * max_per_graph + 1) / (8 * d)) * 8 * d)
    return batch_lib.Budget(graphs, atoms, max_per_graph)

  def steps_per_epoch(self) -> int:
    return int(sum(int(np.ceil(len(m) / self.batch_size)) for m in self.members
                   if len(m)))

  def epoch_plan(self, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
    """The (bucket, indices) of every batch of one epoch, in order."""
    # Memoised for the current epoch only: it is asked for at every step.
    cached = getattr(self, '_plan_cache', None)
    if cached is not None and cached[0] == (seed, epoch):
      return cached[1]
    plan = self._make_plan(seed, epoch)
    self._plan_cache = ((seed, epoch), plan)
    return plan

  def _make_plan(self, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng([seed, epoch])
    plan = []
    for b, members in enumerate(self.members):
      if not len(members):
        continue
      order = rng.permutation(members)
      for i in range(0, len(order), self.batch_size):
        plan.append((b, order[i:i + self.batch_size]))
    perm = rng.permutation(len(plan))
    return [plan[i] for i in perm]

  def batch_for_step(self, seed: int, step: int) -> batch_lib.CrystalBatch:
    """The host batch used at global training step `step` (0-based)."""
    per_epoch = self.steps_per_epoch()
    epoch, index = divmod(step, per_epoch)
    bucket, members = self.epoch_plan(seed, epoch)[index]
    return self.packed.batch(members, self.budgets[bucket])

  def all_batches(self):
    """Every crystal once, in file order within buckets (for evaluation)."""
    for b, members in enumerate(self.members):
      for i in range(0, len(members), self.batch_size):
        yield self.packed.batch(members[i:i + self.batch_size], self.budgets[b])


def default_bucket_edges(sizes: Sequence[int], num_buckets: int = 4) -> tuple[int, ...]:
  """Bucket bounds at size quantiles (at most `num_buckets` buckets)."""
  sizes = np.asarray(sizes)
  qs = np.quantile(sizes, np.linspace(0, 1, num_buckets + 1)[1:])
  return tuple(sorted({int(np.ceil(q)) for q in qs}))
