"""Constraints on de novo samples: which elements, how many of them, how
many atoms (`sample.py --elements Li,Fe,O --min_elements 2 --num_atoms 6-12`).

Elements are a constraint of the sampler, not a filter: each sample gets a
set of allowed elements (`CrystalBatch.allowed_elements`), and the type
processes draw (masked types) and decode (every type process) only those,
so every sample lies within its set and none is thrown away. With
`min_elements`/`max_elements` each sample's set is a random subset of the
requested elements of a size in that range (without them, the whole set
each time, of which the model uses what it will): at most `max_elements` is
then guaranteed; at least `min_elements` is what the sampler is offered
(the model may use fewer) and `element_counts` reports what came out.

Atom counts are drawn from the training distribution restricted to the
requested range (uniform over the range where the training data holds no
crystal of those sizes).

  parse_elements('Li,Fe,O') -> array of atomic numbers
  parse_atom_range('6-12') -> (6, 12)
  element_subsets(rng, elements, num, min_elements, max_elements)
  atom_counts_in_range(rng, train_counts, num, low, high)
  check_elements_seen(elements, seen)
  check_space_group(number, compositions)   1..230, and orbits that hold the counts
  allowed_for_request(...)   all of the above for one sample.py request
"""
from __future__ import annotations

import functools
import warnings
from typing import Sequence

import ase.data
import numpy as np

from jaxcrystal import errors
from jaxcrystal.data import properties as properties_lib
from jaxcrystal.generative import tasks


def parse_elements(text: str) -> np.ndarray:
  """Atomic numbers (sorted) of 'Li,Fe,O' or 'Li-Fe-O'; `errors.UserError`
  naming the symbol that is not an element of the models' 1..100."""
  try:
    return np.flatnonzero(properties_lib.parse_element_set(text)) + 1
  except ValueError as err:
    raise errors.UserError(f'--elements: {err}') from None


def parse_atom_range(text: str) -> tuple[int, int]:
  """'8' -> (8, 8), '6-12' -> (6, 12); `errors.UserError` otherwise."""
  parts = str(text).strip().split('-')
  try:
    low, high = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
  except ValueError:
    low, high = 0, -1
  if not 1 <= low <= high:
    raise errors.UserError(f'--num_atoms={text}: give a count N >= 1 or a range '
                           'LOW-HIGH with 1 <= LOW <= HIGH')
  return low, high


def check_element_counts(num_elements: int, min_elements: int, max_elements: int,
                         smallest_crystal: int) -> tuple[int, int]:
  """The (low, high) number of elements per sample, checked against the
  requested elements and the smallest crystal asked for; `errors.UserError`
  naming the impossible combination. `max_elements` 0: all of them."""
  high = max_elements or num_elements
  low = min_elements or 1
  if low > num_elements:
    raise errors.UserError(f'--min_elements={low}, but --elements names only '
                           f'{num_elements}')
  if low > high:
    raise errors.UserError(f'--min_elements={low} is more than --max_elements={high}')
  if low > smallest_crystal:
    raise errors.UserError(f'--min_elements={low} cannot hold in a crystal of '
                           f'{smallest_crystal} atoms (one element needs one atom)')
  return low, min(high, num_elements)


def element_subsets(rng: np.random.Generator, elements: Sequence[int], num: int,
                    low: int, high: int) -> list[np.ndarray]:
  """`num` allowed sets: each a uniformly drawn subset of `elements` whose
  size is uniform in [low, high] (all of `elements` when low = high = its
  length, the default)."""
  elements = np.asarray(elements, int)
  if low == high == len(elements):
    return [elements] * num
  sizes = rng.integers(low, high + 1, size=num)
  return [np.sort(rng.choice(elements, size=int(k), replace=False)) for k in sizes]


def atom_counts_in_range(rng: np.random.Generator, train_counts: Sequence[int],
                         num: int, low: int, high: int) -> tuple[np.ndarray, bool]:
  """`num` atom counts in [low, high]: drawn from the training counts in the
  range, or uniformly over it when there are none. Returns (counts, whether
  the training data held crystals of those sizes)."""
  pool = np.asarray([n for n in train_counts if low <= n <= high], int)
  if pool.size:
    return rng.choice(pool, size=num, replace=True), True
  return rng.integers(low, high + 1, size=num), False


def element_histogram(structures) -> dict[str, int]:
  """{element symbol: crystals holding it} of a dataset (run records)."""
  counts: dict[str, int] = {}
  for atoms in structures:
    for z in sorted(set(int(z) for z in atoms.numbers)):
      symbol = ase.data.chemical_symbols[z]
      counts[symbol] = counts.get(symbol, 0) + 1
  return dict(sorted(counts.items(), key=lambda kv: ase.data.atomic_numbers[kv[0]]))


def check_elements_seen(elements: Sequence[int], seen: dict | None) -> None:
  """`errors.UserError` naming the first of `elements` that the training
  data (`seen`: `element_histogram` of it) never held: the model gives it
  no probability. None: nothing recorded, nothing checked."""
  if seen is None:
    return
  for z in elements:
    symbol = ase.data.chemical_symbols[int(z)]
    if symbol not in seen:
      known = ','.join(seen)
      raise errors.UserError(
          f'--elements: the model never saw {symbol} in its training data; '
          f'it knows {known}')


def element_report(structures, allowed: Sequence[Sequence[int]],
                   min_elements: int) -> dict:
  """What the samples hold against their allowed sets: the fraction within
  their set (1 by construction), the fraction with at least `min_elements`
  distinct elements, and the histogram of distinct elements per sample."""
  within, enough, histogram = [], [], {}
  for atoms, elements in zip(structures, allowed):
    held = set(int(z) for z in atoms.numbers)
    within.append(held <= set(int(z) for z in elements))
    enough.append(len(held) >= min_elements)
    histogram[str(len(held))] = histogram.get(str(len(held)), 0) + 1
  return {'within_elements_fraction': float(np.mean(within)),
          'min_elements_fraction': float(np.mean(enough)),
          'distinct_elements': dict(sorted(histogram.items(), key=lambda kv: int(kv[0])))}


def allowed_for_request(task: str, compositions: Sequence[Sequence[int]],
                        elements: str, min_elements: int = 0, max_elements: int = 0,
                        seen: dict | None = None, seed: int = 0,
                        de_novo: bool = True) -> list[np.ndarray] | None:
  """The allowed elements of each composition of a request (None when no
  element constraint is asked). `task`: the model's task, which must
  generate types, and `de_novo`: no formula or file fixes them; `seen`:
  the training data's `element_histogram` (None: not checked). The rng
  is `seed` folded with a constant, apart from the atom counts' draw.
  Raises `errors.UserError` naming the flag of an impossible request."""
  if not elements:
    if min_elements or max_elements:
      raise errors.UserError('--min_elements and --max_elements need --elements '
                             '(the elements to choose from)')
    return None
  if not tasks.get_task(task).generates_types or not de_novo:
    raise errors.UserError(
        '--elements constrains de novo samples; this request fixes the atom types '
        f'({"a " + task + " model" if not tasks.get_task(task).generates_types else "--formula or --compositions_from"})')
  numbers = parse_elements(elements)
  check_elements_seen(numbers, seen)
  low, high = check_element_counts(len(numbers), min_elements, max_elements,
                                   min(len(c) for c in compositions))
  rng = np.random.default_rng([seed, 35])
  if not (min_elements or max_elements):
    low = high = len(numbers)  # the whole set offered to every sample
  return element_subsets(rng, numbers, len(compositions), low, high)


@functools.lru_cache(maxsize=None)
def orbit_sizes(space_group: int, grid: int = 24) -> tuple[int, ...]:
  """Sizes of the distinct orbits of space group `space_group` (1..230) in
  its primitive cell, over the points of a `grid`^3 rational grid of its
  conventional cell (multiples of 1/24 hold every special position of every
  group, and many orbits of each free one): the multiplicities a crystal
  of that group is built from, one entry per distinct orbit."""
  import spglib
  from jaxcrystal.evaluation import symmetry  # spglib's tables, on use only
  with warnings.catch_warnings():  # spglib's deprecation notice, per call
    warnings.simplefilter('ignore', DeprecationWarning)
    ops = spglib.get_symmetry_from_database(symmetry.hall_number(space_group))
  rot, trans = ops['rotations'], ops['translations']
  centering = int(sum(np.array_equal(r, np.eye(3)) for r in rot))
  axis = np.arange(grid)
  points = np.stack(np.meshgrid(axis, axis, axis, indexing='ij'), -1).reshape(-1, 3)
  # images of every grid point under every operation, in grid units mod grid
  images = (np.matmul(points[None].astype(float), np.transpose(rot, (0, 2, 1)).astype(float))
            + np.round(trans * grid)[:, None, :]).astype(np.int64) % grid  # [O, P, 3]
  codes = np.sort(((images[..., 0] * grid + images[..., 1]) * grid + images[..., 2]).T,
                  axis=1)
  size = 1 + (np.diff(codes, axis=1) != 0).sum(1)  # distinct images of each point
  _, first = np.unique(codes[:, 0], return_index=True)  # one point per orbit
  return tuple(sorted(int(n) // centering for n in size[first]))


def atom_count_fits(space_group: int, num_atoms: int) -> bool:
  """Whether `num_atoms` atoms can form a crystal of `space_group`: a sum of
  distinct orbits' sizes (`orbit_sizes`) of its primitive cell, or of a
  supercell of it (num_atoms a multiple of such a sum)."""
  sizes = orbit_sizes(space_group)
  reachable = np.zeros(num_atoms + 1, bool)
  reachable[0] = True
  for size in sizes:  # each distinct orbit used at most once (0/1 knapsack)
    if size <= num_atoms:
      reachable[size:] |= reachable[:-size].copy() if size else reachable[size:]
  return any(reachable[num_atoms // m] for m in range(1, num_atoms + 1)
             if num_atoms % m == 0)


def check_space_group(space_group: int, compositions: Sequence[Sequence[int]]) -> None:
  """`errors.UserError` for a space group outside 1..230, or one no crystal
  of the requested atom counts can have (naming the count)."""
  if not 1 <= space_group <= 230 or space_group != int(space_group):
    raise errors.UserError(f'--space_group={space_group:g}: give an international '
                           'number 1..230')
  for n in sorted({len(c) for c in compositions}):
    if not atom_count_fits(int(space_group), n):
      sizes = sorted(set(orbit_sizes(int(space_group))))[:6]
      raise errors.UserError(
          f'--space_group={int(space_group)}: no crystal of {n} atoms has this group '
          f'(its orbits in the primitive cell hold {", ".join(map(str, sizes))}, ... atoms)')
