"""Training and sampling throughput of the CSP model on Perov-5.

  python experiments/benchmark.py --data ../shared/datasets/perov_5/val.csv \
      --out docs/benchmark_model.json

Two sizes: hidden 128 x 4 layers and DiffCSP's 512 x 6; 128 Fourier
frequencies; 256 structures; sampling with 1000 predictor-corrector steps.

With `--peer=../shared/peers/diffcsp`, each size is paired with DiffCSP's own
train step and sampler on the same data and shapes, run back to back in both
orders (the speed claim: same machine, same run):

  python experiments/benchmark.py --data ../shared/datasets/perov_5/val.csv \
      --sizes=128x4 --peer=../shared/peers/diffcsp --out docs/benchmark_paired_128x4.json
"""
import os

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
flags.DEFINE_string('peer', '', 'DiffCSP timing harness folder (../shared/peers/diffcsp): '
                    'pair every size with it, both orders.')
flags.DEFINE_string('peer_python', '', "The harness's Python (default: what its "
                    'setup.sh prints).')
flags.mark_flag_as_required('data')
cli.existing_file('data')
flags.register_validator('peer', lambda v: not v or os.path.isfile(os.path.join(v, 'bench.py')),
                         message='--peer must be a peer harness folder (with bench.py)')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  structures, report = readers.read_structures(FLAGS.data, skip_bad=True, progress=False)
  print(report.summary())
  rows = []
  python = FLAGS.peer_python or (benchmarks.peer_python(FLAGS.peer) if FLAGS.peer else '')
  for size in FLAGS.sizes:
    hidden, layers = (int(x) for x in size.split('x'))
    sample = size in FLAGS.sample_sizes
    if FLAGS.peer:
      rows.extend(benchmarks.paired_csp_benchmark(
          structures, FLAGS.data, FLAGS.peer, python, hidden, layers, FLAGS.num_freqs,
          FLAGS.batch_size, FLAGS.num_steps, sample))
    else:
      rows.append(benchmarks.benchmark_csp_model(
          structures, hidden, layers, FLAGS.num_freqs, FLAGS.batch_size,
          FLAGS.num_steps, sample=sample))
  if FLAGS.out:
    io.write_json_atomic(FLAGS.out, rows)


if __name__ == '__main__':
  cli.run(main)
