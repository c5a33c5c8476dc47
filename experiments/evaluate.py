"""Evaluate generated structures with the field's metrics.

  python experiments/evaluate.py --samples runs/samples/samples.npz \
      --test_csv ../shared/datasets/perov_5/val.csv --task csp --out runs/eval
  python experiments/evaluate.py --samples runs/dng/samples.npz --task dng \
      --test_csv FILE --train_csv FILE --dataset perov_5 --out runs/eval_dng

For CSP, the samples must follow the test file's order, K consecutive samples
per test row (`sample.py --compositions_from TEST --samples_per_composition K`).
Writes metrics.json, metrics.md (the papers' table layout) and figures.
"""
import os

from absl import app
from absl import flags

from jaxcrystal.evaluation import evaluate as evaluation
from jaxcrystal.data import io as io_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('samples', None, 'Generated structures (.npz, extxyz, ...).')
flags.DEFINE_string('test_csv', None, 'Test (or val) structures to compare with.')
flags.DEFINE_enum('task', None, ['csp', 'dng'], 'Which metrics.')
flags.DEFINE_string('train_csv', '', 'DNG: training structures for novelty.')
flags.DEFINE_bool('unique_novel', True, 'DNG: also compute uniqueness and novelty '
                  '(quadratic StructureMatcher work on one-element sets).')
flags.DEFINE_enum('dataset', 'perov_5', ['perov_5', 'carbon_24', 'mp_20'],
                  'Sets the COV cutoffs and the published rows of the table.')
flags.DEFINE_integer('num_eval_samples', 1000,
                     'DNG: valid samples used for the EMDs (CDVAE: 1000).')
flags.DEFINE_integer('workers', os.cpu_count() or 1, 'Processes for matching.')
flags.DEFINE_integer('seed', 0, 'Seed of the EMD subsample and of --subset.')
flags.DEFINE_integer('subset', 0, 'Evaluate a seeded (--seed) random subset of '
                     'this many samples (0: all); e.g. 1000 rows of a training '
                     'CSV scored as if generated, the ceiling of a reference set.')
flags.DEFINE_string('out', None, 'Output folder.')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.mark_flags_as_required(['samples', 'test_csv', 'task', 'out'])
for _name in ('samples', 'test_csv'):
  flags.register_validator(_name, lambda v: v is None or os.path.isfile(v),
                           message=f'--{_name} must be an existing file')
flags.register_validator('train_csv', lambda v: not v or os.path.isfile(v),
                         message='--train_csv must be an existing file')


def _read(path):
  if path.endswith('.csv'):
    structures, report = io_lib.read_cdvae_csv(path, skip_bad=False,
                                               progress=FLAGS.progress)
    return structures
  return evaluation.read_samples(path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  samples = evaluation.read_samples(FLAGS.samples)
  try:
    samples, _ = evaluation.random_subset(samples, FLAGS.subset, FLAGS.seed)
  except ValueError as err:
    raise app.UsageError(f'--subset: {err} ({FLAGS.samples})') from err
  reference = _read(FLAGS.test_csv)
  if FLAGS.task == 'csp':
    result = evaluation.evaluate_csp(samples, reference, workers=FLAGS.workers,
                                     progress=FLAGS.progress)
  else:
    train = _read(FLAGS.train_csv) if FLAGS.train_csv else None
    result = evaluation.evaluate_dng(
        samples, reference, train, dataset=FLAGS.dataset,
        num_eval_samples=FLAGS.num_eval_samples, seed=FLAGS.seed,
        unique_novel=FLAGS.unique_novel, workers=FLAGS.workers,
        progress=FLAGS.progress)
  result.update(samples=FLAGS.samples, test_csv=FLAGS.test_csv,
                samples_subset=FLAGS.subset, subset_seed=FLAGS.seed)
  paths = evaluation.write_report(FLAGS.out, result, samples, reference,
                                  FLAGS.dataset)
  print(evaluation.markdown_report(result, FLAGS.dataset))
  print('wrote', ', '.join(str(p) for p in paths.values()))


if __name__ == '__main__':
  app.run(main)
