"""Export a training run as one portable model file (`pretrained/NAME.jcm`):
its EMA parameters, resolved config, data record and sampler defaults.

  python experiments/export_model.py --run=runs/perov5_csp_flow_cpu --out=pretrained/perov5_csp_flow
  python experiments/sample.py --checkpoint=pretrained/perov5_csp_flow --formula=BaTiO3 --num_samples=8 --out=DIR
"""
import math
import os

from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal.generative import generate

FLAGS = flags.FLAGS
flags.DEFINE_string('run', None, 'Training workdir to export.')
flags.DEFINE_string('out', None, 'Model file to write (.jcm added if missing).')
flags.DEFINE_string('which', 'best', "Which checkpoint: 'best' (by validation loss), "
                    "'best_quality' (by the sample-quality monitor), 'latest' or a "
                    "periodic checkpoint's step.")
flags.DEFINE_bool('overwrite', False, 'Replace an existing model file.')
flags.mark_flags_as_required(['run', 'out'])
cli.existing_dir('run', 'a training workdir')
cli.checkpoint_choice('which')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  path, meta = generate.export_run(FLAGS.run, FLAGS.out, FLAGS.which, FLAGS.overwrite)
  size = os.path.getsize(path) / 1e6
  print(f'{path}: step {meta["step"]} ({meta["which"]}), '
        f'{sum(math.prod(p["shape"]) for p in meta["params"]):,} '
        f'parameters, {size:.2f} MB, sha256 of parameters {meta["params_sha256"][:12]}')


if __name__ == '__main__':
  cli.run(main)
