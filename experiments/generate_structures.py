"""Generate a large, diverse, valid set of structures (the dataset factory).

  python experiments/generate_structures.py --num_samples=1000 --seed=0 \
      --elements=H,C,N,O --fractions=molecule=0.4,crystal=0.3,cluster=0.15,surface=0.15 \
      --workers=2 --out=runs/structures [--ase_db] [--calculator=emt]

Writes structures.extxyz (and structures.db with --ase_db), config.json (the
configuration and seed used) and diversity.json. The output depends only on
the configuration and --seed, not on --workers.
"""
import os
import time

from absl import app
from absl import flags

from jaxcrystal import cli
from jaxcrystal.data import outputs
from jaxcrystal.generators import dataset_factory as factory
from jaxcrystal.data import io as io_lib

FLAGS = flags.FLAGS
flags.DEFINE_integer('num_samples', 1000, 'Structures to generate.')
flags.DEFINE_integer('seed', 0, 'Seed; sample i uses the stream (seed, i).')
flags.DEFINE_list('elements', ['H', 'C', 'N', 'O'], 'Chemical symbols to use.')
flags.DEFINE_string('fractions', 'molecule=0.4,crystal=0.3,cluster=0.15,surface=0.15',
                    'Share of each system type, TYPE=FRACTION,... summing to 1.')
flags.DEFINE_integer('min_atoms', 2, 'Smallest structure.')
flags.DEFINE_integer('max_atoms', 64, 'Largest structure.')
flags.DEFINE_integer('workers', os.cpu_count() or 1, 'Processes.')
flags.DEFINE_string('out', None, 'Output folder (new or empty).')
flags.DEFINE_bool('overwrite', False, 'Replace what --out holds.')
flags.DEFINE_bool('ase_db', False, 'Also write an ASE database (structures.db).')
flags.DEFINE_string('calculator', '', "Label energies and forces ('emt').")
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['out'])
cli.at_least(1, 'num_samples', 'workers', 'min_atoms', 'max_atoms')
cli.at_most(10_000_000, 'num_samples')
cli.at_most(10_000, 'max_atoms')


def _output() -> dict:
  """How --out is checked and written (`jaxcrystal.data.outputs`)."""
  return dict(overwrite=FLAGS.overwrite, kind='structures', inputs=cli.flag_paths())


def main(argv):
  outputs.check_writable(FLAGS.out, **_output())
  try:
    config = factory.SamplingConfig(
        elements=tuple(e.strip() for e in FLAGS.elements),
        fractions=factory.parse_fractions(FLAGS.fractions),
        min_atoms=FLAGS.min_atoms, max_atoms=FLAGS.max_atoms)
    config.validate()
  except ValueError as err:
    raise app.UsageError(f'bad configuration: {err}')
  start = time.perf_counter()
  structures, redraws = factory.generate(config, FLAGS.num_samples, FLAGS.seed,
                                         FLAGS.workers, FLAGS.progress)
  seconds = time.perf_counter() - start
  if FLAGS.calculator:
    try:
      structures = factory.label(structures, FLAGS.calculator)
    except ValueError as err:
      raise app.UsageError(f'--calculator: {err}')
  metrics = dict(factory.diversity(structures, config), redraws=redraws,
                 generation_seconds=seconds, workers=FLAGS.workers)
  with outputs.output_folder(FLAGS.out, **_output()) as out:
    io_lib.write_extxyz(out / 'structures.extxyz', structures)
    if FLAGS.ase_db:
      io_lib.write_ase_db(out / 'structures.db', structures)
    io_lib.write_json_atomic(out / 'config.json', dict(
        config.to_dict(), seed=FLAGS.seed, num_samples=FLAGS.num_samples,
        calculator=FLAGS.calculator or None))
    io_lib.write_json_atomic(out / 'diversity.json', metrics)
  print(f'{len(structures)} valid structures in {seconds:.2f} s with {FLAGS.workers} '
        f'workers ({redraws} invalid draws redrawn) -> {FLAGS.out}')
  print({k: metrics[k] for k in ('element_coverage', 'composition_entropy_normalised',
                                 'size_mean', 'size_std', 'type_counts',
                                 'fingerprint_spread')})


if __name__ == '__main__':
  cli.run(main)
