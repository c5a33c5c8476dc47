"""CSPNet: periodic-E(3)-invariant crystal denoiser in the style of DiffCSP.

Inputs are invariant by construction: fractional differences enter only
through Fourier features with integer frequencies (periodic), the lattice
only through its Gram matrix L L^T (rotation/reflection invariant). Outputs:
lattice noise `phi @ L` (rows rotate with the lattice), fractional score and
type logits (invariant). Registered as 'cspnet' in `networks.py`.

Shapes: G crystal slots, N atom slots, E edge slots, K type classes. Every
output is zero on padding.
"""
from __future__ import annotations

from typing import Optional

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import conditions as conditions_lib
from jaxcrystal.geometry import neighbors
from jaxcrystal.nn.layers import fourier_features
from jaxcrystal.nn.layers import gaussian_basis
from jaxcrystal.nn.layers import safe_norm
from jaxcrystal.nn.layers import segment_mean
from jaxcrystal.nn.layers import sinusoidal_embedding

NUM_ELEMENTS = batch_lib.NUM_ELEMENTS


@flax.struct.dataclass
class ScoreOutput:
  """Network outputs.

  Attributes:
    lattice_noise: [G, 3, 3] predicted lattice noise (rows rotate with L).
    frac_score: [N, 3] predicted (normalised) fractional score.
    type_logits: [N, K] predicted type noise / logits (zeros when unused).
  """
  lattice_noise: jax.Array
  frac_score: jax.Array
  type_logits: jax.Array


@flax.struct.dataclass
class PairFourier:
  """sin and cos parts of the Fourier features of each unordered pair (i < j)
  of a fully connected [G, A, A] graph: `sin, cos: [G, P, 3 F]`."""
  sin: jax.Array
  cos: jax.Array
  block: tuple[int, int] = flax.struct.field(pytree_node=False)


def pair_fourier(batch: batch_lib.CrystalBatch, block: tuple[int, int],
                 num_freqs: int) -> PairFourier:
  """Fourier features of f_j - f_i for the unordered pairs i < j only."""
  g, a = block
  index, _ = batch.dense_atom_index()
  frac = batch.frac[index]                          # [G, A, 3]
  iu, ju = np.triu_indices(a, 1)
  delta = frac[:, ju] - frac[:, iu]                 # [G, P, 3]
  k = 2.0 * jnp.pi * jnp.arange(num_freqs, dtype=delta.dtype)
  x = (delta[..., None] * k).reshape(g, len(iu), 3 * num_freqs)
  return PairFourier(jnp.sin(x), jnp.cos(x), block)


def project_pair_fourier(pf: PairFourier, kernel: jax.Array) -> jax.Array:
  """`fourier_features(f_j - f_i) @ kernel` for every edge of the dense block,
  `-> [G * A * A, H]`, from one matmul per unordered pair.

  With kernel = [W_sin; W_cos], edge (i, j) gets sin W_sin + cos W_cos and
  edge (j, i) the same with the sine part negated (sine is odd, cosine even);
  self edges get the constant sum of W_cos rows (cos 0 = 1, sin 0 = 0).
  """
  g, a = pf.block
  half = pf.sin.shape[-1]
  s = pf.sin @ kernel[:half]                        # [G, P, H]
  c = pf.cos @ kernel[half:]
  iu, ju = np.triu_indices(a, 1)
  out = jnp.broadcast_to(jnp.sum(kernel[half:], 0), (g, a, a, kernel.shape[1]))
  out = out.at[:, iu, ju].set(c + s).at[:, ju, iu].set(c - s)
  return out.reshape(g * a * a, -1)


class CSPLayer(nn.Module):
  """One residual message-passing layer of CSPNet.

  The first edge layer W [h_i; h_j; gram; fourier] is evaluated as
  W_i h_i + W_j h_j + W_g gram + W_f fourier: the node parts per atom and the
  lattice part per crystal, then gathered, instead of one matmul per edge;
  on fully connected graphs the Fourier part is one matmul per atom pair.
  """
  hidden: int

  @nn.compact
  def __call__(self, h, gram, edge_features, graph_index, nbrs: neighbors.NeighborList,
               pairs: Optional[PairFourier] = None):
    num_atoms = h.shape[0]
    x = nn.LayerNorm(name='norm')(h)
    recv, send = nbrs.receivers, nbrs.senders
    feat_dim = (2 * pairs.sin.shape[-1] if pairs is not None
                else edge_features.shape[-1])
    kernel = self.param('edge_features', nn.initializers.lecun_normal(),
                        (feat_dim, self.hidden))
    edge_term = (project_pair_fourier(pairs, kernel) if pairs is not None
                 else edge_features @ kernel)
    pre = (nn.Dense(self.hidden, name='edge_receiver')(x)[recv]
           + nn.Dense(self.hidden, use_bias=False, name='edge_sender')(x)[send]
           + nn.Dense(self.hidden, use_bias=False, name='edge_lattice')(gram)[
               graph_index[recv]]
           + edge_term)
    m = nn.silu(nn.Dense(self.hidden, name='edge_out')(nn.silu(pre)))
    agg = segment_mean(m, recv, num_atoms, nbrs.edge_mask)
    upd = nn.Dense(self.hidden, name='node_in')(jnp.concatenate([x, agg], -1))
    upd = nn.silu(nn.Dense(self.hidden, name='node_out')(nn.silu(upd)))
    return h + upd


class CSPNet(nn.Module):
  """Periodic-E(3)-invariant crystal denoiser (DiffCSP's CSPNet design).

  Attributes:
    hidden: node and edge width.
    num_layers: message-passing layers.
    num_freqs: Fourier frequencies per fractional axis (edge features 6 F).
    time_dim: sinusoidal time-embedding width.
    num_species: type classes K (atomic numbers 1..K).
    predict_types: de novo mode: node input is the noisy one-hot type vector
      and a type head is added.
    distance_basis: if > 0, Gaussian basis of edge lengths (Angstrom) is added
      to the edge features (useful on radius graphs, where several images
      of one pair share Fourier features).
    cutoff: radius of that basis (Angstrom).
    edge_score_head: add to the fractional score a learned, distance-weighted
      mean of the (image-resolved) fractional edge vectors f_j - f_i + S.
      Needs distance_basis > 0.
    conditions: ((property, encoder, settings), ...): per-crystal properties
      (`batch.conditions`) encoded and added to the time embedding
      (`conditions.ConditionEmbedding`); () leaves the network as it was.
  """
  hidden: int = 128
  num_layers: int = 4
  num_freqs: int = 128
  time_dim: int = 256
  num_species: int = NUM_ELEMENTS
  predict_types: bool = False
  distance_basis: int = 0
  cutoff: float = 7.0
  edge_score_head: bool = False
  conditions: tuple = ()

  @nn.compact
  def __call__(self, batch: batch_lib.CrystalBatch, t: jax.Array,
               nbrs: neighbors.NeighborList,
               type_features: Optional[jax.Array] = None,
               use_pair_symmetry: bool = True) -> ScoreOutput:
    """
    Args:
      batch: noisy crystals (lattice, frac); species used unless types are
        predicted.
      t: [G] diffusion time in [0, 1].
      nbrs: the graph (`fully_connected_graph` or `radius_graph`).
      type_features: [N, K] noisy one-hot types (required if predict_types).
      use_pair_symmetry: on fully connected graphs, project Fourier features
        once per atom pair (same result, about half the arithmetic).
    """
    batch.validate_shapes()
    g, n = batch.num_graph_slots, batch.num_atom_slots
    chex.assert_shape(t, (g,))
    if self.predict_types:
      if type_features is None:
        raise ValueError('CSPNet(predict_types=True) needs type_features [N, K]')
      chex.assert_shape(type_features, (n, self.num_species))
      node = nn.Dense(self.hidden, name='type_in')(type_features)
    else:
      node = nn.Embed(self.num_species, self.hidden, name='species_embed')(
          jnp.clip(batch.species - 1, 0, self.num_species - 1))
    t_emb = sinusoidal_embedding(t, self.time_dim)
    if self.conditions:  # per-crystal properties join the time embedding
      t_emb = t_emb + conditions_lib.ConditionEmbedding(
          self.conditions, self.time_dim, name='conditions')(
              batch.conditions, batch.condition_mask, g)
    t_emb = t_emb[batch.graph_index]
    # Mean pooling cannot count atoms, yet the cell volume scales with them
    # (an Al4 cell vs its Al8 supercell): give each atom log(atoms in crystal).
    log_count = jnp.log(jnp.maximum(batch.n_atoms, 1).astype(t_emb.dtype))
    h = nn.Dense(self.hidden, name='node_embed')(jnp.concatenate(
        [node, t_emb, log_count[batch.graph_index][:, None]], -1))

    lattice = batch.lattice
    gram = jnp.einsum('gij,gkj->gik', lattice, lattice).reshape(g, 9)
    pairs = edge_features = None
    if nbrs.dense_block is not None and not self.distance_basis and use_pair_symmetry:
      pairs = pair_fourier(batch, nbrs.dense_block, self.num_freqs)
    else:
      delta = batch.frac[nbrs.senders] - batch.frac[nbrs.receivers]
      edge_features = fourier_features(delta, self.num_freqs)
    if self.edge_score_head and not self.distance_basis:
      raise ValueError('CSPNet(edge_score_head=True) needs distance_basis > 0')
    if self.distance_basis:
      vec = neighbors.edge_vectors(batch.frac, batch.atom_lattice(), nbrs)
      rbf = gaussian_basis(safe_norm(vec), self.distance_basis, self.cutoff)
      edge_features = jnp.concatenate([edge_features, rbf], -1)

    for layer in range(self.num_layers):
      h = CSPLayer(self.hidden, name=f'layer_{layer}')(
          h, gram, edge_features, batch.graph_index, nbrs, pairs)
    h = nn.LayerNorm(name='final_norm')(h)

    atom_mask = batch.atom_mask[:, None]
    frac_score = nn.Dense(3, use_bias=False, name='frac_out')(h)
    if self.edge_score_head:
      # Denoising a crystal is mostly moving atoms along bonds that are too
      # short or too long; a node feature would have to learn to encode that
      # direction, while a weighted sum of edge vectors has it built in.
      recv, send = nbrs.receivers, nbrs.senders
      frac_vec = batch.frac[send] - batch.frac[recv] + nbrs.shifts
      pre = (nn.Dense(self.hidden, name='score_edge_receiver')(h)[recv]
             + nn.Dense(self.hidden, use_bias=False, name='score_edge_sender')(h)[send]
             + nn.Dense(self.hidden, use_bias=False, name='score_edge_rbf')(rbf))
      weight = nn.Dense(1, name='score_edge_weight')(nn.silu(pre))
      frac_score = frac_score + segment_mean(weight * frac_vec, recv, n,
                                             nbrs.edge_mask)
    frac_score = frac_score * atom_mask
    pooled = segment_mean(h, batch.graph_index, g, batch.atom_mask)
    phi = nn.Dense(9, use_bias=False, name='lattice_out')(pooled).reshape(g, 3, 3)
    lattice_noise = jnp.einsum('gij,gjk->gik', phi, lattice)
    lattice_noise = lattice_noise * batch.graph_mask[:, None, None]
    if self.predict_types:
      type_logits = nn.Dense(self.num_species, name='type_out')(h) * atom_mask
    else:
      type_logits = jnp.zeros((n, self.num_species), h.dtype)
    return ScoreOutput(lattice_noise, frac_score, type_logits)
