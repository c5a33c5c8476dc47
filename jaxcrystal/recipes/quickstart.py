"""The quickstart: train on the built-in crystals, sample, validate, plot.

The check is physical: a generated Al4 cell should be fcc (coordination 12),
Fe2 bcc (8) and C8 diamond (4), with no atoms closer than 0.7 Angstrom.
"""
from __future__ import annotations

from pathlib import Path

import ase
import jax
import numpy as np

from jaxcrystal.data import datasets
from jaxcrystal.evaluation import descriptors
from jaxcrystal.generative import generate
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import outputs
from jaxcrystal.plotting import plots
from jaxcrystal.plotting import process_views
from jaxcrystal.plotting import structure_plots
from jaxcrystal.generative import train
from jaxcrystal.evaluation import validation

ELEMENT_COORDINATION = {
    symbol: datasets.PROTOTYPE_COORDINATION[proto] for symbol, proto, _ in datasets.BASES}


def prototype_check(atoms: ase.Atoms, min_distance: float = 0.7) -> tuple[bool, str]:
  """Whether a sample has every atom coordinated like its element's training
  prototype (Al 12, Fe 8, C 4) and no pair closer than `min_distance` A."""
  symbols = set(atoms.get_chemical_symbols())
  if len(symbols) != 1 or next(iter(symbols)) not in ELEMENT_COORDINATION:
    return False, f'composition {atoms.get_chemical_formula()} not in the built-in set'
  try:
    validation.check_structure(atoms, min_distance)
    cn = validation.coordination_by_nearest_shell(atoms)
  except validation.StructureError as err:
    return False, str(err)
  want = ELEMENT_COORDINATION[next(iter(symbols))]
  if np.all(cn == want):
    return True, ''
  return False, f'coordination {sorted(set(cn.tolist()))} != {want}'


def run_quickstart(config: train.TrainConfig, workdir: str | Path,
                   samples_per_structure: int = 5, resume: bool = False,
                   seed: int = 0, log=print,
                   overwrite: bool = False, files: dict | None = None) -> dict:
  """Train, sample `samples_per_structure` x 21 crystals, validate and plot.
  The samples and figures go to `workdir/samples`, replaced as a whole."""
  workdir = Path(workdir)
  train_summary = train.train_and_evaluate(config, workdir, resume=resume, log=log,
                                           overwrite=overwrite, files=files)
  model, params, _, step = generate.load_run(workdir, which='latest')
  structures = datasets.builtin_structures()
  compositions = [s.numbers for s in structures] * samples_per_structure
  samples, timing = generate.sample_structures(
      model, params, compositions, batch_size=len(compositions), seed=seed,
      sampler=config.sampling, progress=config.progress)
  checks = [prototype_check(s) for s in samples]
  passed = [ok for ok, _ in checks]
  for s, (ok, why) in zip(samples, checks):
    s.info['prototype_ok'] = ok
    s.info['check'] = why or 'ok'
  with outputs.output_folder(workdir / 'samples', overwrite=True, kind='samples',
                             flag='--workdir') as out:
    summary = generate.write_samples(out, samples, {
        'checkpoint_step': step,
        'prototype_match_fraction': float(np.mean(passed)),
        'sampling_compile_s': timing['compile_s'],
        'sampling_s': timing['sample_s'],
        'train': train_summary,
    })
    _plots(out, structures, samples, summary)
    _process_plots(out, model, params, structures, seed, config.sampling)
  return summary


def _process_plots(out: Path, model, params, structures, seed, sampler) -> None:
  """Schedule analysis (score models), forward process and one sampling
  trajectory."""
  if hasattr(model.processes['coords'], 'schedule'):
    structure_plots.plot_schedule(
        model.processes['lattice'].schedule.betas,
        model.processes['lattice'].schedule.alpha_bars,
        model.processes['coords'].schedule.sigmas, out / 'schedule.png')
  diamond = next(s for s in structures if s.info.get('base') == 'diamond')
  rng = jax.random.PRNGKey(seed)
  frames, labels = process_views.forward_snapshots(rng, model, diamond)
  structure_plots.plot_structure_snapshots(
      frames, labels, out / 'forward_process.png',
      title=f'Forward process: {diamond.get_chemical_formula()} (diamond)')
  frames, labels = process_views.sampling_trajectory(
      jax.random.fold_in(rng, 1), model, params, diamond.numbers, sampler=sampler)
  structure_plots.plot_structure_snapshots(
      frames, labels, out / 'reverse_process.png',
      title=f'Reverse process: sampling {diamond.get_chemical_formula()}')


def _plots(out: Path, real, samples, summary) -> None:
  curves = {}
  for symbol in ELEMENT_COORDINATION:
    gen = [s for s in samples if s.get_chemical_symbols()[0] == symbol and
           s.info.get('prototype_ok')]
    ref = [s for s in real if s.get_chemical_symbols()[0] == symbol]
    r, g = descriptors.mean_rdf(ref)
    curves[f'{symbol} training'] = g
    if gen:  # passing samples have sensible cells
      curves[f'{symbol} generated ({len(gen)})'] = descriptors.mean_rdf(gen)[1]
  plots.plot_rdf(r, curves, out / 'rdf_real_vs_generated.png',
                 title='RDF: training vs generated (passing samples)')
  with np.load(out / 'samples.npz') as npz:  # from write_samples
    arrays = dict(npz)
  plots.plot_histograms(
      {'density (g/cm^3)': arrays['density'], 'min distance (A)': arrays['min_distance'],
       'mean coordination': arrays['mean_coordination']},
      out / 'batch_histograms.png', title='Generated structures')
  structure_plots.plot_batch_analysis(
      arrays, samples, out / 'batch_analysis.png',
      title='Quickstart samples')
  shown = {'prototype match': summary['prototype_match_fraction'],
           'valid (min dist 0.5 A)': summary['valid_fraction'],
           'mean density (g/cm^3)': summary['density_mean'],
           'samples': summary['num_samples']}
  # One ideal crystal per element beside a passing sample of the same element.
  shown_real = real[::len(datasets.VARIANTS)]
  pool = [s for s in samples if s.info.get('prototype_ok')] or samples
  shown_generated = [next((s for s in pool if s.get_chemical_symbols()[0] ==
                           ref.get_chemical_symbols()[0]), pool[0])
                     for ref in shown_real]
  structure_plots.plot_real_vs_generated(
      shown_real, shown_generated, r, curves, shown, out / 'real_vs_generated.png',
      title='Built-in crystals against quickstart samples')
  passing = [s for s in samples if s.info.get('prototype_ok')]
  if passing:
    io_lib.write_extxyz(out / 'passing.extxyz', passing)
