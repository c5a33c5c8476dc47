"""Does guidance steer? (issue 34) For several target values of a property
and several guidance weights, sample de novo structures from a conditioned
model, score them with a property predictor and the de novo metrics, and
compare with unconditional samples of the same model (conditions unknown).
Behind `experiments/guidance_sweep.py`; the figure is `plot_guidance`."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import ase
import matplotlib
import numpy as np

from jaxcrystal import errors
from jaxcrystal.data import properties as properties_lib
from jaxcrystal.evaluation import evaluate
from jaxcrystal.evaluation import metrics
from jaxcrystal.generative import generate
from jaxcrystal.generative import request
from jaxcrystal.plotting import plots
from jaxcrystal.prediction import train as property_train


def derived_scorer(prop: str) -> Callable[[Sequence[ase.Atoms]], np.ndarray]:
  """Samples -> `[S]` values of a numeric property computed from the
  structure (`properties.DERIVED_PROPERTIES`: space_group, num_elements,
  num_atoms), exact where a predictor would estimate."""
  if prop not in properties_lib.DERIVED_PROPERTIES or prop in properties_lib.VECTOR_PROPERTIES:
    raise errors.UserError(
        f'{prop!r} is not a number computed from the structure; give a predictor '
        f'(one of {sorted(set(properties_lib.DERIVED_PROPERTIES) - set(properties_lib.VECTOR_PROPERTIES))} '
        'needs none)')
  def score(samples):  # spacegroup.symmetry_dataset counts spglib's C messages itself
    return properties_lib.property_values(samples, (prop,))[prop]
  return score


def predictor_scorer(predictor: property_train.Predictor):
  """Samples -> `[S]` values the property predictor gives them."""
  return lambda samples: property_train.predict(predictor, samples, progress=False)


def guidance_sweep(model, params, config, prop: str,
                   score: Callable[[Sequence[ase.Atoms]], np.ndarray],
                   reference: Sequence[ase.Atoms], compositions: Sequence,
                   targets: Sequence[float], weights: Sequence[float], *,
                   cov_cutoffs=metrics.COV_CUTOFFS['perov_5'], seed: int = 0,
                   batch_size: int = 256, workers: int = 1, progress: bool = True,
                   log: Callable = print) -> list[dict]:
  """One row per (target, weight), plus the unconditional row (target
  None, weight 0): struct./comp. validity, COV-R/COV-P against `reference`,
  the property's mean, std and (for targets) mean absolute difference to
  the target and share equal to it over the structurally valid samples, as
  `score` (`predictor_scorer`, `derived_scorer`) gives them, and
  `predicted` (the list of those values, for the figure). Every row uses
  the same `compositions` (de novo atom counts) and seed."""
  reference_fps = metrics.fingerprints_of(reference, workers=workers, progress=False)
  jobs = [(None, 0.0)] + [(t, w) for t in targets for w in weights]
  rows = []
  for target, weight in jobs:
    t0 = time.perf_counter()
    requested = {} if target is None else {prop: float(target)}
    conditions = request.request_conditions(config.model, requested, len(compositions),
                                             warn=log)
    samples, timing = generate.sample_structures(
        model, params, compositions, sampler=config.sampling, conditions=conditions,
        guidance=weight, batch_size=batch_size, seed=seed, progress=progress)
    scores = metrics.dng_metrics(samples, reference, cov_cutoffs=cov_cutoffs,
                                 unique_novel=False, workers=workers, progress=False,
                                 reference_fingerprints=reference_fps)
    predicted = np.asarray(score(samples), float)
    valid = np.array([metrics.structural_validity(s) for s in samples])
    row = dict(target=target, weight=weight, num_samples=len(samples),
               sample_s=timing['sample_s'],
               **{k: scores[k] for k in ('struct_validity', 'comp_validity',
                                         'cov_recall', 'cov_precision')},
               **evaluate.property_scores(predicted, valid, target))
    row['predicted'] = [float(v) for v in predicted[valid & np.isfinite(predicted)]]
    row['seconds'] = time.perf_counter() - t0
    log(f"target {target} w {weight}: valid {row['struct_validity']:.3f}, "
        f"COV {row['cov_recall']:.3f}/{row['cov_precision']:.3f}, predicted "
        f"{row['property_mean']:.3f} +- {row['property_std']:.3f}"
        + (f", |diff| {row['property_mae_to_target']:.3f}" if target is not None else ''))
    rows.append(row)
  unconditional = np.asarray(rows[0]['predicted'])
  for row in rows[1:]:  # the unconditional samples' distance to each target
    row['unconditional_mae_to_target'] = (float(np.mean(np.abs(
        unconditional - row['target']))) if unconditional.size else math.nan)
    row['unconditional_hit_rate'] = (float(np.mean(unconditional == row['target']))
                                     if unconditional.size else math.nan)
  return rows


def markdown_table(rows: Sequence[dict], prop: str) -> str:
  """The sweep as a table: one line per (target, weight)."""
  classes = categorical(rows)
  judged = ('valid samples at target % | unconditional\'s' if classes else
            'mean abs. diff. to target | unconditional\'s')
  lines = [f'| target {prop} | w | struct. valid % | comp. valid % | COV-R % | COV-P % | '
           f'{prop} mean (std) | {judged} |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    target = 'unconditional' if r['target'] is None else f"{r['target']:g}"
    if r['target'] is None:
      diff = base = ''
    elif classes:
      diff, base = (f"{100 * r['property_hit_rate']:.1f}",
                    f"{100 * r['unconditional_hit_rate']:.1f}")
    else:
      diff, base = (f"{r['property_mae_to_target']:.3f}",
                    f"{r['unconditional_mae_to_target']:.3f}")
    lines.append(f"| {target} | {r['weight']:g} | {100 * r['struct_validity']:.1f} | "
                 f"{100 * r['comp_validity']:.1f} | {100 * r['cov_recall']:.1f} | "
                 f"{100 * r['cov_precision']:.1f} | {r['property_mean']:.3f} "
                 f"({r['property_std']:.3f}) | {diff} | {base} |")
  return '\n'.join(lines)


def categorical(rows: Sequence[dict]) -> bool:
  """Whether the sweep's targets are classes (whole numbers, e.g. space
  groups), judged by the share of samples at the target."""
  return all(float(r['target']).is_integer() for r in rows if r['target'] is not None) \
      and all(float(v).is_integer() for r in rows for v in r['predicted'])


def plot_guidance(rows: Sequence[dict], prop: str, path, title: str = '') -> Path:
  """One panel per target: histograms of the predicted property of the
  guided samples at each weight over the unconditional ones (grey), the
  target as a line; below, validity and COV against the weight."""
  unconditional = rows[0]['predicted']
  targets = sorted({r['target'] for r in rows if r['target'] is not None})
  weights = sorted({r['weight'] for r in rows if r['target'] is not None})
  everything = [v for r in rows for v in r['predicted']] or list(targets)
  bins = np.linspace(min(np.percentile(everything, 0.5), min(targets)),
                     max(np.percentile(everything, 99.5), max(targets)), 40)
  colours = matplotlib.colormaps['viridis'](np.linspace(0, 0.9, len(weights)))
  classes = categorical(rows)
  with matplotlib.rc_context(plots.STYLE):
    fig = plots.new_figure(figsize=(4.2 * len(targets), 6.4))
    axes = fig.subplots(2, len(targets), squeeze=False,
                        gridspec_kw=dict(height_ratios=(3, 2)))
    for k, target in enumerate(targets):
      ax = axes[0, k]
      ax.hist(unconditional, bins=bins, color='0.75', label='unconditional')
      for colour, w in zip(colours, weights):
        row = next(r for r in rows if r['target'] == target and r['weight'] == w)
        judged = (f'{100 * row["property_hit_rate"]:.0f} % at target' if classes
                  else f'|diff| {row["property_mae_to_target"]:.2f}')
        ax.hist(row['predicted'], bins=bins, histtype='step', lw=1.6, color=colour,
                label=f'w = {w:g} ({judged})')
      ax.axvline(target, color='crimson', ls='--', lw=1.2, label=f'target {target:g}')
      ax.set_xlabel(prop if classes else f'predicted {prop}')
      ax.set_ylabel('valid samples')
      ax.legend(frameon=False, fontsize=7)
      low = axes[1, k]
      chosen = [next(r for r in rows if r['target'] == target and r['weight'] == w)
                for w in weights]
      for key, label in (('struct_validity', 'struct. valid'), ('cov_recall', 'COV-R'),
                         ('cov_precision', 'COV-P')):
        line = low.plot(weights, [100 * r[key] for r in chosen], marker='o', label=label)
        low.axhline(100 * rows[0][key], color=line[0].get_color(), ls=':', lw=1)
      low.set_xlabel('guidance weight w (dotted: unconditional)')
      low.set_ylabel('%')
      low.legend(frameon=False, fontsize=7)
    if title:
      fig.suptitle(title)
    return plots.save_figure(fig, path)
