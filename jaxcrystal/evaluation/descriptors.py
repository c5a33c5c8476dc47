"""Structure descriptors from periodic graphs: RDF and coordination numbers."""
from __future__ import annotations

from typing import Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.evaluation import validation
from jaxcrystal.geometry import neighbors


def edge_lengths(batch: batch_lib.CrystalBatch,
                 nbrs: neighbors.NeighborList) -> jax.Array:
  """[E] edge lengths in Angstrom (0 on padding edges)."""
  vec = neighbors.edge_vectors(batch.frac, batch.atom_lattice(), nbrs)
  return jnp.sqrt(jnp.sum(vec**2, -1))


def coordination_numbers(batch: batch_lib.CrystalBatch,
                         nbrs: neighbors.NeighborList,
                         cutoff: float) -> jax.Array:
  """Neighbours within `cutoff` Angstrom of each atom, `[N]` int32 (0 on padding).

  `nbrs` must be a radius graph with a cutoff of at least `cutoff`.
  """
  inside = nbrs.edge_mask & (edge_lengths(batch, nbrs) < cutoff)
  counts = jax.ops.segment_sum(inside.astype(jnp.int32), nbrs.receivers,
                               num_segments=batch.num_atom_slots)
  return jnp.where(batch.atom_mask, counts, 0)


def mean_coordination(batch: batch_lib.CrystalBatch, nbrs: neighbors.NeighborList,
                      cutoff: float) -> jax.Array:
  """[G] mean coordination number of each crystal (0 on padding graphs)."""
  cn = coordination_numbers(batch, nbrs, cutoff).astype(batch.frac.dtype)
  total = jax.ops.segment_sum(cn, batch.graph_index,
                              num_segments=batch.num_graph_slots)
  return jnp.where(batch.graph_mask, total / jnp.maximum(batch.n_atoms, 1), 0.0)


def radial_distribution(batch: batch_lib.CrystalBatch,
                        nbrs: neighbors.NeighborList, r_max: float,
                        n_bins: int) -> tuple[jax.Array, jax.Array]:
  """Radial distribution function g(r) of each crystal.

  g(r) = histogram of pair distances / (N * rho * 4 pi r^2 dr), with rho = N / V,
  so an ideal gas gives 1. `nbrs` must be a radius graph with cutoff >= r_max.

  Returns:
    r [n_bins] bin centres (Angstrom) and g [G, n_bins] (0 on padding graphs).
  """
  edges = jnp.linspace(0.0, r_max, n_bins + 1)
  centres = 0.5 * (edges[1:] + edges[:-1])
  length = edge_lengths(batch, nbrs)
  bin_index = jnp.clip(jnp.floor(length / r_max * n_bins).astype(jnp.int32),
                       0, n_bins - 1)
  inside = nbrs.edge_mask & (length < r_max)
  graph = batch.graph_index[nbrs.receivers]
  hist = jax.ops.segment_sum(
      inside.astype(batch.frac.dtype), graph * n_bins + bin_index,
      num_segments=batch.num_graph_slots * n_bins).reshape(-1, n_bins)
  n = jnp.maximum(batch.n_atoms, 1).astype(batch.frac.dtype)
  vol = jnp.abs(jnp.linalg.det(batch.lattice))
  shell = 4.0 / 3.0 * jnp.pi * (edges[1:]**3 - edges[:-1]**3)
  g = hist / (n[:, None] * (n / vol)[:, None] * shell[None, :])
  return centres, jnp.where(batch.graph_mask[:, None], g, 0.0)


def mean_rdf(structures: Sequence[ase.Atoms], cutoff: float = 6.0,
             bins: int = 120, max_image: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """Mean g(r) over host structures: (r `[bins]` Angstrom, g `[bins]`), as
  `radial_distribution` defines it (an ideal gas gives 1), on the host
  (`validation.image_distances`: no compile for a plot).

  Cells so thin that the cutoff spans more than `max_image` periodic images
  along an axis (failed samples: needles and sheets) are left out. Raises
  ValueError if none is left.
  """
  kept = [a for a in structures if len(a) and np.all(np.isfinite(a.positions)) and
          np.all(np.isfinite(a.cell[:])) and abs(a.cell.volume) > 1e-9 and
          neighbors.estimate_max_image(np.asarray(a.cell[:])[None], cutoff) <= max_image]
  if not kept:
    raise ValueError(f'mean_rdf: none of {len(structures)} structures has a cell '
                     f'within {max_image} images of the {cutoff} A cutoff')
  edges = np.linspace(0.0, cutoff, bins + 1)
  shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
  curves = []
  for atoms in kept:
    hist = np.zeros(bins)
    for d in validation.image_distances(atoms, cutoff):
      hist += np.histogram(d[d < cutoff], edges)[0]
    n = len(atoms)
    curves.append(hist / (n * (n / abs(atoms.cell.volume)) * shell))
  return 0.5 * (edges[1:] + edges[:-1]), np.mean(curves, 0)
