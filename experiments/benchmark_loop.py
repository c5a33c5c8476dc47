"""The training loop at the speed of its step? Steps/s of the real loop
beside its jitted step alone (same batches, same process), and the time to
the first step (data, init, compile).

  python experiments/benchmark_loop.py --flagfile=experiments/flags/perov5_csp_flow_cpu.flags \
      --train_data=../shared/datasets/perov_5/train.csv --steps=300 \
      --out=docs/benchmark_loop_cpu.json
"""
from absl import flags
from absl import logging

import train_flags  # noqa: F401  (defines the model and data flags)
from jaxcrystal import cli
from jaxcrystal.data import io
from jaxcrystal.recipes import benchmarks

FLAGS = flags.FLAGS
flags.DEFINE_integer('steps', 300, 'Training steps timed (loop and step alike).')
flags.DEFINE_string('out', '', 'Optional JSON output (one row).')
cli.at_least(2, 'steps')
cli.at_most(1_000_000, 'steps')
FLAGS.set_default('workdir', '-')  # the benchmark trains in a temporary folder


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = train_flags.read_config()
  row = benchmarks.benchmark_training_loop(config, FLAGS.steps)
  if FLAGS.out:
    io.write_json_atomic(FLAGS.out, row)


if __name__ == '__main__':
  cli.run(main)
