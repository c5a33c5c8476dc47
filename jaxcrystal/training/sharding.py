"""Data parallelism with `jax.sharding`: batches split over local devices,
parameters replicated. The same code runs on one CPU, several host devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`) or a GPU."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcrystal.data import batch as batch_lib

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """A 1D mesh over the given (default: all local) devices."""
  devices = jax.local_devices() if devices is None else devices
  return Mesh(np.array(devices), (DATA_AXIS,))


def shard_batch(batch: batch_lib.CrystalBatch, mesh: Mesh) -> batch_lib.CrystalBatch:
  """Place a host batch with its leading (graph or atom) axis split over the
  mesh. Budgets must divide the device count (see `data.BucketedDataset`)."""
  def put(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % mesh.size:
      return jax.device_put(x, NamedSharding(mesh, P()))
    return jax.device_put(x, NamedSharding(mesh, P(DATA_AXIS)))
  return jax.tree_util.tree_map(put, batch)


def replicate(tree, mesh: Mesh):
  """Replicate every leaf of `tree` on all devices of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def initialize_distributed(coordinator: str, num_processes: int, process_id: int):
  """Multi-host start (one process per host): call before any other JAX call.

  Each host then sees its local devices through `jax.local_devices()` and
  feeds its own shard of the data.
  """
  jax.distributed.initialize(coordinator_address=coordinator,
                             num_processes=num_processes, process_id=process_id)
