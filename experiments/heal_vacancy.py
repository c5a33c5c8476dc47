"""Heal a damaged Pt supercell with a vacancy using a trained denoiser.

  python experiments/heal_vacancy.py --denoiser=runs/healing_pt --out=runs/heal_vacancy

Builds a supercell, removes one atom, displaces the vacancy's neighbours by
--vacancy_displacement A and the rest thermally, heals, and writes the
trajectory (healing.lammpstrj for OVITO/VMD, healing.extxyz), report.json and
rmsd_per_step.png; then heals --trials held-out supercells (random vacancy,
damage --trial_sigma) and reports how many improved tenfold and kept the
vacancy empty.
"""
import json

from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal.data import outputs
from jaxcrystal.healing import heal as healing

FLAGS = flags.FLAGS
flags.DEFINE_string('denoiser', None, 'Workdir of train_denoiser.py.')
flags.DEFINE_string('out', None, 'Output folder (new or empty).')
flags.DEFINE_bool('overwrite', False, 'Replace what --out holds.')
flags.DEFINE_integer('repeat', 4, 'Supercell size n (n x n x n conventional cells).')
flags.DEFINE_float('thermal_sigma', 0.05, 'Thermal damage of all atoms (A).')
flags.DEFINE_float('vacancy_displacement', 0.3, "Displacement of the vacancy's "
                   'neighbours (A).')
flags.DEFINE_integer('trials', 10, 'Held-out damaged supercells.')
flags.DEFINE_float('trial_sigma', 0.1, 'Damage of the held-out supercells (A).')
flags.DEFINE_integer('num_steps', 60, 'Healing steps at most.')
flags.DEFINE_integer('seed', 1000, 'Seed of the damage (training used others).')
flags.DEFINE_bool('physics_check', True, "Also relax the damaged showcase with ASE's "
                  'EMT potential (positions) and report the RMSD of the healed '
                  'structure to the physically relaxed one.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['denoiser', 'out'])
cli.existing_dir('denoiser', 'a train_denoiser.py workdir')
cli.at_least(2, 'repeat')
cli.at_least(1, 'trials', 'num_steps')
cli.at_least(0, 'thermal_sigma', 'vacancy_displacement', 'trial_sigma')


def _output() -> dict:
  """How --out is checked and written (`jaxcrystal.data.outputs`)."""
  return dict(overwrite=FLAGS.overwrite, kind='healing', inputs=cli.flag_paths('denoiser'))


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  outputs.check_writable(FLAGS.out, **_output())
  model, params, config = healing.load_denoiser(FLAGS.denoiser)
  with outputs.output_folder(FLAGS.out, **_output()) as out:
    report = healing.vacancy_experiment(
        model, params, config, repeat=FLAGS.repeat, thermal_sigma=FLAGS.thermal_sigma,
        vacancy_displacement=FLAGS.vacancy_displacement, trials=FLAGS.trials,
        trial_sigma=FLAGS.trial_sigma, num_steps=FLAGS.num_steps, seed=FLAGS.seed,
        outdir=out, progress=FLAGS.progress, physics_check=FLAGS.physics_check)
  show, trials = report['showcase'], report['trials']
  print(report['system'])
  print(f"showcase: RMSD {show['rmsd_before']:.4f} -> {show['rmsd_after']:.4f} A "
        f"({show['improvement']:.1f}x), largest remaining displacement "
        f"{show['max_displacement_after']:.4f} A, vacancy empty: {show['vacancy_empty']} "
        f"(closest atom {show['closest_to_vacancy']:.2f} A), neighbour coordination "
        f"{show['vacancy_neighbor_coordination']}")
  print(f"held-out: {trials['count']} supercells at sigma {trials['sigma']} A, "
        f"improvement min {trials['min_improvement']:.1f}x, vacancy empty in "
        f"{trials['vacancy_empty']}/{trials['count']}")
  print(f"perfect lattice: largest move {report['perfect_lattice_max_move']:.2e} A")
  physics = report.get('physical_relaxation')
  if physics and not physics['failure']:
    print(f"against EMT relaxation of the damaged showcase: healed {physics['rmsd_healed_to_relaxed']:.4f} A, "
          f"damaged {physics['rmsd_damaged_to_relaxed']:.4f} A, ideal sites "
          f"{physics['rmsd_ideal_to_relaxed']:.4f} A")
  elif physics:
    print(f"EMT relaxation of the showcase failed: {physics['failure']}")
  print(json.dumps({'out': FLAGS.out}))


if __name__ == '__main__':
  cli.run(main)
