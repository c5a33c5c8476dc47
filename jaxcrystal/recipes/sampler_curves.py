"""Match rate against network calls (issue 17): sample one structure per
target with a sampler at several call budgets and score each with the CSP
match rate. Behind `experiments/benchmark_sampling_steps.py`."""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import ase
import numpy as np

from jaxcrystal.evaluation import evaluate
from jaxcrystal.evaluation import metrics
from jaxcrystal.generative import generate
from jaxcrystal.generative import samplers
from jaxcrystal.plotting import plots


def match_against_calls(model, params, sampler: samplers.SamplerConfig,
                        targets: Sequence[ase.Atoms], calls: Sequence[int], *,
                        seed: int = 0, batch_size: int = 512, workers: int = 1,
                        progress: bool = True, log: Callable = print) -> list[dict]:
  """One row per budget in `calls`: the sampler with the most steps that
  fit (`SamplerConfig.for_calls`), one sample per target (paired by row),
  its one-sample match rate and RMSE (DiffCSP's definition), validity,
  the median volume of a sample over its target's, and timing (`sample_s`
  excludes compilation). The volume ratio matters: the matcher scales
  volumes and a cell many times too large passes the distance check, so a
  sampler that blows up cells can score matches on invalid structures."""
  compositions, rows = evaluate.csp_compositions(targets, 1)
  out = []
  for budget in calls:
    config = sampler.for_calls(model, budget)
    samples, timing = generate.sample_structures(
        model, params, compositions, sampler=config, batch_size=batch_size,
        seed=seed, progress=progress)
    generate.set_source_rows(samples, rows)
    groups = evaluate.group_predictions(samples, targets)
    scores = metrics.csp_match([g[0] for g in groups], targets, workers=workers,
                               progress=progress)
    row = dict(calls_budget=int(budget),
               network_calls_per_structure=timing['network_calls_per_structure'],
               sampler=dataclasses.asdict(config), num_targets=len(targets),
               match_rate=scores['match_rate'], rmse=scores['rmse'],
               valid_fraction=scores['valid_fraction'],
               volume_ratio_median=float(np.median(
                   [g[0].get_volume() / t.get_volume() for g, t in zip(groups, targets)])),
               sample_s=timing['sample_s'], compile_s=timing['compile_s'])
    log(f"{config.name} {config.num_steps} steps ({row['network_calls_per_structure']} "
        f"calls): match {100 * row['match_rate']:.2f} %, RMSE {row['rmse']:.4f}, "
        f"{row['sample_s']:.1f} s")
    out.append(row)
  return out


METRICS = {'match_rate': ('match rate (%), one sample', 100.0),
           'rmse': ('RMSE of matched samples', 1.0)}


def plot_match_against_calls(curves: Mapping[str, Sequence[dict]], path, *,
                             title: str = '', reference: Mapping[str, float] | None = None,
                             metric: str = 'match_rate'):
  """Match rate (%) or RMSE against network calls per structure (log axis),
  one curve per label; `reference`: labelled values drawn as lines."""
  ylabel, scale = METRICS[metric]
  lines = {label: ([r['network_calls_per_structure'] for r in rows],
                   [scale * r[metric] for r in rows])
           for label, rows in curves.items()}
  return plots.plot_curve(None, lines, path, xlabel='network calls per structure',
                          ylabel=ylabel, title=title, log_x=True, markers=True,
                          hlines=reference)
