"""Graph Laplacians L = D - A for graph-structured diffusion (host, numpy).

Grids (1D, 2D, 3D), molecular graphs from covalent bonds, and crystal graphs
from a periodic cutoff. Small graphs come back dense `[n, n]`; with
`sparse=True` (or above `SPARSE_ABOVE` nodes) a `scipy.sparse.csr_matrix`.
"""
from __future__ import annotations

import ase
import numpy as np
import scipy.sparse as sp

SPARSE_ABOVE = 2000  # nodes


def from_edges(num_nodes: int, senders, receivers, weights=None,
               sparse: bool | None = None):
  """Symmetric Laplacian of undirected edges (each pair once or in both
  directions; self loops dropped). Unweighted repeats count once; weights of
  repeated pairs add up."""
  s, r = np.asarray(senders, int), np.asarray(receivers, int)
  keep = s != r
  s, r = s[keep], r[keep]
  w = np.ones(len(s)) if weights is None else np.asarray(weights, float)[keep]
  adj = sp.coo_matrix((w, (s, r)), shape=(num_nodes, num_nodes)).tocsr()
  if weights is None:  # repeated pairs (periodic images) are one edge
    adj = (adj > 0).astype(float)
  adj = adj.maximum(adj.T)  # undirected
  lap = sp.diags(np.asarray(adj.sum(1)).ravel()) - adj
  if sparse is None:
    sparse = num_nodes > SPARSE_ABOVE
  return lap.tocsr() if sparse else lap.toarray()


def grid(shape: tuple[int, ...], periodic: bool = False, sparse: bool | None = None):
  """Laplacian of a 1D, 2D or 3D grid of `shape` nodes (row-major order),
  nearest-neighbour edges, optionally wrapped."""
  if not 1 <= len(shape) <= 3 or min(shape) < 1:
    raise ValueError(f'grid shape must have 1 to 3 positive sizes, got {shape}')
  index = np.arange(int(np.prod(shape))).reshape(shape)
  senders, receivers = [], []
  for axis, size in enumerate(shape):
    if size < 2:
      continue
    src = index
    dst = np.roll(index, -1, axis=axis)
    if not periodic:
      sl = [slice(None)] * len(shape)
      sl[axis] = slice(0, size - 1)
      src, dst = src[tuple(sl)], dst[tuple(sl)]
    senders.append(src.ravel())
    receivers.append(dst.ravel())
  if not senders:
    return from_edges(index.size, [], [], sparse=sparse)
  return from_edges(index.size, np.concatenate(senders), np.concatenate(receivers),
                    sparse=sparse)


def molecule(atoms: ase.Atoms, scale: float = 1.2, sparse: bool | None = None):
  """Laplacian of the bond graph: atoms closer than `scale` x the sum of
  their covalent radii are bonded."""
  from ase.neighborlist import natural_cutoffs, neighbor_list
  i, j = neighbor_list('ij', atoms, natural_cutoffs(atoms, mult=scale),
                       self_interaction=False)
  return from_edges(len(atoms), i, j, sparse=sparse)


def crystal(atoms: ase.Atoms, cutoff: float, sparse: bool | None = None):
  """Laplacian of a crystal's periodic graph: i ~ j if any image of j is
  within `cutoff` A of i (several images count once)."""
  from ase.neighborlist import neighbor_list
  i, j = neighbor_list('ij', atoms, cutoff)
  return from_edges(len(atoms), i, j, sparse=sparse)


def edges(lap) -> tuple[np.ndarray, np.ndarray]:
  """(senders, receivers) of every directed edge (both directions)."""
  lap = sp.csr_matrix(lap)
  coo = lap.tocoo()
  off = coo.row != coo.col
  return coo.col[off].astype(np.int32), coo.row[off].astype(np.int32)


def check_laplacian(lap) -> None:
  """Raise ValueError unless `lap` is symmetric with zero row sums and a
  non-positive off-diagonal (a graph Laplacian)."""
  dense = lap.toarray() if sp.issparse(lap) else np.asarray(lap)
  if dense.ndim != 2 or dense.shape[0] != dense.shape[1]:
    raise ValueError(f'Laplacian must be square, got {dense.shape}')
  if not np.allclose(dense, dense.T):
    raise ValueError('Laplacian is not symmetric')
  if not np.allclose(dense.sum(1), 0.0):
    raise ValueError('Laplacian rows do not sum to zero')
  off = dense - np.diag(np.diag(dense))
  if np.any(off > 1e-12):
    raise ValueError('Laplacian has positive off-diagonal entries')

