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

from jaxcrystal.evaluation import evaluate
from jaxcrystal.evaluation import metrics
from jaxcrystal.generative import generate
from jaxcrystal.plotting import plots
from jaxcrystal.prediction import train as property_train


def guidance_sweep(model, params, config, predictor: property_train.Predictor,
                   reference: Sequence[ase.Atoms], compositions: Sequence,
                   targets: Sequence[float], weights: Sequence[float], *,
                   cov_cutoffs=metrics.COV_CUTOFFS['perov_5'], seed: int = 0,
                   batch_size: int = 256, workers: int = 1, progress: bool = True,
                   log: Callable = print) -> list[dict]:
  """One row per (target, weight), plus the unconditional row (target
  None, weight 0): struct./comp. validity, COV-R/COV-P against `reference`,
  the predicted property's mean, std and (for targets) mean absolute
  difference to the target over the structurally valid samples, and
  `predicted` (the list of those values, for the figure). Every row uses
  the same `compositions` (de novo atom counts) and seed."""
  prop = predictor.config.property
  reference_fps = metrics.fingerprints_of(reference, workers=workers, progress=False)
  jobs = [(None, 0.0)] + [(t, w) for t in targets for w in weights]
  rows = []
  for target, weight in jobs:
    t0 = time.perf_counter()
    requested = {} if target is None else {prop: float(target)}
    conditions = generate.request_conditions(config.model, requested, len(compositions),
                                             warn=log)
    samples, timing = generate.sample_structures(
        model, params, compositions, sampler=config.sampling, conditions=conditions,
        guidance=weight, batch_size=batch_size, seed=seed, progress=progress)
    scores = metrics.dng_metrics(samples, reference, cov_cutoffs=cov_cutoffs,
                                 unique_novel=False, workers=workers, progress=False,
                                 reference_fingerprints=reference_fps)
    predicted = property_train.predict(predictor, samples, progress=False)
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
  unconditional = rows[0]['predicted']
  for row in rows[1:]:  # the unconditional samples' distance to each target
    row['unconditional_mae_to_target'] = (float(np.mean(np.abs(
        np.asarray(unconditional) - row['target']))) if unconditional else math.nan)
  return rows


def markdown_table(rows: Sequence[dict], prop: str) -> str:
  """The sweep as a table: one line per (target, weight)."""
  lines = [f'| target {prop} | w | struct. valid % | comp. valid % | COV-R % | COV-P % | '
           f'predicted mean (std) | mean abs. diff. to target | unconditional\'s |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    target = 'unconditional' if r['target'] is None else f"{r['target']:g}"
    diff = '' if r['target'] is None else f"{r['property_mae_to_target']:.3f}"
    base = '' if r['target'] is None else f"{r['unconditional_mae_to_target']:.3f}"
    lines.append(f"| {target} | {r['weight']:g} | {100 * r['struct_validity']:.1f} | "
                 f"{100 * r['comp_validity']:.1f} | {100 * r['cov_recall']:.1f} | "
                 f"{100 * r['cov_precision']:.1f} | {r['property_mean']:.3f} "
                 f"({r['property_std']:.3f}) | {diff} | {base} |")
  return '\n'.join(lines)


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
  with matplotlib.rc_context(plots.STYLE):
    fig = plots.new_figure(figsize=(4.2 * len(targets), 6.4))
    axes = fig.subplots(2, len(targets), squeeze=False,
                        gridspec_kw=dict(height_ratios=(3, 2)))
    for k, target in enumerate(targets):
      ax = axes[0, k]
      ax.hist(unconditional, bins=bins, color='0.75', label='unconditional')
      for colour, w in zip(colours, weights):
        row = next(r for r in rows if r['target'] == target and r['weight'] == w)
        ax.hist(row['predicted'], bins=bins, histtype='step', lw=1.6, color=colour,
                label=f'w = {w:g} (|diff| {row["property_mae_to_target"]:.2f})')
      ax.axvline(target, color='crimson', ls='--', lw=1.2, label=f'target {target:g}')
      ax.set_xlabel(f'predicted {prop}')
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
