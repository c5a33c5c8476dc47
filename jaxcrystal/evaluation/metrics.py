"""The field's generative-model metrics, computed as CDVAE and DiffCSP do.

Crystal structure prediction (CSP):
  * `csp_match` - match rate and RMSE with pymatgen's `StructureMatcher(stol=0.5,
    angle_tol=10, ltol=0.3)`; prediction i is compared with target i; an invalid
    prediction (or target) is a miss; the RMSE is pymatgen's, normalised by
    (V/N)^(1/3), averaged over matches. With K predictions per target the best
    (lowest RMSE) valid match counts (the papers' K = 20 figures).
  * `composition_aware_match` - for each target, the best match among all
    predictions of the same reduced composition (robust to polymorphs that the
    index pairing scores as misses).

De novo generation (DNG), CDVAE's `GenEval`:
  * structural validity (every pair of atoms at least 0.5 A apart, volume at
    least 0.1 A^3), compositional validity (SMACT charge neutrality with the
    Pauling electronegativity test; one element or all metals count as valid),
  * COV-R / COV-P from CrystalNN site fingerprints (averaged over sites) and
    Magpie composition fingerprints scaled by CDVAE's constants,
  * Wasserstein distances of density and of the number of elements between the
    valid generated structures and the reference set, and of the number of
    atoms per crystal between all generated structures and the reference set
    (how well the sampled atom counts follow the data),
  * uniqueness and novelty (against a training set) by `StructureMatcher`.

All functions take `ase.Atoms` and run on the host; the slow parts (matching,
fingerprints) run over a process pool with a progress bar.
"""
from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import functools
import json
import math
import warnings
from importlib import resources
from typing import Callable, Iterable, Sequence

import ase
import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance
from tqdm.auto import tqdm

from jaxcrystal.evaluation import validation
from jaxcrystal.geometry import spacegroup

MATCHER_KWARGS = dict(stol=0.5, angle_tol=10, ltol=0.3)
# (structure, composition) fingerprint-distance cutoffs of COV, as CDVAE/DiffCSP.
COV_CUTOFFS = {'perov_5': (0.2, 4.0), 'carbon_24': (0.2, 4.0),
               'mp_20': (0.4, 10.0)}
STRUCT_VALID_DISTANCE = 0.5  # Angstrom
STRUCT_VALID_VOLUME = 0.1    # Angstrom^3


# ----------------------------------------------------------------- helpers

def to_pymatgen(atoms: ase.Atoms):
  """`ase.Atoms` -> pymatgen `Structure` (same lattice rows, Angstrom)."""
  from pymatgen.core import Lattice, Structure
  return Structure(Lattice(np.asarray(atoms.cell[:], float)),
                   atoms.get_chemical_symbols(),
                   atoms.get_scaled_positions(wrap=False))


def reduced_formula(atoms: ase.Atoms) -> str:
  """Reduced formula, e.g. 'SrTiO3' for Sr2Ti2O6 (the composition key)."""
  from pymatgen.core import Composition
  return Composition(atoms.get_chemical_formula()).reduced_formula


def _finite(atoms: ase.Atoms) -> bool:
  return bool(np.all(np.isfinite(atoms.cell[:])) and
              np.all(np.isfinite(atoms.positions)) and len(atoms) > 0)


def structural_validity(atoms: ase.Atoms,
                        cutoff: float = STRUCT_VALID_DISTANCE) -> bool:
  """CDVAE's definition: every pair of distinct atoms (minimum image) at least
  `cutoff` Angstrom apart and the cell volume at least 0.1 Angstrom^3."""
  if not _finite(atoms):
    return False
  volume = abs(float(np.linalg.det(atoms.cell[:])))
  if volume < STRUCT_VALID_VOLUME:
    return False
  if len(atoms) < 2:
    return True
  from ase.geometry import find_mic
  i, j = np.triu_indices(len(atoms), 1)
  _, d = find_mic(atoms.positions[j] - atoms.positions[i], atoms.cell[:], pbc=True)
  return bool(d.min() >= cutoff)


def compositional_validity(atoms: ase.Atoms) -> bool:
  """SMACT charge neutrality with the Pauling electronegativity test, on the
  reduced composition; a single element or all metals (alloys) are valid.
  Uses SMACT's original oxidation-state table ('smact14'), as CDVAE did."""
  from pymatgen.core import Composition
  from smact.screening import smact_validity
  if not len(atoms):
    return False
  comp = Composition(atoms.get_chemical_formula())
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return bool(smact_validity(comp, use_pauling_test=True, include_alloys=True,
                               oxidation_states_set='smact14'))


def _pool_map(fn: Callable, items: Sequence, workers: int, desc: str,
              progress: bool) -> list:
  """`[fn(x) for x in items]`, over `workers` processes if > 1, in order."""
  bar = dict(total=len(items), desc=desc, disable=not progress, leave=False)
  if workers <= 1 or len(items) < 2 * workers:
    return [fn(x) for x in tqdm(items, **bar)]
  chunk = max(1, len(items) // (workers * 8))
  # spawn, not fork: JAX's threads in this process can deadlock a fork.
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('spawn')) as pool:
    return list(tqdm(pool.map(fn, items, chunksize=chunk), **bar))


# ----------------------------------------------------------------- CSP

def _rms_of_pair(pair) -> float:
  """Normalised RMS of a (prediction, target) pair; NaN when not matched.
  An absurd predicted cell (spacegroup.absurd_cell) is a miss without asking
  pymatgen, whose Niggli reduction can run for minutes on one."""
  pred, target = pair
  if spacegroup.absurd_cell(pred.cell[:]):
    return math.nan
  from pymatgen.analysis.structure_matcher import StructureMatcher
  matcher = StructureMatcher(**MATCHER_KWARGS)
  try:
    rms = matcher.get_rms_dist(to_pymatgen(pred), to_pymatgen(target))
  except Exception:  # pymatgen raises on degenerate lattices of bad samples
    return math.nan
  return math.nan if rms is None else float(rms[0])


def is_valid_structure(atoms: ase.Atoms, composition: bool = True) -> bool:
  """Structural validity and, with `composition`, SMACT validity."""
  return structural_validity(atoms) and (
      not composition or compositional_validity(atoms))


def csp_match(predictions: Sequence[Sequence[ase.Atoms]] | Sequence[ase.Atoms],
              targets: Sequence[ase.Atoms], *, check_composition: bool = True,
              is_valid: Callable[[ase.Atoms], bool] | None = None,
              workers: int = 1, progress: bool = True) -> dict:
  """Match rate and mean normalised RMSE of CSP predictions.

  As DiffCSP, a pair counts only when both prediction and target are valid
  (structurally and, with `check_composition`, by SMACT): 6 of Perov-5's 387
  val compositions fail SMACT, so there the rate cannot exceed 98.4 %.

  Args:
    predictions: one `ase.Atoms` per target, or K per target (`[T][K]`).
    targets: the T reference structures.
    check_composition: include SMACT validity (the papers' definition).
    is_valid: validity of a prediction, if already known (e.g. a lookup of
      precomputed flags); by default computed with `check_composition`.
  Returns:
    dict with `match_rate` (fraction of targets matched), `rmse` (mean over
    matched targets of the best normalised RMS; NaN if none), `k`,
    `num_targets`, `valid_fraction` of predictions, and `rms_per_target`
    (list, NaN where missed).
  """
  per_target = [list(p) if not isinstance(p, ase.Atoms) else [p]
                for p in predictions]
  if len(per_target) != len(targets):
    raise ValueError(f'{len(per_target)} prediction groups for {len(targets)} '
                     'targets; prediction i must belong to target i')
  if not targets:
    raise ValueError('no targets')
  k = max(len(p) for p in per_target)
  if is_valid is None:
    is_valid = functools.partial(is_valid_structure, composition=check_composition)
  target_valid = [is_valid_structure(t, check_composition) for t in targets]
  pairs, owners = [], []
  num_valid = 0
  for i, (preds, target) in enumerate(zip(per_target, targets)):
    for pred in preds:
      if is_valid(pred):
        num_valid += 1
        if target_valid[i]:  # an invalid target cannot be matched (DiffCSP)
          pairs.append((pred, target))
          owners.append(i)
  rms = _pool_map(_rms_of_pair, pairs, workers, 'matching', progress)
  best = np.full(len(targets), np.nan)
  for i, r in zip(owners, rms):
    if not math.isnan(r) and not (r >= best[i]):
      best[i] = r
  matched = np.isfinite(best)
  total = sum(len(p) for p in per_target)
  return dict(match_rate=float(matched.mean()),
              rmse=float(best[matched].mean()) if matched.any() else math.nan,
              k=k, num_targets=len(targets),
              valid_fraction=num_valid / max(total, 1),
              rms_per_target=best.tolist())


def composition_aware_match(predictions: Sequence[ase.Atoms],
                            targets: Sequence[ase.Atoms], *,
                            check_composition: bool = True,
                            is_valid: Callable[[ase.Atoms], bool] | None = None,
                            workers: int = 1, progress: bool = True) -> dict:
  """For each target, the best match among all valid predictions of the same
  reduced composition. Same fields as `csp_match` (with `k` the mean number of
  candidates per target)."""
  if is_valid is None:
    is_valid = functools.partial(is_valid_structure, composition=check_composition)
  by_formula = collections.defaultdict(list)
  valid = [is_valid(p) for p in predictions]
  for p, ok in zip(predictions, valid):
    if ok:
      by_formula[reduced_formula(p)].append(p)
  groups = [by_formula.get(reduced_formula(t), []) for t in targets]
  # Every candidate here is valid already: no need to check again.
  result = csp_match(groups, targets, check_composition=check_composition,
                     is_valid=lambda _: True, workers=workers, progress=progress)
  result['k'] = float(np.mean([len(g) for g in groups]))
  result['valid_fraction'] = float(np.mean(valid)) if valid else 0.0
  return result


# ----------------------------------------------------------------- DNG

@functools.lru_cache(maxsize=1)
def _featurizers():
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint
    return (CrystalNNFingerprint.from_preset('ops'),
            ElementProperty.from_preset('magpie', impute_nan=False))


@functools.lru_cache(maxsize=1)
def magpie_scaler() -> tuple[np.ndarray, np.ndarray]:
  """CDVAE's means and standard deviations of the 132 Magpie features."""
  text = resources.files('jaxcrystal.evaluation').joinpath('magpie_scaler.json').read_text()
  data = json.loads(text)
  return np.array(data['means']), np.array(data['stds'])


def fingerprints(atoms: ase.Atoms):
  """(structure fingerprint [61], composition fingerprint [132]) of CDVAE:
  CrystalNN 'ops' site fingerprints averaged over sites, and Magpie element
  statistics. (None, None) when CrystalNN fails, as on a broken sample."""
  from pymatgen.core import Composition
  site_fp, comp_fp = _featurizers()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    try:
      comp = np.asarray(comp_fp.featurize(Composition(atoms.get_chemical_formula())),
                        float)
      structure = to_pymatgen(atoms)
      sites = [site_fp.featurize(structure, i) for i in range(len(structure))]
    except Exception:
      return None, None
  return np.asarray(sites, float).mean(0), comp


def fingerprints_of(structures: Sequence[ase.Atoms], *, workers: int = 1,
                    progress: bool = True, desc: str = 'fingerprints') -> list:
  """`fingerprints()` of each structure, over `workers` processes, in order."""
  return _pool_map(fingerprints, list(structures), workers, desc, progress)


def _scale_composition(fps: np.ndarray) -> np.ndarray:
  means, stds = magpie_scaler()
  out = (fps - means) / stds
  return np.where(np.isnan(out), 0.0, out)  # CDVAE's replace_nan_token = 0


def coverage(generated_fps: Sequence, reference_fps: Sequence,
             struct_cutoff: float, comp_cutoff: float,
             num_generated: int | None = None) -> dict:
  """COV-R and COV-P (CDVAE's `compute_cov`), and how far each side is from
  the other's nearest structure fingerprint (medians, the same units as
  `struct_cutoff`): `struct_dist_recall` over reference crystals,
  `struct_dist_precision` over generated ones with a fingerprint. Where COV
  is 0 these still show whether samples move toward the cutoff.

  Args:
    generated_fps, reference_fps: `fingerprints()` pairs; generated pairs that
      are (None, None) are dropped but still count in the COV-P denominator.
    struct_cutoff, comp_cutoff: fingerprint-distance thresholds.
    num_generated: COV-P denominator (default: `len(generated_fps)`).
  """
  if num_generated is None:
    num_generated = len(generated_fps)
  gen = [(s, c) for s, c in generated_fps if s is not None and c is not None]
  ref = [(s, c) for s, c in reference_fps if s is not None and c is not None]
  if not gen or not ref:
    return dict(cov_recall=0.0, cov_precision=0.0,
                struct_dist_recall=math.nan, struct_dist_precision=math.nan)
  gs, gc = (np.array(x) for x in zip(*gen))
  rs, rc = (np.array(x) for x in zip(*ref))
  struct_d = cdist(gs, rs)
  comp_d = cdist(_scale_composition(gc), _scale_composition(rc))
  recall = np.logical_and(struct_d.min(0) <= struct_cutoff,
                          comp_d.min(0) <= comp_cutoff)
  precision = np.logical_and(struct_d.min(1) <= struct_cutoff,
                             comp_d.min(1) <= comp_cutoff)
  return dict(cov_recall=float(recall.mean()),
              cov_precision=float(precision.sum() / max(num_generated, 1)),
              struct_dist_recall=float(np.median(struct_d.min(0))),
              struct_dist_precision=float(np.median(struct_d.min(1))))


def _group_unique(structures: Sequence[ase.Atoms]) -> list[int]:
  """Indices of one representative per StructureMatcher group (matching only
  within a reduced composition)."""
  from pymatgen.analysis.structure_matcher import StructureMatcher
  matcher = StructureMatcher(**MATCHER_KWARGS)
  by_formula = collections.defaultdict(list)
  for i, s in enumerate(structures):
    by_formula[reduced_formula(s)].append(i)
  reps = []
  for members in by_formula.values():
    pmg = [to_pymatgen(structures[i]) for i in members]
    for group in matcher.group_structures(pmg):
      reps.append(members[pmg.index(group[0])])
  return sorted(reps)


def _novel(args) -> bool:
  structure, known = args
  from pymatgen.analysis.structure_matcher import StructureMatcher
  matcher = StructureMatcher(**MATCHER_KWARGS)
  s = to_pymatgen(structure)
  return not any(matcher.fit(s, to_pymatgen(k)) for k in known)


def uniqueness_novelty(structures: Sequence[ase.Atoms],
                       train: Sequence[ase.Atoms] | None = None, *,
                       workers: int = 1, progress: bool = True) -> dict:
  """Uniqueness (distinct StructureMatcher groups / structures) and, given a
  training set, novelty (fraction of the unique ones matching no training
  structure) and their product (unique and novel rate)."""
  if not structures:
    return dict(uniqueness=math.nan, novelty=math.nan)
  reps = _group_unique(structures)
  out = dict(uniqueness=len(reps) / len(structures))
  if train is not None:
    by_formula = collections.defaultdict(list)
    for t in train:
      by_formula[reduced_formula(t)].append(t)
    jobs = [(structures[i], by_formula.get(reduced_formula(structures[i]), []))
            for i in reps]
    novel = _pool_map(_novel, jobs, workers, 'novelty', progress)
    out['novelty'] = float(np.mean(novel))
    out['unique_novel'] = float(np.sum(novel) / len(structures))
  return out


def dng_metrics(generated: Sequence[ase.Atoms], reference: Sequence[ase.Atoms],
                train: Sequence[ase.Atoms] | None = None, *,
                cov_cutoffs: tuple[float, float] = COV_CUTOFFS['perov_5'],
                num_eval_samples: int | None = None, seed: int = 0,
                unique_novel: bool = True, workers: int = 1,
                progress: bool = True,
                reference_fingerprints: Sequence | None = None) -> dict:
  """De novo metrics of CDVAE/DiffCSP.

  Validity is over all generated structures. Density and #elements EMDs use
  the valid ones (a random subset of `num_eval_samples` if given, as CDVAE's
  1000); the atoms-per-crystal EMD (`wdist_num_atoms`) uses all generated
  structures, since the atom counts are drawn before any structure is. COV uses all generated structures, with failures counted in the
  COV-P denominator. Uniqueness and novelty are over the valid ones; with
  `unique_novel=False` they are left out (they are not in the papers' tables,
  and on a one-element set such as Carbon-24 every structure shares a formula,
  so StructureMatcher would compare all pairs and every training structure).
  `reference_fingerprints`: `fingerprints()` of `reference`, if already
  computed (a training monitor scores against the same set many times).
  """
  if not generated or not reference:
    raise ValueError('dng_metrics needs generated and reference structures')
  struct_ok = np.array([structural_validity(a) for a in generated])
  comp_ok = np.array([compositional_validity(a) for a in generated])
  valid = struct_ok & comp_ok
  valid_structs = [a for a, v in zip(generated, valid) if v]
  if num_eval_samples is not None and len(valid_structs) > num_eval_samples:
    pick = np.random.default_rng(seed).choice(len(valid_structs),
                                              num_eval_samples, replace=False)
    valid_structs = [valid_structs[i] for i in sorted(pick)]
  out = dict(num_generated=len(generated), num_reference=len(reference),
             struct_validity=float(struct_ok.mean()),
             comp_validity=float(comp_ok.mean()), validity=float(valid.mean()),
             wdist_num_atoms=float(wasserstein_distance(
                 [len(a) for a in generated], [len(a) for a in reference])))
  if valid_structs:
    out['wdist_density'] = float(wasserstein_distance(
        [validation.density_g_cm3(a) for a in valid_structs],
        [validation.density_g_cm3(a) for a in reference]))
    out['wdist_num_elements'] = float(wasserstein_distance(
        [len(set(a.numbers)) for a in valid_structs],
        [len(set(a.numbers)) for a in reference]))
  gen_usable = [a if struct_ok[i] and not spacegroup.absurd_cell(a.cell[:]) else None
                for i, a in enumerate(generated)]
  gen_fps = _pool_map(_fingerprints_or_none, gen_usable, workers,
                      'fingerprints (generated)', progress)
  ref_fps = reference_fingerprints
  if ref_fps is None:
    ref_fps = fingerprints_of(reference, workers=workers, progress=progress,
                              desc='fingerprints (reference)')
  out.update(coverage(gen_fps, ref_fps, *cov_cutoffs,
                      num_generated=len(generated)))
  if unique_novel:
    out.update(uniqueness_novelty(valid_structs, train, workers=workers,
                                  progress=progress))
  return out


def _fingerprints_or_none(atoms):
  # CDVAE computes fingerprints only for constructible (here: structurally
  # valid, not absurd) crystals; the others count as uncovered.
  return (None, None) if atoms is None else fingerprints(atoms)


# ----------------------------------------------------------------- tables

CSP_COLUMNS = (('match_rate', 'Match rate (%)', 100.0), ('rmse', 'RMSE', 1.0))
DNG_COLUMNS = (('struct_validity', 'Validity struc. (%)', 100.0),
               ('comp_validity', 'Validity comp. (%)', 100.0),
               ('cov_recall', 'COV-R (%)', 100.0),
               ('cov_precision', 'COV-P (%)', 100.0),
               ('wdist_density', 'd_rho', 1.0),
               ('wdist_num_elements', 'd_elem', 1.0),
               ('wdist_num_atoms', 'd_N', 1.0),
               ('uniqueness', 'Unique (%)', 100.0),
               ('novelty', 'Novel (%)', 100.0))


def markdown_table(rows: dict[str, dict], columns: Iterable[tuple[str, str, float]]
                   ) -> str:
  """A markdown table in the papers' layout: one row per named result."""
  columns = list(columns)
  head = '| | ' + ' | '.join(label for _, label, _ in columns) + ' |'
  lines = [head, '|---' * (len(columns) + 1) + '|']
  for name, result in rows.items():
    cells = []
    for key, _, scale in columns:
      v = result.get(key)
      cells.append('-' if v is None or (isinstance(v, float) and math.isnan(v))
                   else f'{v * scale:.2f}' if scale != 1.0 else f'{v:.4f}')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'

