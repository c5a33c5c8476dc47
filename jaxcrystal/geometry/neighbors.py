"""Periodic graphs of crystal batches with fixed capacity.

Edge convention (ASE's `neighbor_list('ijS')`): an edge points from `senders`
(j, the neighbour) to `receivers` (i, the centre), and its displacement is
`pos[j] + shift @ lattice - pos[i]`, with `shift` an integer image offset.

Shapes are static: capacities are chosen on the host (`estimate_*` helpers, the
jax-md pattern), graphs are built under jit, and `overflow` counts, for each
reason in `OVERFLOW_REASONS`, what did not fit. Check it outside jit
(`did_overflow`, `describe_overflow`, `check_overflow`); nothing is dropped
silently. Radius graphs give every crystal its own edge capacity, so one
crystal with a tiny (noisy) cell cannot take the edge slots of the others.
"""
from __future__ import annotations

import itertools
import math

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.geometry import lattice as lattice_lib
from jaxcrystal.geometry import pbc


# Why edges were lost, in the order of `NeighborList.overflow`:
#   edge_buffer    edges beyond a crystal's (or the system's) edge capacity;
#   bin_capacity   atoms beyond a cell-list bin's capacity;
#   cell_too_thin  images beyond the static image range of a radius graph,
#                  or a cell thinner than the cell list's bins.
OVERFLOW_REASONS = ('edge_buffer', 'bin_capacity', 'cell_too_thin')


class GraphOverflowError(errors.UserError, RuntimeError):
  """A neighbour list lost edges; the message names the reasons."""


class GraphCapacityError(errors.UserError, ValueError):
  """A configured capacity is too small for the data (found on the host)."""


def overflow_counts(edge_buffer=0, bin_capacity=0, cell_too_thin=0) -> jax.Array:
  """`[len(OVERFLOW_REASONS)]` int32 counts, in the order of the reasons."""
  return jnp.stack([jnp.asarray(x, jnp.int32).reshape(())
                    for x in (edge_buffer, bin_capacity, cell_too_thin)])


def describe_overflow(overflow) -> str:
  """Host text of non-zero overflow counts ('' when nothing was lost)."""
  counts = np.asarray(overflow).reshape(-1, len(OVERFLOW_REASONS)).max(0)
  return '; '.join(f'{reason.replace("_", " ")}: {int(n)}'
                   for reason, n in zip(OVERFLOW_REASONS, counts) if n > 0)


def check_overflow(overflow, where: str) -> None:
  """Raise `GraphOverflowError` naming `where` and the reasons, if any."""
  text = describe_overflow(overflow)
  if text:
    raise GraphOverflowError(
        f'{where}: the neighbour list lost edges ({text}). Raise the edge '
        'capacity (--edge_capacity_per_atom) or --max_image, or use a fully '
        'connected graph')


@flax.struct.dataclass
class NeighborList:
  """Edges of a periodic graph, padded to a fixed capacity E.

  Attributes:
    senders: [E] int32 neighbour atom j (padding edges point at atom slot 0
      of the padding region, masked by `edge_mask`).
    receivers: [E] int32 centre atom i.
    shifts: [E, 3] integer-valued image offsets (float dtype of the batch).
    edge_mask: [E] bool, True for real edges.
    overflow: [len(OVERFLOW_REASONS)] int32, what did not fit, by reason;
      all zero when the graph is complete.
    dense_block: static (G, A) when the edges are every ordered pair of a
      crystal laid out as [G, A(receiver), A(sender)] (the fully connected
      graph); lets networks exploit the pair symmetry. None otherwise.
  """
  senders: jax.Array
  receivers: jax.Array
  shifts: jax.Array
  edge_mask: jax.Array
  overflow: jax.Array
  dense_block: tuple[int, int] | None = flax.struct.field(pytree_node=False,
                                                         default=None)

  @property
  def capacity(self) -> int:
    return self.senders.shape[0]

  def num_edges(self) -> jax.Array:
    return jnp.sum(self.edge_mask)

  def did_overflow(self) -> bool:
    """Host check (outside jit) that no edge was lost."""
    return bool(np.any(np.asarray(self.overflow) > 0))


def edge_vectors(frac: jax.Array, atom_lattice: jax.Array,
                 nbrs: NeighborList) -> jax.Array:
  """Cartesian edge displacements `[E, 3]` (Angstrom), zero on padding edges.

  Args:
    frac: [N, 3] fractional coordinates.
    atom_lattice: [N, 3, 3] lattice of each atom's crystal (or [3, 3]).
    nbrs: the graph.
  """
  delta = frac[nbrs.senders] - frac[nbrs.receivers] + nbrs.shifts
  lat = atom_lattice if atom_lattice.ndim == 2 else atom_lattice[nbrs.receivers]
  vec = jnp.einsum('ei,eij->ej', delta, lat) if lat.ndim == 3 else delta @ lat
  return jnp.where(nbrs.edge_mask[:, None], vec, 0.0)


def _compact(mask: jax.Array, capacity: int, *fields: jax.Array):
  """Gather the True entries of flat `mask` into `capacity` slots."""
  (idx,) = jnp.nonzero(mask, size=capacity, fill_value=0)
  count = jnp.sum(mask, dtype=jnp.int32)
  valid = jnp.arange(capacity) < count
  overflow = jnp.maximum(count - capacity, 0)
  return valid, overflow, [f[idx] for f in fields]


def _image_grid(max_image: int, dtype) -> jnp.ndarray:
  r = range(-max_image, max_image + 1)
  return jnp.asarray(np.array(list(itertools.product(r, r, r))), dtype)


def required_images(lattice: jax.Array, cutoff: float) -> jax.Array:
  """Image range needed per axis, `[..., 3, 3] -> [..., 3]` int.

  Fractional coordinates in [0, 1) differ by less than 1, and a sphere of
  radius `cutoff` spans `cutoff / spacing_k` fractional units along axis k.
  """
  return jnp.floor(cutoff / lattice_lib.plane_spacings(lattice)).astype(
      jnp.int32) + 1


def estimate_max_image(lattice: np.ndarray, cutoff: float,
                       graph_mask: np.ndarray | None = None) -> int:
  """Host helper: static image range for `radius_graph` over given lattices
  (only those where `graph_mask` is True: a padding graph's placeholder cell
  must not set the image grid)."""
  lattice = np.asarray(lattice)
  if graph_mask is not None:
    lattice = lattice[np.asarray(graph_mask, bool)]
  return int(np.max(np.asarray(required_images(jnp.asarray(lattice), cutoff))))


def estimate_capacity(batch: batch_lib.CrystalBatch, cutoff: float,
                      max_image: int, multiplier: float = 1.25) -> int:
  """Host helper: edge capacity per crystal for `radius_graph` (the most
  edges any crystal of `batch` has, with head room)."""
  nbrs = radius_graph(batch, cutoff, max_image,
                      capacity=batch.max_atoms_per_graph**2 * (2 * max_image + 1)**3)
  per_crystal = jax.ops.segment_sum(nbrs.edge_mask.astype(jnp.int32),
                                    batch.graph_index[nbrs.receivers],
                                    batch.num_graph_slots)
  return max(int(math.ceil(int(jnp.max(per_crystal)) * multiplier)), 1)


def radius_graph(batch: batch_lib.CrystalBatch, cutoff: float, max_image: int,
                 capacity: int) -> NeighborList:
  """All pairs within `cutoff` (Angstrom) in every crystal, over all images.

  Brute force per crystal over a static `(2 * max_image + 1)^3` image grid, so
  a cutoff longer than the cell yields every image of a neighbour. Cost is
  G * A^2 * images: meant for batches of small cells; use `cell_list_graph`
  for large ones.

  Args:
    batch: crystals; lattices may be traced (they are diffused).
    cutoff: radius in Angstrom (static).
    max_image: static image range; if a lattice needs more, `overflow`
      counts the shortfall ('cell_too_thin') instead of silently missing edges.
    capacity: static edge slots of each crystal (`estimate_capacity`); the
      graph has G * capacity slots, crystal g's edges in block g.

  Returns:
    NeighborList with edges from real atoms only; `i == j` only for S != 0.
    `overflow` counts edges beyond any crystal's capacity ('edge_buffer').
  """
  batch.validate_shapes()
  index, mask = batch.dense_atom_index()                 # [G, A]
  frac = batch.frac[index]                               # [G, A, 3]
  images = _image_grid(max_image, frac.dtype)            # [I, 3]
  delta = (frac[:, None, :, None, :] - frac[:, :, None, None, :]
           + images[None, None, None])                   # [G, Ai, Aj, I, 3]
  vec = jnp.einsum('gabki,gij->gabkj', delta, batch.lattice)
  sq = jnp.sum(vec**2, -1)
  a = jnp.arange(batch.max_atoms_per_graph)
  is_self = ((a[:, None] == a[None, :])[None, :, :, None]
             & jnp.all(images == 0, -1)[None, None, None])
  keep = ((sq < cutoff**2) & ~is_self
          & mask[:, :, None, None] & mask[:, None, :, None])
  g, shape = keep.shape[0], keep.shape
  recv = jnp.broadcast_to(index[:, :, None, None], shape).reshape(g, -1)
  send = jnp.broadcast_to(index[:, None, :, None], shape).reshape(g, -1)
  img = jnp.broadcast_to(jnp.arange(images.shape[0]), shape).reshape(g, -1)
  valid, overflow, (recv, send, img) = jax.vmap(
      lambda k, r, s, i: _compact(k, capacity, r, s, i))(
          keep.reshape(g, -1), recv, send, img)
  valid, recv, send, img = (x.reshape(-1) for x in (valid, recv, send, img))
  needed = jnp.max(jnp.where(batch.graph_mask[:, None],
                             required_images(batch.lattice, cutoff), 0))
  return NeighborList(
      senders=jnp.where(valid, send, 0).astype(jnp.int32),
      receivers=jnp.where(valid, recv, 0).astype(jnp.int32),
      shifts=jnp.where(valid[:, None], images[img], 0.0),
      edge_mask=valid,
      overflow=overflow_counts(edge_buffer=jnp.sum(overflow),
                               cell_too_thin=jnp.maximum(needed - max_image, 0)))


def fully_connected_graph(batch: batch_lib.CrystalBatch,
                          self_edges: bool = True,
                          nearest_image: bool = True) -> NeighborList:
  """Every ordered pair of atoms within each crystal, at its nearest image.

  The graph DiffCSP uses for small cells: G * A^2 edge slots, where A is the
  batch's static `max_atoms_per_graph`. Shifts are minimum-image offsets
  (exact for any triclinic cell), so `edge_vectors` gives the shortest vector.
  Self edges (i == i, shift 0) are included unless `self_edges=False`.
  With `nearest_image=False` shifts are zero: enough for networks that see
  only periodic (Fourier) features of the pair, and cheaper in a hot loop.
  """
  batch.validate_shapes()
  index, mask = batch.dense_atom_index()
  frac = batch.frac[index]
  delta = frac[:, None, :, :] - frac[:, :, None, :]       # [G, Ai, Aj, 3]
  if nearest_image:
    reduced = lattice_lib.reduce_lattice(batch.lattice)
    shifts = jax.vmap(pbc.minimum_image_shift)(delta, batch.lattice, reduced)
  else:
    shifts = jnp.zeros_like(delta)
  keep = mask[:, :, None] & mask[:, None, :]
  if not self_edges:
    keep = keep & ~jnp.eye(batch.max_atoms_per_graph, dtype=bool)[None]
  shape = keep.shape
  recv = jnp.broadcast_to(index[:, :, None], shape).ravel()
  send = jnp.broadcast_to(index[:, None, :], shape).ravel()
  keep = keep.ravel()
  return NeighborList(
      senders=jnp.where(keep, send, 0).astype(jnp.int32),
      receivers=jnp.where(keep, recv, 0).astype(jnp.int32),
      shifts=jnp.where(keep[:, None], shifts.reshape(-1, 3), 0.0),
      edge_mask=keep,
      overflow=overflow_counts(),
      dense_block=((batch.num_graph_slots, batch.max_atoms_per_graph)
                   if self_edges else None))


# ----------------------------------------------------------------------------
# Cell list: O(N) neighbour search for one large periodic system.


@flax.struct.dataclass
class CellListSpec:
  """Static layout of a cell list (host-allocated, jax-md style).

  Attributes:
    bins: number of bins along each lattice axis (each >= 3).
    bin_capacity: atom slots per bin.
    capacity: edge slots.
    cutoff: radius in Angstrom.
  """
  bins: tuple[int, int, int] = flax.struct.field(pytree_node=False)
  bin_capacity: int = flax.struct.field(pytree_node=False)
  capacity: int = flax.struct.field(pytree_node=False)
  cutoff: float = flax.struct.field(pytree_node=False)


def allocate_cell_list(frac: np.ndarray, lattice: np.ndarray, cutoff: float,
                       multiplier: float = 1.25) -> CellListSpec:
  """Choose bins and capacities for `cell_list_graph` on the host.

  Bins are at least `cutoff` thick along each plane normal, so every neighbour
  lies in the 27 surrounding bins even in skewed cells.

  Raises:
    ValueError: the cell is thinner than 3 * cutoff along an axis; use
      `radius_graph` (brute force over images) for such small cells.
  """
  frac = np.asarray(frac)
  spacings = np.asarray(lattice_lib.plane_spacings(jnp.asarray(lattice)))
  bins = tuple(int(b) for b in np.floor(spacings / cutoff))
  if min(bins) < 3:
    raise ValueError(
        f'cell too small for a cell list at cutoff {cutoff} A (plane spacings '
        f'{np.round(spacings, 3).tolist()}); use radius_graph instead')
  wrapped = frac - np.floor(frac)
  ids = np.minimum((wrapped * np.array(bins)).astype(int), np.array(bins) - 1)
  flat = np.ravel_multi_index(ids.T, bins)
  per_bin = np.bincount(flat, minlength=int(np.prod(bins))).max()
  bin_capacity = int(math.ceil(per_bin * multiplier)) + 1
  density = len(frac) / abs(np.linalg.det(lattice))
  expected = len(frac) * density * 4.0 / 3.0 * np.pi * cutoff**3
  capacity = int(math.ceil(expected * multiplier)) + 64
  return CellListSpec(bins=bins, bin_capacity=bin_capacity, capacity=capacity,
                      cutoff=float(cutoff))


def cell_list_graph(frac: jax.Array, lattice: jax.Array,
                    spec: CellListSpec) -> NeighborList:
  """Radius graph of one periodic system in O(N) with a cell list.

  Args:
    frac: [N, 3] fractional coordinates (wrapped here).
    lattice: [3, 3] rows are lattice vectors (Angstrom); may be traced.
    spec: static layout from `allocate_cell_list`.

  Returns:
    NeighborList in the `radius_graph` convention. `overflow` counts edges
    beyond capacity, atoms beyond a bin's capacity, and (as N) a cell that
    shrank below the bin thickness.
  """
  chex.assert_rank(frac, 2)
  chex.assert_shape(lattice, (3, 3))
  n = frac.shape[0]
  bins = jnp.array(spec.bins)
  n_bins = int(np.prod(spec.bins))
  frac = pbc.wrap_frac(frac)
  ids = jnp.minimum(jnp.floor(frac * bins).astype(jnp.int32), bins - 1)
  flat = (ids[:, 0] * spec.bins[1] + ids[:, 1]) * spec.bins[2] + ids[:, 2]
  # Bin table [n_bins, C]: sort atoms by bin, then slot k of bin b is the
  # k-th atom after the bin's start. Empty slots hold n (a sentinel).
  order = jnp.argsort(flat)
  counts = jnp.bincount(flat, length=n_bins)
  starts = jnp.cumsum(counts) - counts
  slot = jnp.arange(spec.bin_capacity)
  pos = starts[:, None] + slot[None, :]
  table = jnp.where(slot[None, :] < counts[:, None],
                    order[jnp.clip(pos, 0, n - 1)], n)
  # The 27 neighbouring bins of each atom, with the image shift of wrapping.
  offsets = jnp.asarray(np.array(list(itertools.product([-1, 0, 1], repeat=3))))
  nb = ids[:, None, :] + offsets[None]                    # [N, 27, 3]
  shift = jnp.floor_divide(nb, bins)
  nb = nb - shift * bins
  nb_flat = (nb[..., 0] * spec.bins[1] + nb[..., 1]) * spec.bins[2] + nb[..., 2]
  cand = table[nb_flat]                                   # [N, 27, C]
  cand_shift = jnp.broadcast_to(shift[:, :, None, :], cand.shape + (3,))
  frac_pad = jnp.concatenate([frac, jnp.zeros((1, 3), frac.dtype)])
  delta = (frac_pad[cand] + cand_shift.astype(frac.dtype)
           - frac[:, None, None, :])
  sq = jnp.sum((delta @ lattice)**2, -1)
  center = jnp.arange(n)[:, None, None]
  is_self = (cand == center) & jnp.all(cand_shift == 0, -1)
  keep = (cand < n) & (sq < spec.cutoff**2) & ~is_self
  recv = jnp.broadcast_to(center, cand.shape)
  valid, overflow, (recv, send, shifts) = _compact(
      keep.ravel(), spec.capacity, recv.ravel(), cand.ravel(),
      cand_shift.reshape(-1, 3))
  bin_overflow = jnp.sum(jnp.maximum(counts - spec.bin_capacity, 0))
  too_thin = jnp.any(lattice_lib.plane_spacings(lattice) / bins < spec.cutoff)
  return NeighborList(
      senders=jnp.where(valid, send, 0).astype(jnp.int32),
      receivers=jnp.where(valid, recv, 0).astype(jnp.int32),
      shifts=jnp.where(valid[:, None], shifts, 0).astype(frac.dtype),
      edge_mask=valid,
      overflow=overflow_counts(overflow, bin_overflow,
                               too_thin.astype(jnp.int32) * n))
