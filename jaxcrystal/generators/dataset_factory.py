"""The dataset factory: a validated sampling configuration, a stratified plan
over system types, elements and sizes, validated draws (invalid ones redrawn
and counted), parallel generation that is identical for any worker count,
diversity metrics and optional labelling by an ASE calculator.

Sample i is drawn from `np.random.default_rng([seed, i])`, so the output
depends only on (config, seed), never on how samples are spread over workers.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import dataclasses
import math
from typing import Sequence

import ase
import numpy as np
from ase.data import atomic_numbers
from tqdm.auto import tqdm

from jaxcrystal.generators import structures as generators

SYSTEM_TYPES = ('molecule', 'crystal', 'cluster', 'surface')
MAX_REDRAWS = 50
# What real structures hold, with a margin (tests/test_generators.py checks
# every structure of ASE's g2 molecules, ASE's elemental reference crystals
# and pymatgen's test structures against these):
# - every pair distance (minimum image) at least MIN_BOND_FRACTION of the sum
#   of the two covalent radii (ASE's, Cordero 2008). The shortest real
#   contacts are triple bonds: 0.77 in CN and C2H (g2), 0.77 in Pb2TiZrO6
#   (pymatgen), 0.84 in bcc Ta (ASE); 0.7 leaves a 10 % margin.
MIN_BOND_FRACTION = {'molecule': 0.7, 'cluster': 0.7, 'crystal': 0.7, 'surface': 0.7}
# - crystals: volume per atom at least MIN_VOLUME_FRACTION of the mean
#   volume per atom of the elements' own solids (`elemental_volume`,
#   pymatgen's molar volumes). Real compounds are denser than their elements
#   but not by much: 0.34 in Li2O2 and 0.35 in Li2O (pymatgen), 0.65 in
#   diamond (ASE); 0.2 leaves a 40 % margin and refuses hydrogen packed at
#   bond distance (0.2 A^3 per atom: 0.01 of solid H2's 19 A^3).
MIN_VOLUME_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """What to generate.

  Attributes:
    elements: chemical symbols to draw from.
    fractions: share of each system type (keys from SYSTEM_TYPES), summing to 1.
    min_atoms, max_atoms: size range of every structure.
  """
  elements: tuple[str, ...] = ('H', 'C', 'N', 'O')
  fractions: tuple[tuple[str, float], ...] = (('molecule', 0.4), ('crystal', 0.3),
                                              ('cluster', 0.15), ('surface', 0.15))
  min_atoms: int = 2
  max_atoms: int = 64

  def validate(self) -> None:
    """Raise ValueError naming the bad field."""
    if not self.elements:
      raise ValueError('elements: give at least one element')
    unknown = [e for e in self.elements if e not in atomic_numbers or e == 'X']
    if unknown:
      raise ValueError(f'elements: unknown chemical symbols {unknown}')
    names = [k for k, _ in self.fractions]
    bad = [k for k in names if k not in SYSTEM_TYPES]
    if bad:
      raise ValueError(f'fractions: unknown system types {bad}; choose from '
                       f'{SYSTEM_TYPES}')
    if len(set(names)) != len(names):
      raise ValueError(f'fractions: a system type is given twice ({names})')
    values = [v for _, v in self.fractions]
    if any(v < 0 or not math.isfinite(v) for v in values):
      raise ValueError(f'fractions: must be finite and non-negative, got {values}')
    if abs(sum(values) - 1.0) > 1e-6:
      raise ValueError(f'fractions: must sum to 1, got {sum(values):.4f}')
    if not 1 <= self.min_atoms <= self.max_atoms:
      raise ValueError(f'sizes: need 1 <= min_atoms <= max_atoms, got '
                       f'{self.min_atoms}, {self.max_atoms}')
    if self.max_atoms > 5000:
      raise ValueError(f'sizes: max_atoms {self.max_atoms} is beyond this factory '
                       '(5000)')
    if dict(self.fractions).get('cluster', 0) > 0 and self.max_atoms < 13:
      raise ValueError('sizes: clusters need max_atoms >= 13')

  def to_dict(self) -> dict:
    return dict(elements=list(self.elements), fractions=dict(self.fractions),
                min_atoms=self.min_atoms, max_atoms=self.max_atoms)


def parse_fractions(text: str) -> tuple[tuple[str, float], ...]:
  """'molecule=0.5,crystal=0.5' -> (('molecule', 0.5), ('crystal', 0.5))."""
  out = []
  for part in filter(None, (p.strip() for p in text.split(','))):
    if '=' not in part:
      raise ValueError(f'fractions: {part!r} is not TYPE=FRACTION')
    key, value = part.split('=', 1)
    try:
      out.append((key.strip(), float(value)))
    except ValueError as err:
      raise ValueError(f'fractions: {value!r} is not a number') from err
  return tuple(out)


def plan(config: SamplingConfig, num_samples: int) -> list[dict]:
  """The stratified plan: counts per type by largest remainder, and within a
  type elements and sizes cycled over evenly spaced strata (shuffled by a
  fixed permutation so strata mix). One dict per sample: type, element
  (the stratum's leading element) and target size."""
  config.validate()
  fractions = dict(config.fractions)
  raw = {k: fractions.get(k, 0.0) * num_samples for k in SYSTEM_TYPES}
  counts = {k: int(math.floor(v)) for k, v in raw.items()}
  for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[
      :num_samples - sum(counts.values())]:
    counts[k] += 1
  rows = []
  for kind in SYSTEM_TYPES:
    n = counts[kind]
    sizes = np.linspace(config.min_atoms, config.max_atoms, max(n, 1))
    for j in range(n):
      rows.append(dict(kind=kind, element=config.elements[j % len(config.elements)],
                       size=int(round(sizes[j]))))
  order = np.random.default_rng(0).permutation(len(rows))  # fixed: part of the plan
  return [rows[i] for i in order]


def _draw(rng: np.random.Generator, row: dict, config: SamplingConfig) -> ase.Atoms:
  """One structure for a plan row (may be invalid; the caller validates)."""
  elements = list(config.elements)
  # The row's element leads: half of the draws use it alone, for coverage.
  pool = [row['element']] if rng.random() < 0.5 else elements
  size = row['size']
  kind = row['kind']
  if kind == 'molecule':
    if rng.random() < 0.3 and generators.template_molecules(elements):
      atoms = generators.template_molecule(rng, elements)
    else:
      atoms = generators.random_molecule(rng, pool if len(pool) > 1 else elements,
                                         max(size, 2))
  elif kind == 'crystal':
    if rng.random() < 0.5:
      atoms = generators.prototype_crystal(rng, pool)
    else:
      atoms = generators.random_symmetric_crystal(rng, pool, int(rng.integers(1, 4)),
                                                     max_atoms=size)
    atoms = generators.supercell_to_size(atoms, size)
  elif kind == 'cluster':
    if rng.random() < 0.3 and size >= 55:
      atoms = generators.magic_cluster(rng, pool, size)
    else:
      atoms = generators.random_cluster(rng, pool, max(size, 2))
  else:
    atoms = generators.slab(rng, pool, size)
  atoms.info['system_type'] = kind
  return atoms


def check(atoms: ase.Atoms, kind: str, config: SamplingConfig) -> str:
  """'' if `atoms` is a valid `kind` structure within the config, else why."""
  n = len(atoms)
  if not config.min_atoms <= n <= config.max_atoms:
    return f'{n} atoms outside [{config.min_atoms}, {config.max_atoms}]'
  if not set(atoms.get_chemical_symbols()) <= set(config.elements):
    return 'element outside the configuration'
  if not np.all(np.isfinite(atoms.positions)):
    return 'non-finite positions'
  periodic = {'crystal': (True,) * 3, 'surface': (True, True, False)}.get(
      kind, (False,) * 3)
  if tuple(bool(p) for p in atoms.pbc) != periodic:
    return f'periodicity {atoms.pbc.tolist()} is not that of a {kind}'
  if any(periodic) and abs(np.linalg.det(atoms.cell[:])) < 1e-3:
    return 'degenerate cell'
  reason = physical_check(atoms, kind)
  if reason:
    return reason
  if not any(periodic):
    frac = atoms.get_scaled_positions(wrap=False)
    if np.any(frac < 0) or np.any(frac > 1):
      return 'atoms outside the box'
  return ''


def physical_check(atoms: ase.Atoms, kind: str) -> str:
  """'' if `atoms` holds what real structures of its `kind` hold (pair
  distances, and for crystals volume per atom; thresholds above), else why."""
  ratio = generators.min_bond_ratio(atoms)
  if ratio < MIN_BOND_FRACTION[kind]:
    return (f'atoms too close ({ratio:.2f} of a covalent bond, below '
            f'{MIN_BOND_FRACTION[kind]})')
  if kind == 'crystal':
    per_atom = atoms.get_volume() / len(atoms)
    reference = np.mean([generators.elemental_volume(s)
                         for s in atoms.get_chemical_symbols()])
    if per_atom < MIN_VOLUME_FRACTION * reference:
      return (f'too dense: {per_atom:.3g} A^3 per atom is {per_atom / reference:.2f} '
              f"of the elements' own solids ({reference:.3g} A^3; below "
              f'{MIN_VOLUME_FRACTION})')
  return ''


def sample_one(args) -> tuple[ase.Atoms, int]:
  """(valid structure, redraws) for plan row `index` (a pure function)."""
  seed, index, row, config = args
  rng = np.random.default_rng([seed, index])
  inner = 0  # retries inside generators (e.g. random crystals) count too
  for redraws in range(MAX_REDRAWS):
    try:
      atoms = _draw(rng, row, config)
    except (RuntimeError, ValueError):  # a generator could not fit the request
      continue
    inner += atoms.info.pop('rejected_draws', 0)
    if not check(atoms, row['kind'], config):
      atoms.info['sample_index'] = index
      return atoms, redraws + inner
  raise RuntimeError(f'sample {index} ({row}): no valid structure in '
                     f'{MAX_REDRAWS} draws; widen the size range or elements')


def generate(config: SamplingConfig, num_samples: int, seed: int = 0,
             workers: int = 1, progress: bool = True) -> tuple[list[ase.Atoms], int]:
  """(structures in plan order, total redraws). Identical for any `workers`."""
  rows = plan(config, num_samples)
  jobs = [(seed, i, row, config) for i, row in enumerate(rows)]
  bar = dict(total=len(jobs), desc='generating', disable=not progress)
  if workers <= 1:
    results = [sample_one(j) for j in tqdm(jobs, **bar)]
  else:
    # spawn, not fork: the caller may hold JAX's threads, which fork can deadlock.
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('spawn')) as pool:
      results = list(tqdm(pool.map(sample_one, jobs,
                                   chunksize=max(1, len(jobs) // (4 * workers))), **bar))
  return [a for a, _ in results], sum(r for _, r in results)


# ----------------------------------------------------------------- diversity

def _entropy(counts: np.ndarray) -> float:
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def distance_fingerprint(atoms: ase.Atoms, cutoff: float = 6.0, bins: int = 24
                         ) -> np.ndarray:
  """Normalised histogram of pair distances (minimum image along periodic
  axes) up to `cutoff` A, `[bins]`."""
  d = generators.pair_distances(atoms)[2] if len(atoms) > 1 else np.zeros(0)
  hist, _ = np.histogram(d, bins=bins, range=(0, cutoff))
  return hist / max(hist.sum(), 1)


def diversity(structures: Sequence[ase.Atoms], config: SamplingConfig) -> dict:
  """Element coverage, composition entropy, size spread, system-type balance
  and structural-fingerprint spread of a set."""
  if not structures:
    raise ValueError('diversity of an empty set')
  symbols = [s for a in structures for s in a.get_chemical_symbols()]
  present = sorted(set(symbols))
  counts = np.array([symbols.count(e) for e in config.elements], float)
  sizes = np.array([len(a) for a in structures], float)
  kinds = [a.info.get('system_type', '') for a in structures]
  kind_counts = np.array([kinds.count(k) for k in SYSTEM_TYPES], float)
  wanted = np.array([dict(config.fractions).get(k, 0.0) for k in SYSTEM_TYPES])
  fps = np.array([distance_fingerprint(a) for a in structures])
  from scipy.spatial.distance import pdist
  spread = float(pdist(fps).mean()) if len(fps) > 1 else 0.0
  return dict(
      num_structures=len(structures),
      element_coverage=len(set(present) & set(config.elements)) / len(config.elements),
      elements_missing=sorted(set(config.elements) - set(present)),
      composition_entropy=_entropy(counts),
      composition_entropy_normalised=(_entropy(counts) / math.log(len(counts))
                                      if len(counts) > 1 else 1.0),
      size_mean=float(sizes.mean()), size_std=float(sizes.std()),
      size_min=int(sizes.min()), size_max=int(sizes.max()),
      type_counts=dict(zip(SYSTEM_TYPES, kind_counts.astype(int).tolist())),
      type_balance_max_deviation=float(np.abs(kind_counts / len(structures) - wanted).max()),
      fingerprint_spread=spread)


# ----------------------------------------------------------------- labels

def label(structures: Sequence[ase.Atoms], calculator: str) -> list[ase.Atoms]:
  """Energies (eV) and forces (eV/A) by an ASE calculator named `calculator`
  ('emt' works offline for Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O), stored as
  single-point results so extxyz keeps them."""
  from ase.calculators.singlepoint import SinglePointCalculator
  if calculator.lower() != 'emt':
    raise ValueError(f'calculator {calculator!r}: only "emt" is built in; label '
                     'with your own ASE calculator from Python')
  from ase.calculators.emt import EMT, parameters
  out = []
  for k, atoms in enumerate(structures):
    bad = set(atoms.get_chemical_symbols()) - set(parameters)
    if bad:
      raise ValueError(f'structure {k}: EMT has no parameters for {sorted(bad)}')
    atoms = atoms.copy()
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    out.append(atoms)
  return out
