"""Sample structures from a trained run.

  python experiments/sample.py --checkpoint runs/quickstart --formula Al4 --num_samples 500 --out runs/samples
  python experiments/sample.py --checkpoint RUN --compositions_from FILE --samples_per_composition 20 --out DIR
  python experiments/sample.py --checkpoint RUN_DNG --num_samples 1000 --out DIR   (de novo)
"""
import os

from absl import app
from absl import flags
from absl import logging

from jaxcrystal.generative import generate
from jaxcrystal.geometry import neighbors
from jaxcrystal.training import checkpoints

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None, 'Training workdir to sample from.')
flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Which checkpoint.')
flags.DEFINE_integer('num_samples', 100, 'Samples (for --formula or de novo).')
flags.DEFINE_string('formula', '', 'One composition, e.g. BaTiO3 or C8.')
flags.DEFINE_string('compositions_from', '',
                    'File of structures (CSV, extxyz, ...): one sample per row.')
flags.DEFINE_integer('samples_per_composition', 1, 'With --compositions_from.')
flags.DEFINE_string('atom_counts_from', '',
                    'De novo: draw atom counts from this file (default: the '
                    "run's training data).")
flags.DEFINE_integer('batch_size', 256, 'Structures per sampling batch.')
flags.DEFINE_float('step_lr', 1e-5, 'Langevin corrector step scale.')
flags.DEFINE_integer('corrector_steps', 1,
                     'Langevin corrector steps per noise level (0: predictor only).')
flags.DEFINE_integer('seed', 0, 'Sampling seed.')
flags.DEFINE_string('out', None, 'Output folder.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['checkpoint', 'out'])
flags.register_validator('checkpoint', lambda v: v is None or os.path.isdir(v),
                         message='--checkpoint must be a training workdir')
flags.register_validator('num_samples', lambda v: v >= 1,
                         message='--num_samples must be >= 1')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  try:
    spec, params, config, step = generate.load_run(FLAGS.checkpoint, FLAGS.which)
  except (FileNotFoundError, checkpoints.CheckpointMismatchError) as err:
    raise app.UsageError(f'--checkpoint: {err}') from None
  compositions, lattices = generate.compositions_for_request(
      config, formula=FLAGS.formula, compositions_from=FLAGS.compositions_from,
      samples_per_composition=FLAGS.samples_per_composition,
      num_samples=FLAGS.num_samples, atom_counts_from=FLAGS.atom_counts_from,
      seed=FLAGS.seed)
  try:
    samples, timing = generate.sample_structures(
        spec, params, compositions, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        step_lr=FLAGS.step_lr, corrector_steps=FLAGS.corrector_steps,
        lattices=lattices, progress=FLAGS.progress)
  except neighbors.GraphOverflowError as err:
    raise app.UsageError(str(err)) from None
  summary = generate.write_samples(FLAGS.out, samples, {
      'checkpoint': FLAGS.checkpoint, 'checkpoint_step': step, **timing})
  print(summary)


if __name__ == '__main__':
  app.run(main)
