"""CartesianEGNN: E(3)-equivariant message passing on a periodic radius graph.
Registered as 'cartesian_egnn' in `networks.py`."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.geometry import neighbors
from jaxcrystal.nn.layers import gaussian_basis
from jaxcrystal.nn.layers import safe_norm
from jaxcrystal.nn.layers import sinusoidal_embedding

NUM_ELEMENTS = batch_lib.NUM_ELEMENTS


class CartesianEGNN(nn.Module):
  """E(3)-equivariant message passing on a periodic radius graph.

  Messages use invariant inputs only (node states and a Gaussian basis of
  minimum-image distances); the vector output of atom i is
  sum_j w(m_ij) r_ij / |r_ij|, so it rotates with the structure and ignores
  translations.

  Attributes:
    hidden, num_layers: widths and depth.
    num_basis, cutoff: radial basis size and cutoff (Angstrom).
    time_dim: width of the time embedding (0: no time conditioning).
    num_species: type classes.
  """
  hidden: int = 64
  num_layers: int = 3
  num_basis: int = 16
  cutoff: float = 5.0
  time_dim: int = 64
  num_species: int = NUM_ELEMENTS

  @nn.compact
  def __call__(self, batch: batch_lib.CrystalBatch, nbrs: neighbors.NeighborList,
               t: Optional[jax.Array] = None) -> jax.Array:
    """Returns `[N, 3]` vectors (Angstrom scale), zero on padding atoms."""
    batch.validate_shapes()
    n = batch.num_atom_slots
    h = nn.Embed(self.num_species, self.hidden, name='species_embed')(
        jnp.clip(batch.species - 1, 0, self.num_species - 1))
    if self.time_dim:
      if t is None:
        raise ValueError('CartesianEGNN(time_dim > 0) needs times t [G]')
      t_emb = sinusoidal_embedding(t, self.time_dim)[batch.graph_index]
      h = nn.Dense(self.hidden, name='node_embed')(jnp.concatenate([h, t_emb], -1))
    vec = neighbors.edge_vectors(batch.frac, batch.atom_lattice(), nbrs)
    dist = safe_norm(vec)
    unit = vec / dist[:, None]
    rbf = gaussian_basis(dist, self.num_basis, self.cutoff)
    mask = nbrs.edge_mask & (dist < self.cutoff)
    recv, send = nbrs.receivers, nbrs.senders
    out = jnp.zeros((n, 3), h.dtype)
    for layer in range(self.num_layers):
      pre = (nn.Dense(self.hidden, name=f'edge_receiver_{layer}')(h)[recv]
             + nn.Dense(self.hidden, use_bias=False, name=f'edge_sender_{layer}')(h)[send]
             + nn.Dense(self.hidden, use_bias=False, name=f'edge_rbf_{layer}')(rbf))
      m = nn.silu(nn.Dense(self.hidden, name=f'edge_out_{layer}')(nn.silu(pre)))
      m = m * mask[:, None]
      weight = nn.Dense(1, name=f'vector_weight_{layer}')(m)[:, 0] * mask
      out = out + jax.ops.segment_sum(weight[:, None] * unit, recv, n)
      agg = jax.ops.segment_sum(m, recv, n)
      upd = nn.silu(nn.Dense(self.hidden, name=f'node_{layer}')(
          jnp.concatenate([h, agg], -1)))
      h = nn.LayerNorm(name=f'norm_{layer}')(h + upd)
    return out * batch.atom_mask[:, None]
