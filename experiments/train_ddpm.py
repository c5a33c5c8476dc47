"""Train a crystal diffusion model.

  python experiments/train_ddpm.py --flagfile=experiments/flags/quickstart.flags \
      --workdir=runs/quickstart
  (kill it, then add --resume to continue exactly where the last checkpoint was)
"""
import os

from absl import app
from absl import logging

import train_flags  # noqa: F401  (defines the flags)
from jaxcrystal.generative import train

FLAGS = train_flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  train_flags.maybe_initialize_distributed()
  config = train_flags.config_from_flags()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  train_flags.save_flags(FLAGS.workdir)
  try:
    summary = train.train_and_evaluate(config, FLAGS.workdir, resume=FLAGS.resume)
  except train_flags.GRAPH_ERRORS as err:
    raise app.UsageError(str(err)) from None
  print(summary)


if __name__ == '__main__':
  app.run(main)
