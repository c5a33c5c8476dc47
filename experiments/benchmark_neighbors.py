"""Radius-graph timing: jaxcrystal's cell list against ASE (and vesin/matscipy).

fcc Cu supercells (a = 3.61 A) from 500 to ~100,000 atoms, 5 A cutoff; each
timing is the best of --repeats after a warm-up call (jit compilation excluded).

  python experiments/benchmark_neighbors.py --out docs/benchmark_neighbors.json
"""
from absl import flags

from jaxcrystal import cli
from jaxcrystal.recipes import benchmarks

FLAGS = flags.FLAGS
flags.DEFINE_list('repeats_per_side', ['5', '10', '15', '20', '25', '30'],
                  'Supercell repeats of the 4-atom cubic cell (N = 4 n^3).')
flags.DEFINE_float('cutoff', 5.0, 'Cutoff radius in Angstrom.')
flags.DEFINE_integer('repeats', 3, 'Timed calls per size (best is reported).')
flags.DEFINE_string('out', None, 'Optional JSON file for the results.')


def main(argv):
  del argv
  sizes = [int(n) for n in FLAGS.repeats_per_side]
  rows = benchmarks.benchmark_neighbor_lists(sizes, FLAGS.cutoff, FLAGS.repeats)
  print(benchmarks.neighbor_table_markdown(rows))
  if FLAGS.out:
    from jaxcrystal.data import io
    io.write_json_atomic(FLAGS.out, rows)


if __name__ == '__main__':
  cli.run(main)
