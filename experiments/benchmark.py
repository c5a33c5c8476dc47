"""Training and sampling throughput of the CSP model on Perov-5.

  python experiments/benchmark.py --data ../shared/datasets/perov_5/val.csv \
      --out docs/benchmark_model.json

Two sizes: hidden 128 x 4 layers and DiffCSP's 512 x 6; 128 Fourier
frequencies; 256 structures; sampling with 1000 predictor-corrector steps.
"""
from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal.recipes import benchmarks
from jaxcrystal.data import io
from jaxcrystal.data import readers

FLAGS = flags.FLAGS
flags.DEFINE_string('data', None, 'Perov-5 CSV (compositions and cells).')
flags.DEFINE_list('sizes', ['128x4', '512x6'], 'Model sizes as HIDDENxLAYERS.')
flags.DEFINE_integer('num_freqs', 128, 'Fourier frequencies.')
flags.DEFINE_integer('batch_size', 256, 'Structures per batch.')
flags.DEFINE_integer('num_steps', 1000, 'Sampling steps (T).')
flags.DEFINE_list('sample_sizes', ['128x4', '512x6'], 'Sizes whose sampling is timed.')
flags.DEFINE_string('out', None, 'Optional JSON output.')
flags.mark_flag_as_required('data')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  structures, report = readers.read_structures(FLAGS.data, skip_bad=True, progress=False)
  print(report.summary())
  rows = []
  for size in FLAGS.sizes:
    hidden, layers = (int(x) for x in size.split('x'))
    rows.append(benchmarks.benchmark_csp_model(
        structures, hidden, layers, FLAGS.num_freqs, FLAGS.batch_size,
        FLAGS.num_steps, sample=size in FLAGS.sample_sizes))
  if FLAGS.out:
    io.write_json_atomic(FLAGS.out, rows)


if __name__ == '__main__':
  cli.run(main)
