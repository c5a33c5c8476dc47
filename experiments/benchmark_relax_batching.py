"""Does batching speed CHGNet up on the CPU? One relaxation step's work
(energy, forces, stress) for structures one at a time against batches
(issue 36: the time target of relaxing Carbon-24 samples).

The structures are a data file's first --count, rattled by --rattle A so
that forces are not zero. One torch thread, the best of --repeats.

  python experiments/benchmark_relax_batching.py --structures=../shared/datasets/carbon_24/val.csv --count=32 --batch_sizes=8,32
"""
from absl import flags
import numpy as np

from jaxcrystal import cli
from jaxcrystal import errors
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import readers
from jaxcrystal.recipes import benchmarks

FLAGS = flags.FLAGS
flags.DEFINE_string('structures', None, 'CSV, CIF or ASE-readable file of structures.')
flags.DEFINE_integer('count', 32, 'How many of its structures (the first).')
flags.DEFINE_list('batch_sizes', ['8', '32'], 'Batch sizes to time against one at a time.')
flags.DEFINE_float('rattle', 0.1, 'Gaussian displacement of every atom (A), seed 0.')
flags.DEFINE_integer('repeats', 2, 'Timed passes (the best is reported).')
flags.DEFINE_string('out', '', 'Optional JSON file for the rows.')
flags.mark_flag_as_required('structures')
cli.at_least(1, 'count', 'repeats')


def main(argv):
  del argv
  try:
    sizes = [int(s) for s in FLAGS.batch_sizes]
  except ValueError:
    raise errors.UserError(f'--batch_sizes {",".join(FLAGS.batch_sizes)}: whole numbers, '
                           'comma-separated') from None
  structures = readers.read_structures(FLAGS.structures)[0][:FLAGS.count]
  rng = np.random.default_rng(0)
  for atoms in structures:
    atoms.positions += rng.normal(0, FLAGS.rattle, atoms.positions.shape)
  rows = benchmarks.chgnet_batch_timing(structures, sizes, FLAGS.repeats)
  print(f'{len(structures)} structures, {np.mean([len(a) for a in structures]):.1f} atoms '
        'on average, one torch thread')
  print('| batch | s per structure | speed-up | max |dE| (eV/atom) | max |dF| (eV/A) |')
  print('|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['batch_size']} | {r['seconds_per_structure']:.3f} | {r['speedup']:.2f}x | "
          f"{r['max_energy_difference']:.1e} | {r['max_force_difference']:.1e} |")
  if FLAGS.out:
    io_lib.write_json_atomic(FLAGS.out, rows)


if __name__ == '__main__':
  cli.run(main)
