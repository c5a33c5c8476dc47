"""Train a crystal diffusion model.

  python experiments/train_ddpm.py --flagfile=experiments/flags/quickstart.flags \
      --workdir=runs/quickstart
  (kill it, then add --resume to continue exactly where the last checkpoint was)
"""
from absl import logging

import train_flags  # noqa: F401  (defines the flags)
from jaxcrystal import cli
from jaxcrystal.generative import train

FLAGS = train_flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  train_flags.maybe_initialize_distributed()
  config = train_flags.read_config()
  summary = train.train_and_evaluate(
      config, FLAGS.workdir, resume=FLAGS.resume, overwrite=FLAGS.overwrite,
      files=train_flags.flags_file())
  print(summary)


if __name__ == '__main__':
  cli.run(main)
