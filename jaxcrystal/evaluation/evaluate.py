"""Evaluate a file of generated structures against a test file: the papers'
metrics, a JSON and markdown report, and the analysis figures.

Used by `experiments/evaluate.py` and `experiments/run_benchmark.py`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import ase
import numpy as np

from jaxcrystal import errors
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import readers
from jaxcrystal.evaluation import descriptors
from jaxcrystal.evaluation import metrics
from jaxcrystal.plotting import structure_plots
from jaxcrystal.evaluation import validation

# Published figures (DiffCSP, Jiao et al. NeurIPS 2023, Tables 1 and 3; CDVAE
# as reported there), trained on the full official splits; for table context.
PUBLISHED = {
    ('csp', 'perov_5'): {
        'CDVAE': dict(match_rate=0.4531, rmse=0.1138, match_rate_k20=0.8851,
                      rmse_k20=0.0464),
        'DiffCSP': dict(match_rate=0.5202, rmse=0.0760, match_rate_k20=0.9860,
                        rmse_k20=0.0128)},
    ('csp', 'carbon_24'): {
        'CDVAE': dict(match_rate=0.1709, rmse=0.2969, match_rate_k20=0.8837,
                      rmse_k20=0.2286),
        'DiffCSP': dict(match_rate=0.1754, rmse=0.2759, match_rate_k20=0.8847,
                        rmse_k20=0.2192)},
    ('dng', 'perov_5'): {
        'CDVAE': dict(struct_validity=1.0, comp_validity=0.9859, cov_recall=0.9945,
                      cov_precision=0.9846, wdist_density=0.1258,
                      wdist_num_elements=0.0628),
        'DiffCSP': dict(struct_validity=1.0, comp_validity=0.9885, cov_recall=0.9974,
                        cov_precision=0.9827, wdist_density=0.1110,
                        wdist_num_elements=0.0128)},
    ('dng', 'carbon_24'): {
        'CDVAE': dict(struct_validity=1.0, cov_recall=0.9980, cov_precision=0.8308,
                      wdist_density=0.1407),
        'DiffCSP': dict(struct_validity=1.0, cov_recall=0.9990, cov_precision=0.9727,
                        wdist_density=0.0805)},
}

CSP_TABLE_COLUMNS = metrics.CSP_COLUMNS + (
    ('match_rate_k', 'Match rate, K samples (%)', 100.0),
    ('rmse_k', 'RMSE, K samples', 1.0),
    ('match_rate_composition', 'Composition-aware (%)', 100.0))


class PairingError(errors.UserError, ValueError):
  """Samples that cannot be paired with the test rows they were made for."""


def read_samples(path: str | Path) -> list[ase.Atoms]:
  """Generated structures from `.npz` (ours or DiffCSP's layout), extxyz, or
  anything ASE reads, as they are: nothing is refused for bad geometry (an
  invalid sample counts as invalid in the metrics). Raises DataError naming
  the file when it cannot be read, or lies in an unfinished output folder."""
  path = Path(path)
  if not path.exists():
    raise readers.DataError(f'--samples {path}: no such file')
  if path.suffix == '.npz':
    return readers.read_npz(path)
  structures, _ = readers.read_structures(str(path), validate=False)
  return structures


def made_for(samples_path: str | Path) -> dict | None:
  """{'path', 'sha256'} of the file the samples were made for, from the
  `.npz` itself (`made_for_sha256`) or the `summary.json` beside it; None
  when neither records one (DiffCSP's outputs, de novo samples)."""
  samples_path = Path(samples_path)
  if samples_path.suffix == '.npz':
    try:
      with np.load(samples_path) as data:
        if 'made_for_sha256' in data.files:
          return {'path': str(data['made_for_path']) if 'made_for_path' in data.files
                  else '?', 'sha256': str(data['made_for_sha256'])}
    except (OSError, ValueError, EOFError):
      return None
  summary = samples_path.parent / 'summary.json'
  try:
    record = json.loads(summary.read_text()).get('made_for')
  except (OSError, ValueError, AttributeError):
    return None
  return record if isinstance(record, dict) and 'sha256' in record else None


def check_made_for(samples_path: str | Path, test_path: str | Path,
                   allow_other: bool = False) -> dict:
  """Refuse (`readers.DataError`, one line) samples made for another file
  than `test_path` (compared by sha256), unless `allow_other`. Returns what
  was found, for metrics.json: {'made_for', 'test_sha256', 'check'}."""
  record = made_for(samples_path)
  test_sha = io_lib.file_sha256(test_path)
  if record is None:
    return {'made_for': None, 'test_sha256': test_sha, 'check': 'not recorded'}
  if record['sha256'] == test_sha:
    return {'made_for': record, 'test_sha256': test_sha, 'check': 'same file'}
  if not allow_other:
    raise readers.DataError(
        f'{samples_path} were made for {record["path"]} (sha256 '
        f'{record["sha256"][:12]}...), not {test_path} (sha256 {test_sha[:12]}...): '
        'evaluate them against that file, or pass --allow_other_test_file to '
        'score them anyway (recorded in metrics.json)')
  return {'made_for': record, 'test_sha256': test_sha,
          'check': 'overridden: made for another file (--allow_other_test_file)'}


def group_predictions(samples: Sequence[ase.Atoms], targets: Sequence[ase.Atoms],
                      by_position: bool = False) -> list[list[ase.Atoms]]:
  """The samples made for each target, in sample order.

  Pairs by row: a sample's `info['source_row']` (written by `sample.py
  --compositions_from`) is the target's `info['row']` in its file. With
  `by_position`, for files that record no rows (DiffCSP's outputs), K
  consecutive samples per target in file order instead. Every target needs
  at least one sample, and each sample its target's composition.

  Raises PairingError naming the sample or row at fault.
  """
  if not targets:
    raise PairingError('no test structures')
  if by_position:
    if len(samples) % len(targets):
      raise PairingError(f'{len(samples)} samples is not a multiple of the '
                         f'{len(targets)} test structures (K samples per test '
                         'row, in test-file order)')
    k = len(samples) // len(targets)
    groups = [list(samples[i * k:(i + 1) * k]) for i in range(len(targets))]
  else:
    rows = [s.info.get('source_row') for s in samples]
    unpaired = sum(r is None for r in rows)
    if unpaired:
      raise PairingError(
          f'{unpaired} of {len(samples)} samples do not record the test-file row '
          'they were made for (source_row): sample with sample.py '
          '--compositions_from TEST_FILE, or pass --pair_by_position for files '
          'in test-file order that record no rows (e.g. DiffCSP outputs)')
    index = {int(t.info.get('row', i)): i for i, t in enumerate(targets)}
    groups = [[] for _ in targets]
    for j, (sample, row) in enumerate(zip(samples, rows)):
      if int(row) not in index:
        raise PairingError(f'sample {j} was made for row {row}, which the test '
                           'file does not have (or skipped): another test file?')
      groups[index[int(row)]].append(sample)
    empty = [i for i, g in enumerate(groups) if not g]
    if empty:
      t = targets[empty[0]]
      raise PairingError(
          f'{len(empty)} test rows have no samples, first row '
          f'{t.info.get("row", empty[0])} ({t.info.get("material_id", "")}): the '
          'samples were made for another file, or a subset of this one')
  for i, (group, target) in enumerate(zip(groups, targets)):
    want = sorted(target.numbers.tolist())
    for pred in group:
      if sorted(pred.numbers.tolist()) != want:
        raise PairingError(
            f'a sample for test row {target.info.get("row", i)} has composition '
            f'{pred.get_chemical_formula()} but the row is '
            f'{target.get_chemical_formula()}' + (
                ': samples must follow the test file order, K per row'
                if by_position else ''))
  return groups


def random_subset(structures: Sequence[ase.Atoms], num: int = 0,
                  seed: int = 0) -> tuple[list[ase.Atoms], np.ndarray]:
  """A seeded random subset of `num` rows of a file, in file order (all rows
  when `num` is 0), and their row indices: test targets for CPU-budget runs,
  or real structures scored as if generated.

  Raises ValueError when more rows are asked for than the file has.
  """
  if num < 0:
    raise ValueError(f'the subset size must be >= 0, got {num}')
  if num > len(structures):
    raise ValueError(f'asked for {num} rows but the file has '
                     f'{len(structures)} usable rows')
  if num == 0:
    return list(structures), np.arange(len(structures))
  rows = np.sort(np.random.default_rng(seed).choice(len(structures), num,
                                                    replace=False))
  return [structures[i] for i in rows], rows


def csp_compositions(targets: Sequence[ase.Atoms], k: int
                     ) -> tuple[list[np.ndarray], list[int]]:
  """What to sample for CSP: each target's atomic numbers, `k` times in a
  row, and the target's file row for each (the `source_rows` of
  `generate.write_samples`, by which `group_predictions` pairs)."""
  return ([t.numbers for t in targets for _ in range(k)],
          [int(t.info.get('row', i)) for i, t in enumerate(targets) for _ in range(k)])


def evaluate_csp(samples: Sequence[ase.Atoms], targets: Sequence[ase.Atoms], *,
                 workers: int = 1, progress: bool = True,
                 by_position: bool = False) -> dict:
  """One-sample (first of each group), best-of-K and composition-aware
  rates; samples are paired with targets by `group_predictions`."""
  groups = group_predictions(samples, targets, by_position)
  k = max(len(g) for g in groups)
  # Validity (SMACT and distances) once per sample, not once per rate.
  valid_by_id = {id(s): metrics.is_valid_structure(s) for s in samples}
  is_valid = lambda atoms: valid_by_id[id(atoms)]
  one = metrics.csp_match([g[0] for g in groups], targets, is_valid=is_valid,
                          workers=workers, progress=progress)
  result = dict(task='csp', k=k, num_targets=len(targets),
                paired_by='position' if by_position else 'source_row',
                match_rate=one['match_rate'], rmse=one['rmse'],
                valid_fraction=one['valid_fraction'])
  if k > 1:
    best = metrics.csp_match(groups, targets, is_valid=is_valid, workers=workers,
                             progress=progress)
    result.update(match_rate_k=best['match_rate'], rmse_k=best['rmse'],
                  valid_fraction=best['valid_fraction'])
  aware = metrics.composition_aware_match(list(samples), targets, is_valid=is_valid,
                                          workers=workers, progress=progress)
  result.update(match_rate_composition=aware['match_rate'],
                rmse_composition=aware['rmse'])
  result['rms_per_target'] = (best if k > 1 else one)['rms_per_target']
  return result


def evaluate_dng(samples: Sequence[ase.Atoms], reference: Sequence[ase.Atoms],
                 train: Sequence[ase.Atoms] | None = None, *,
                 dataset: str = 'perov_5', num_eval_samples: int | None = 1000,
                 seed: int = 0, unique_novel: bool = True, workers: int = 1,
                 progress: bool = True) -> dict:
  """CDVAE's generation metrics with the dataset's COV cutoffs (uniqueness
  and novelty too unless `unique_novel` is False; see metrics.dng_metrics)."""
  if dataset not in metrics.COV_CUTOFFS:
    raise ValueError(f'unknown dataset {dataset!r} for COV cutoffs; choose from '
                     f'{sorted(metrics.COV_CUTOFFS)}')
  result = metrics.dng_metrics(samples, reference, train,
                               cov_cutoffs=metrics.COV_CUTOFFS[dataset],
                               num_eval_samples=num_eval_samples, seed=seed,
                               unique_novel=unique_novel, workers=workers,
                               progress=progress)
  return dict(task='dng', dataset=dataset, **result)


def property_scores(predicted: np.ndarray, valid: np.ndarray,
                    target: float | None = None) -> dict:
  """How generated structures score on a predicted property (issue 34):
  `predicted [S]` (a property predictor's values, or a property computed
  from the structure such as its space group; NaN where it could not
  run), `valid [S]` structurally valid samples. Over the valid samples
  with a value: mean, std and median and, given the `target` they were
  asked for, the mean absolute difference to it and the share equal to it
  (`property_hit_rate`: what a class such as a space group is judged by)."""
  predicted = np.asarray(predicted, float)
  ok = np.asarray(valid, bool) & np.isfinite(predicted)
  values = predicted[ok]
  out = dict(property_count=int(ok.sum()),
             property_mean=float(values.mean()) if values.size else math.nan,
             property_std=float(values.std()) if values.size else math.nan,
             property_median=float(np.median(values)) if values.size else math.nan)
  if target is not None:
    out['property_target'] = float(target)
    out['property_mae_to_target'] = (float(np.mean(np.abs(values - target)))
                                     if values.size else math.nan)
    out['property_hit_rate'] = (float(np.mean(values == target)) if values.size
                                else math.nan)
  return out


def markdown_report(result: dict, dataset: str, label: str = 'jaxcrystal') -> str:
  """The papers' table for `result`, with the published rows beside it."""
  task = result['task']
  rows = {}
  for name, published in PUBLISHED.get((task, dataset), {}).items():
    shown = dict(published)
    if task == 'csp':  # published K = 20 columns
      shown.update(match_rate_k=published.get('match_rate_k20'),
                   rmse_k=published.get('rmse_k20'))
    rows[f'{name} (published, full train split)'] = shown
  rows[label] = result
  columns = CSP_TABLE_COLUMNS if task == 'csp' else metrics.DNG_COLUMNS
  head = f'## {task.upper()} on {dataset}'
  if task == 'csp':
    head += f' (K = {result["k"]} samples per test structure)'
  evaluated, in_file = result.get('test_rows_evaluated'), result.get('test_rows_in_file')
  if evaluated is not None and in_file is not None and evaluated < in_file:
    head += (f'\n\nEvaluated on a random subset of {evaluated} of the {in_file} '
             f'test rows (seed {result.get("target_seed", 0)}).')
  text = head + '\n\n' + metrics.markdown_table(rows, columns)
  if 'property_mean' in result:
    text += (f"\n\nPredicted {result.get('property', 'property')} of "
             f"{result['property_count']} structurally valid samples: mean "
             f"{result['property_mean']:.4g}, std {result['property_std']:.4g}")
    if 'property_target' in result:
      text += (f"; asked for {result['property_target']:.4g}, mean absolute "
               f"difference {result['property_mae_to_target']:.4g}")
    text += '.'
  return text


def write_report(outdir: str | Path, result: dict, samples: Sequence[ase.Atoms],
                 reference: Sequence[ase.Atoms], dataset: str,
                 label: str = 'jaxcrystal') -> dict[str, Path]:
  """Write `metrics.json`, `metrics.md` and the figures (real against
  generated, batch analysis) into `outdir`. Returns the paths."""
  outdir = Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  paths = {'json': outdir / 'metrics.json', 'markdown': outdir / 'metrics.md'}
  summary = validation.summary_arrays(samples)
  result = dict(result, symmetry_library_messages=int(
      summary['symmetry_messages'].sum()))
  nulls = io_lib.write_json_atomic(paths['json'], result)
  if nulls:
    print(f'{paths["json"]}: {nulls} NaN or infinite values written as null')
  io_lib.write_text_atomic(paths['markdown'], markdown_report(result, dataset, label))
  paths['batch'] = structure_plots.plot_batch_analysis(
      summary, samples, outdir / 'batch_analysis.png',
      title=f'{len(samples)} generated structures')
  usable = [s for s, ok in zip(samples, summary['valid']) if ok]
  curves, r = {}, None
  for name, group in (('reference', list(reference)[:200]), ('generated', usable[:200])):
    try:
      r, curves[name] = descriptors.mean_rdf(group)
    except ValueError:  # nothing with a sensible cell: no curve
      pass
  shown = {k: v for k, v in result.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
  # CSP: show each test structure beside its own (first) prediction.
  shown_generated = ([g[0] for g in group_predictions(
      samples, reference, result.get('paired_by') == 'position')]
                     if result['task'] == 'csp' else usable or list(samples))
  paths['real_vs_generated'] = structure_plots.plot_real_vs_generated(
      list(reference), shown_generated, r if r is not None else np.zeros(1),
      curves, shown, outdir / 'real_vs_generated.png',
      title=f'{dataset}: test structures against generated')
  return paths
