"""Train the local denoiser on damaged supercells and heal structures with it.

`train_denoiser(config, workdir)` writes its training set (ideal supercells,
with and without vacancies) to extxyz, reads it back, trains with on-the-fly
damage and checkpoints with orbax; `load_denoiser` restores a run;
`heal_structure` heals one structure of any size (cell list when the cell is
large enough, else the brute-force radius graph).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import ase
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.training import checkpoints
from jaxcrystal.healing import defects
from jaxcrystal.healing import denoiser
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import outputs
from jaxcrystal.data import readers
from jaxcrystal.geometry import neighbors
from jaxcrystal.plotting import plots
from jaxcrystal.training import loop as loop_lib
from jaxcrystal.training import state as state_lib

GRAPH_SKIN = 1.0  # Angstrom beyond the cutoff: healing moves atoms this far safely


@dataclasses.dataclass(frozen=True)
class HealingTrainConfig:
  """A denoiser training run (lengths in Angstrom)."""
  model: denoiser.DenoiserConfig = denoiser.DenoiserConfig()
  optim: state_lib.OptimConfig = state_lib.OptimConfig(learning_rate=2e-3,
                                                       ema_decay=0.99)
  element: str = 'Pt'
  structure: str = 'fcc'
  lattice_constant: float = 3.924
  repeats: tuple[int, ...] = (2, 3)   # supercell sizes in the training set
  vacancy_fraction: float = 0.5       # share of training cells with a vacancy
  num_structures: int = 16
  batch_size: int = 8
  train_steps: int = 2000
  checkpoint_every: int = 500
  log_every: int = 50
  seed: int = 0
  progress: bool = True

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> 'HealingTrainConfig':
    d = dict(d)
    d['model'] = denoiser.DenoiserConfig(**d['model'])
    d['optim'] = state_lib.OptimConfig(**d['optim'])
    d['repeats'] = tuple(d['repeats'])
    return cls(**d)


def training_structures(config: HealingTrainConfig) -> list[ase.Atoms]:
  """Ideal supercells of the configured sizes, a share with one vacancy."""
  rng = np.random.default_rng(config.seed)
  out = []
  for k in range(config.num_structures):
    reps = config.repeats[k % len(config.repeats)]
    atoms = defects.supercell(config.element, config.structure,
                              config.lattice_constant, reps)
    if rng.random() < config.vacancy_fraction:
      atoms, _ = defects.remove_atom(atoms, int(rng.integers(len(atoms))))
      atoms.info['vacancy'] = True
    out.append(atoms)
  return out


def _model(config: HealingTrainConfig) -> denoiser.LocalDenoiser:
  config.model.validate()
  return denoiser.LocalDenoiser(config.model)


def train_denoiser(config: HealingTrainConfig, workdir: str | Path,
                   resume: bool = False, log: Callable = print) -> dict:
  """Train in `workdir` with the training kit: writes train.extxyz,
  config.json, metrics.jsonl, training_curve.png and checkpoints.
  Returns the loop's summary."""
  workdir = Path(workdir)
  data_path = workdir / 'train.extxyz'
  if not (resume and data_path.is_file()):
    loop_lib.check_workdir(workdir, resume, overwrite=False)
    workdir.mkdir(parents=True, exist_ok=True)
    outputs.write_owner(workdir, 'run', [data_path.name])
    io_lib.write_extxyz(data_path, training_structures(config))
  structures, _ = readers.read_structures(str(data_path))  # what was written
  log(f'{len(structures)} training supercells ({config.element} {config.structure}) '
      f'in {data_path}')
  max_atoms = max(len(s) for s in structures)
  budget = batch_lib.Budget(config.batch_size + 1,
                            int(np.ceil((config.batch_size * max_atoms + 1) / 8) * 8),
                            max_atoms)
  model = _model(config)
  example = batch_lib.batch_from_atoms(structures[:config.batch_size], budget)
  max_image, capacity = denoiser.graph_capacity(example, config.model.cutoff + 0.5)
  loss_fn = denoiser.get_loss_fn(model, max_image, int(capacity * 1.2))
  optimizer = state_lib.make_optimizer(config.optim, config.train_steps)
  step_fn = jax.jit(state_lib.make_train_step(loss_fn, optimizer,
                                              config.optim.ema_decay), donate_argnums=0)
  rng = jax.random.PRNGKey(config.seed)
  params = denoiser.init_params(model, rng, batch_lib.to_device(example))
  state = state_lib.initial_state(params, optimizer, jax.random.fold_in(rng, 1))
  batch_for_step = loop_lib.replayed_draws(config.seed, lambda r: batch_lib.to_device(
      batch_lib.batch_from_atoms(
          [structures[i] for i in r.choice(len(structures), config.batch_size,
                                           replace=False)], budget)))
  loop = loop_lib.LoopConfig(
      train_steps=config.train_steps, log_every=config.log_every,
      checkpoint_every=config.checkpoint_every, keep_checkpoints=2,
      progress=config.progress, desc='train denoiser', curve_keys=('loss',))
  _, summary = loop_lib.run(workdir, loop, state, step_fn, batch_for_step,
                            config_dict=config.to_dict(), resume=resume, log=log)
  return summary


def load_denoiser(workdir: str | Path, use_ema: bool = True):
  """(model, params, config) of a `train_denoiser` run (no optimizer built)."""
  workdir = Path(workdir)
  config = checkpoints.read_config(workdir, HealingTrainConfig.from_dict,
                                  'a denoiser run (--workdir of train_denoiser.py)')
  model = _model(config)
  example = batch_lib.to_device(batch_lib.batch_from_atoms([defects.supercell(
      config.element, config.structure, config.lattice_constant, 1)]))
  like = jax.eval_shape(lambda r: denoiser.init_params(model, r, example),
                        jax.random.PRNGKey(0))
  params, _ = checkpoints.restore_params(workdir, 'latest', use_ema, like)
  return model, params, config


def build_graph(atoms: ase.Atoms, cutoff: float) -> neighbors.NeighborList:
  """Neighbour list of one structure at `cutoff` A, cell list when the cell
  allows it (linear cost), else brute force over images. Checks overflow."""
  frac = atoms.get_scaled_positions(wrap=True)
  lattice = np.asarray(atoms.cell[:], np.float32)
  try:
    spec = neighbors.allocate_cell_list(frac, lattice, cutoff)
    nbrs = neighbors.cell_list_graph(jnp.asarray(frac, jnp.float32),
                                     jnp.asarray(lattice), spec)
  except ValueError:  # cell thinner than three bins: small system
    # Padding slots follow the N real atoms; their edges are masked.
    b = batch_lib.to_device(batch_lib.batch_from_atoms([atoms]))
    max_image, capacity = denoiser.graph_capacity(b, cutoff)
    nbrs = neighbors.radius_graph(b, cutoff, max_image, capacity)
  if nbrs.did_overflow():
    raise RuntimeError(f'neighbour list overflowed at cutoff {cutoff} A')
  return nbrs


def heal_structure(model: denoiser.LocalDenoiser, params, atoms: ase.Atoms,
                   num_steps: int = 60, tolerance: float = 1e-3,
                   heal_fn: Callable | None = None):
  """Heal one structure. Returns (healed atoms, trajectory frames as
  `ase.Atoms` (input first), largest move per step `[num_steps]` A)."""
  nbrs = build_graph(atoms, model.config.cutoff + GRAPH_SKIN)
  heal_fn = heal_fn or jax.jit(denoiser.get_healer(model, num_steps, tolerance))
  frac = jnp.asarray(atoms.get_scaled_positions(wrap=True), jnp.float32)
  lattice = jnp.asarray(atoms.cell[:], jnp.float32)
  species = jnp.asarray(atoms.numbers, jnp.int32)
  final, traj, largest = heal_fn(params, frac, lattice, species, nbrs)
  traj = np.asarray(jax.device_get(traj), np.float64)
  frames = []
  for frac_k in traj:
    frame = atoms.copy()
    frame.set_scaled_positions(frac_k)
    frames.append(frame)
  return frames[-1], frames, np.asarray(largest)


def _relax_check(damaged: ase.Atoms, healed: ase.Atoms, ideal: ase.Atoms) -> dict:
  """RMSDs (A, translation removed) to the damaged structure relaxed with
  EMT in positions (fmax 0.01 eV/A)."""
  from jaxcrystal.evaluation import relaxation
  config = relaxation.RelaxConfig(potential='emt', relax_cell=False, fmax=0.01,
                                  max_steps=2000)
  relaxed, record = relaxation.relax_structure(damaged, config, config.calculator())
  out = dict(potential='emt', fmax=config.fmax, converged=record['converged'],
             steps=record['steps'], failure=record['failure'])
  if not record['failure']:
    out.update(rmsd_healed_to_relaxed=defects.rmsd(healed, relaxed),
               rmsd_damaged_to_relaxed=defects.rmsd(damaged, relaxed),
               rmsd_ideal_to_relaxed=defects.rmsd(ideal, relaxed))
  return out


def vacancy_experiment(model: denoiser.LocalDenoiser, params,
                       config: HealingTrainConfig, *, repeat: int = 4,
                       thermal_sigma: float = 0.05, vacancy_displacement: float = 0.3,
                       trials: int = 10, trial_sigma: float = 0.1, num_steps: int = 60,
                       seed: int = 1000, outdir: str | Path | None = None,
                       progress: bool = True, physics_check: bool = False) -> dict:
  """Heal a vacancy whose neighbours are displaced `vacancy_displacement` A
  (the rest by `thermal_sigma`), then `trials` held-out supercells with a
  random vacancy and damage `trial_sigma` A. With `outdir`, writes the
  showcase trajectory (LAMMPS dump and extxyz), `report.json` and
  `rmsd_per_step.png`. Returns the report dict.

  `physics_check`: also relax the damaged showcase supercell with ASE's EMT
  potential (positions, cell kept; `evaluation.relaxation`) and report the
  RMSD of the healed structure, the damaged one and the ideal sites to that
  physically relaxed structure (the denoiser returns atoms to ideal sites;
  physics also lets the vacancy's neighbours relax)."""
  rng = np.random.default_rng(seed)  # seeds differ from training's
  ideal_full = defects.supercell(config.element, config.structure,
                                 config.lattice_constant, repeat)
  heal_fn = jax.jit(denoiser.get_healer(model, num_steps))
  removed = int(rng.integers(len(ideal_full)))
  ideal, site = defects.remove_atom(ideal_full, removed)
  damaged = defects.damage(rng, ideal, thermal_sigma, site=site,
                           site_displacement=vacancy_displacement,
                           site_radius=0.5 * (config.lattice_constant / np.sqrt(2) +
                                              config.lattice_constant))
  healed, frames, largest = heal_structure(model, params, damaged, num_steps,
                                           heal_fn=heal_fn)
  show = defects.healing_report(damaged, healed, ideal, site,
                                int(np.sum(largest >= 1e-3)))
  rmsd_steps = [defects.rmsd(f, ideal) for f in frames]
  results = []
  for _ in tqdm(range(trials), desc='held-out trials', disable=not progress):
    ideal_t, site_t = defects.remove_atom(ideal_full, int(rng.integers(len(ideal_full))))
    damaged_t = defects.damage(rng, ideal_t, trial_sigma)
    healed_t, _, largest_t = heal_structure(model, params, damaged_t, num_steps,
                                            heal_fn=heal_fn)
    results.append(defects.healing_report(damaged_t, healed_t, ideal_t, site_t,
                                          int(np.sum(largest_t >= 1e-3))))
  perfect_healed, _, _ = heal_structure(model, params, ideal_full, num_steps,
                                        heal_fn=heal_fn)
  perfect_move = float(np.abs(defects.displacement_from_ideal(
      perfect_healed, ideal_full, remove_translation=False)).max())
  report = dict(
      system=f'{config.element} {config.structure} {repeat}x{repeat}x{repeat} '
             f'({len(ideal)} atoms, one vacancy)',
      showcase=dict(dataclasses.asdict(show), improvement=show.improvement,
                    thermal_sigma=thermal_sigma,
                    vacancy_displacement=vacancy_displacement,
                    rmsd_per_step=rmsd_steps),
      trials=dict(count=trials, sigma=trial_sigma,
                  improvement=[r.improvement for r in results],
                  min_improvement=min((r.improvement for r in results), default=None),
                  vacancy_empty=sum(r.vacancy_empty for r in results),
                  rmsd_before=[r.rmsd_before for r in results],
                  rmsd_after=[r.rmsd_after for r in results]),
      perfect_lattice_max_move=perfect_move)
  if physics_check:
    report['physical_relaxation'] = _relax_check(damaged, healed, ideal)
  if outdir is not None:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    io_lib.write_lammps_dump(outdir / 'healing.lammpstrj', frames)
    io_lib.write_extxyz(outdir / 'healing.extxyz', frames)
    io_lib.write_extxyz(outdir / 'ideal.extxyz', [ideal])
    io_lib.write_json_atomic(outdir / 'report.json', report)
    plots.plot_curve(np.arange(len(rmsd_steps)), {'RMSD to ideal sites': rmsd_steps},
                     outdir / 'rmsd_per_step.png', xlabel='healing step',
                     ylabel='RMSD (A)', log_y=True,
                     title=f'Healing {report["system"]}')
  return report
