"""Train the local healing denoiser on damaged supercells.

  python experiments/train_denoiser.py --flagfile=experiments/flags/healing_pt.flags \
      --workdir=runs/healing_pt
"""
from absl import app
from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal.healing import denoiser
from jaxcrystal.healing import heal as healing
from jaxcrystal.training import state as state_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory (must be new).')
flags.DEFINE_string('element', 'Pt', 'Chemical element of the crystal.')
flags.DEFINE_string('structure', 'fcc', "ASE prototype: fcc, bcc, sc, diamond, ...")
flags.DEFINE_float('lattice_constant', 3.924, 'Cubic lattice constant (A).')
flags.DEFINE_list('repeats', ['2', '3'], 'Supercell sizes n (n x n x n cells).')
flags.DEFINE_float('vacancy_fraction', 0.5, 'Share of training cells with a vacancy.')
flags.DEFINE_integer('num_structures', 16, 'Training supercells.')
flags.DEFINE_float('cutoff', 4.5, 'Neighbour cutoff (A).')
flags.DEFINE_integer('num_basis', 16, 'Gaussian radial basis functions.')
flags.DEFINE_integer('hidden', 64, 'Width of the weight network.')
flags.DEFINE_bool('noise_conditioning', False, 'Give the model the damage scale.')
flags.DEFINE_float('sigma_min', 0.01, 'Smallest training damage (A per coordinate).')
flags.DEFINE_float('sigma_max', 0.10, 'Largest training damage (A per coordinate).')
flags.DEFINE_integer('batch_size', 4, 'Supercells per step.')
flags.DEFINE_integer('train_steps', 1500, 'Optimizer steps.')
flags.DEFINE_float('lr', 2e-3, 'Peak learning rate.')
flags.DEFINE_float('ema_decay', 0.99, 'EMA decay of the parameters.')
flags.DEFINE_integer('seed', 0, 'Seed of data, parameters and damage.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.DEFINE_bool('resume', False, 'Continue exactly from the latest checkpoint '
                  'in --workdir.')
flags.mark_flags_as_required(['workdir'])
flags.register_validator('repeats', lambda v: all(x.isdigit() and int(x) >= 1 for x in v),
                         message='--repeats must be positive integers, e.g. 2,3')
cli.at_least(1, 'batch_size', 'num_structures', 'num_basis', 'hidden', 'train_steps')
cli.positive('lattice_constant', 'cutoff', 'sigma_min', 'sigma_max', 'lr')
cli.at_least(0, 'vacancy_fraction')
flags.register_validator('ema_decay', lambda v: 0 <= v < 1,
                         message='--ema_decay must be in [0, 1)')


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  if FLAGS.batch_size > FLAGS.num_structures:
    raise app.UsageError('--batch_size cannot exceed --num_structures')
  config = healing.HealingTrainConfig(
      model=denoiser.DenoiserConfig(
          cutoff=FLAGS.cutoff, num_basis=FLAGS.num_basis, hidden=FLAGS.hidden,
          noise_conditioning=FLAGS.noise_conditioning, sigma_min=FLAGS.sigma_min,
          sigma_max=FLAGS.sigma_max),
      optim=state_lib.OptimConfig(learning_rate=FLAGS.lr, ema_decay=FLAGS.ema_decay),
      element=FLAGS.element, structure=FLAGS.structure,
      lattice_constant=FLAGS.lattice_constant,
      repeats=tuple(int(r) for r in FLAGS.repeats),
      vacancy_fraction=FLAGS.vacancy_fraction, num_structures=FLAGS.num_structures,
      batch_size=FLAGS.batch_size, train_steps=FLAGS.train_steps,
      checkpoint_every=max(FLAGS.train_steps // 4, 1), seed=FLAGS.seed,
      progress=FLAGS.progress)
  try:
    config.model.validate()
    summary = healing.train_denoiser(config, FLAGS.workdir, resume=FLAGS.resume)
  except (ValueError, FileExistsError) as err:
    raise app.UsageError(str(err))
  print(summary)


if __name__ == '__main__':
  cli.run(main)
