"""The README's main job: train on the built-in crystals, sample, validate, plot.

  python experiments/quickstart.py --flagfile=experiments/flags/quickstart.flags \
      --workdir=runs/quickstart
"""
import json

from absl import flags
from absl import logging

import train_flags  # noqa: F401  (defines the training flags)
from jaxcrystal import cli
from jaxcrystal.recipes import quickstart

FLAGS = flags.FLAGS
flags.DEFINE_integer('samples_per_structure', 5,
                     'Samples per built-in composition (21 compositions).')
cli.at_least(1, 'samples_per_structure')


def main(argv):
  logging.set_verbosity(logging.WARNING)
  config = train_flags.read_config()
  summary = quickstart.run_quickstart(
      config, FLAGS.workdir, FLAGS.samples_per_structure, resume=FLAGS.resume,
      seed=FLAGS.seed, overwrite=FLAGS.overwrite,
      files=train_flags.flags_file())
  shown = {k: v for k, v in summary.items() if k != 'train'}
  print(json.dumps(shown, indent=2))
  print(f'outputs in {FLAGS.workdir}: training_curve.png, samples/ '
        '(extxyz, cifs/, samples.npz, summary.json, plots)')


if __name__ == '__main__':
  cli.run(main)
