"""Property regressors: networks that map a crystal to one number (formation
energy, energy per atom, ...), used to score generated structures against
the value they were asked for (issue 34).

A regressor is a flax module `(settings)` with
`__call__(batch, graph) -> [G]` standardised predictions (zero on padding),
its settings a frozen dataclass, and one registry entry:
`register_regressor(name, module_class, defaults)`.

Registered:
  cspnet_regressor  CSPNet's message-passing layers on the clean crystal
                    (species embedding, log atom count, Gram matrix,
                    Fourier features of fractional differences and a
                    Gaussian basis of nearest-image distances), mean-pooled
                    over atoms and read out by a two-layer MLP. Invariant to
                    rotations, translations, atom order and the choice of
                    unit cell's origin, by construction.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import cspnet
from jaxcrystal.generative import settings as settings_lib
from jaxcrystal.geometry import neighbors
from jaxcrystal.nn.layers import fourier_features
from jaxcrystal.nn.layers import gaussian_basis
from jaxcrystal.nn.layers import safe_norm
from jaxcrystal.nn.layers import segment_mean


@dataclasses.dataclass(frozen=True)
class CSPRegressorSettings(settings_lib.Settings):
  """The CSPNet regressor's settings.

  Attributes:
    hidden: node and edge width.
    num_layers: message-passing layers.
    num_freqs: Fourier frequencies per fractional axis.
    distance_basis: Gaussian basis functions of nearest-image distances.
    cutoff: the basis's radius (Angstrom).
  """
  hidden: int = 128
  num_layers: int = 3
  num_freqs: int = 32
  distance_basis: int = 32
  cutoff: float = 7.0

  def validate(self):
    for field in ('hidden', 'num_layers', 'num_freqs', 'distance_basis'):
      if getattr(self, field) < 1:
        raise ValueError(f'{field} must be >= 1, got {getattr(self, field)}')
    if not self.cutoff > 0:
      raise ValueError(f'cutoff must be > 0, got {self.cutoff}')


class CSPRegressor(nn.Module):
  """`(batch, graph) -> [G]`: one standardised value per crystal slot."""
  settings: CSPRegressorSettings

  @nn.compact
  def __call__(self, batch: batch_lib.CrystalBatch,
               graph: neighbors.NeighborList):
    s = self.settings
    g = batch.num_graph_slots
    node = nn.Embed(batch_lib.NUM_ELEMENTS, s.hidden, name='species_embed')(
        jnp.clip(batch.species - 1, 0, batch_lib.NUM_ELEMENTS - 1))
    log_count = jnp.log(jnp.maximum(batch.n_atoms, 1).astype(node.dtype))
    h = nn.Dense(s.hidden, name='node_embed')(
        jnp.concatenate([node, log_count[batch.graph_index][:, None]], -1))
    gram = jnp.einsum('gij,gkj->gik', batch.lattice, batch.lattice).reshape(g, 9)
    delta = batch.frac[graph.senders] - batch.frac[graph.receivers]
    vec = neighbors.edge_vectors(batch.frac, batch.atom_lattice(), graph)
    edges = jnp.concatenate([fourier_features(delta, s.num_freqs),
                             gaussian_basis(safe_norm(vec), s.distance_basis, s.cutoff)], -1)
    for layer in range(s.num_layers):
      h = cspnet.CSPLayer(s.hidden, name=f'layer_{layer}')(
          h, gram, edges, batch.graph_index, graph)
    h = nn.LayerNorm(name='final_norm')(h)
    pooled = segment_mean(h, batch.graph_index, g, batch.atom_mask)
    volume = jnp.abs(jnp.linalg.det(batch.lattice))
    per_atom_volume = volume / jnp.maximum(batch.n_atoms, 1)
    x = jnp.concatenate([pooled, jnp.log(jnp.maximum(per_atom_volume, 1e-3))[:, None]], -1)
    x = nn.silu(nn.Dense(s.hidden, name='readout_hidden')(x))
    return nn.Dense(1, name='readout')(x)[:, 0] * batch.graph_mask


REGRESSORS = settings_lib.Registry('property regressor')
entry = REGRESSORS.entry


def register_regressor(name: str, module: Callable, defaults: settings_lib.Settings) -> None:
  """Add a regressor: `module(settings)` a flax module mapping
  `(batch, graph) -> [G]`."""
  REGRESSORS.register(name, module, defaults)


register_regressor('cspnet_regressor', CSPRegressor, CSPRegressorSettings())
