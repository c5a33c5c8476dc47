"""The sample-quality monitor of a training run: every K steps, sample a fixed
set of structures from the EMA parameters (fixed seed, the run's sampler or
a few-step one) and score them with the field's metrics against the
validation set, so a run shows when its samples, not only its loss, stop
improving (`training.loop.run(monitor=...)`, flags `--monitor_*`).

  de novo (the model generates types): N atom counts drawn once from the
      training crystals' counts; struct. / comp. validity, COV-R / COV-P
      (fingerprints of the reference set computed once), density, #elements
      and atoms-per-crystal EMDs (`metrics.dng_metrics`). Quality: the mean
      of COV-R and COV-P (COV-P counts invalid samples as misses).
  structure prediction: one sample for each of the first N reference
      crystals, with its composition (and cell, for fixed-cell tasks):
      match rate and RMSE (`metrics.csp_match`). Quality: the match rate.

A conditioned model is told the reference crystals' property values (cycled
for de novo). Each check also logs `monitor_s` (the whole check) and `sample_s`. The
sampler is compiled at the first check and reused (`compiled`).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import ase
import numpy as np

from jaxcrystal.data import properties as properties_lib
from jaxcrystal.evaluation import metrics
from jaxcrystal.generative import generate
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import samplers
from jaxcrystal.generative import sampling


def make_quality_monitor(model: model_lib.Model, sampler: samplers.SamplerConfig,
                         reference: Sequence[ase.Atoms], atom_counts: Sequence[int],
                         *, num_samples: int = 256, seed: int = 0,
                         cov_cutoffs: tuple[float, float] = metrics.COV_CUTOFFS['perov_5'],
                         workers: int = 1) -> Callable[[object, int], dict]:
  """`monitor(params, step) -> {'quality', metric: value, ...}` (see the
  module docstring).

  Args:
    model: the model being trained.
    sampler: how to sample (resolved against `model`; e.g. the run's stored
      sampler with fewer steps).
    reference: the validation crystals scored against.
    atom_counts: atoms per training crystal (de novo counts are drawn
      from it).
    num_samples: structures per check (structure prediction: at most the
      reference's size).
    seed: seed of the counts and of the sampler (the same at every check).
    cov_cutoffs: (structure, composition) fingerprint cutoffs of COV.
  """
  if not reference:
    raise ValueError('the sample-quality monitor needs validation structures')
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}')
  sampler = sampler.resolve(model)
  de_novo = model.task.generates_types
  if de_novo:
    counts = sampling.sample_atom_counts(np.random.default_rng(seed), atom_counts,
                                         num_samples)
    compositions = [np.ones(int(n), int) for n in counts]
    targets, lattices = None, None
  else:
    targets = list(reference[:num_samples])
    compositions = [t.numbers for t in targets]
    lattices = None if model.task.generates_lattice else [t.cell[:] for t in targets]
  # A conditioned model is told the reference crystals' values (cycled for
  # de novo samples), so its samples aim at the reference's distribution.
  conditions = None
  if model.config.conditions:
    values = properties_lib.property_values(reference, model.config.properties)
    rows = np.arange(len(compositions)) % len(reference)
    conditions = {prop: v[rows].tolist() for prop, v in values.items()}
  compiled: dict = {}
  reference_fps: list = []

  def monitor(params, step: int) -> dict:
    t0 = time.perf_counter()
    structures, timing = generate.sample_structures(
        model, params, compositions, sampler=sampler, seed=seed,
        batch_size=len(compositions), lattices=lattices, conditions=conditions,
        progress=False, compiled=compiled)
    if de_novo:
      if not reference_fps:
        reference_fps.extend(metrics.fingerprints_of(reference, workers=workers,
                                                     progress=False))
      out = metrics.dng_metrics(structures, reference, cov_cutoffs=cov_cutoffs,
                                unique_novel=False, workers=workers, progress=False,
                                reference_fingerprints=reference_fps)
      out.pop('num_reference', None)
      quality = 0.5 * (out['cov_recall'] + out['cov_precision'])
    else:
      match = metrics.csp_match(structures, targets, workers=workers, progress=False)
      out = {k: match[k] for k in ('match_rate', 'rmse', 'valid_fraction')}
      quality = out['match_rate']
    return dict(quality=quality, **out, sample_s=timing['sample_s'],
                monitor_s=time.perf_counter() - t0)

  return monitor
