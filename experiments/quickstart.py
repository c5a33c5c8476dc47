"""The README's main job: train on the built-in crystals, sample, validate, plot.

  python experiments/quickstart.py --flagfile=experiments/flags/quickstart.flags \
      --workdir=runs/quickstart
"""
import json
import os

from absl import app
from absl import flags
from absl import logging

import train_flags  # noqa: F401  (defines the training flags)
from jaxcrystal.recipes import quickstart

FLAGS = flags.FLAGS
flags.DEFINE_integer('samples_per_structure', 5,
                     'Samples per built-in composition (21 compositions).')
flags.DEFINE_float('step_lr', 1e-5, 'Langevin corrector step scale.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  config = train_flags.config_from_flags()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  train_flags.save_flags(FLAGS.workdir)
  try:
    summary = quickstart.run_quickstart(
        config, FLAGS.workdir, FLAGS.samples_per_structure, resume=FLAGS.resume,
        seed=FLAGS.seed, step_lr=FLAGS.step_lr)
  except train_flags.GRAPH_ERRORS as err:
    raise app.UsageError(str(err)) from None
  shown = {k: v for k, v in summary.items() if k != 'train'}
  print(json.dumps(shown, indent=2))
  print(f'outputs in {FLAGS.workdir}: training_curve.png, samples/ '
        '(extxyz, cifs/, samples.npz, summary.json, plots)')


if __name__ == '__main__':
  app.run(main)
