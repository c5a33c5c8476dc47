"""Evaluate generated structures with the field's metrics.

  python experiments/evaluate.py --samples runs/samples/samples.npz \
      --test_csv ../shared/datasets/perov_5/val.csv --task csp --out runs/eval
  python experiments/evaluate.py --samples runs/dng/samples.npz --task dng \
      --test_csv FILE --train_csv FILE --dataset perov_5 --out runs/eval_dng

For CSP, each sample is paired with the test row it was made for (the
`source_row` that `sample.py --compositions_from TEST` records), never by
position; --pair_by_position reads files that record no rows (DiffCSP's
outputs) as K consecutive samples per test row. Writes metrics.json,
metrics.md (the papers' table layout), figures and skipped_rows.json into
--out, which must be new or empty (or give --overwrite).
"""
import json
import os

from absl import app
from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal import errors
from jaxcrystal.data import outputs
from jaxcrystal.data import readers
from jaxcrystal.evaluation import evaluate as evaluation

FLAGS = flags.FLAGS
flags.DEFINE_string('samples', None, 'Generated structures (.npz, extxyz, ...).')
flags.DEFINE_string('test_csv', None, 'Test (or val) structures to compare with.')
flags.DEFINE_enum('task', None, ['csp', 'dng'], 'Which metrics.')
flags.DEFINE_string('train_csv', '', 'DNG: training structures for novelty.')
flags.DEFINE_bool('skip_bad', False, 'Skip unusable rows of --test_csv and '
                  '--train_csv (reported, and in skipped_rows.json) instead of '
                  'stopping; CSP samples of a skipped row are then refused.')
flags.DEFINE_bool('pair_by_position', False, 'CSP: the samples record no test '
                  'rows; read them as K consecutive samples per test row.')
flags.DEFINE_bool('allow_other_test_file', False, 'CSP: score samples that '
                  'record a different file than --test_csv as the one they were '
                  'made for (refused otherwise); metrics.json says so.')
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
flags.DEFINE_string('predictor', '', 'A train_property.py run: score the samples '
                    'by its predicted property (mean, std; with --target, the mean '
                    'absolute difference to it).')
flags.DEFINE_float('target', None, 'The property value the samples were asked for '
                   '(default: the --condition of that property recorded in the '
                   "samples' summary.json, if any).")
flags.DEFINE_string('out', None, 'Output folder (new or empty).')
flags.DEFINE_bool('overwrite', False, 'Replace what --out holds.')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.mark_flags_as_required(['samples', 'test_csv', 'task', 'out'])
cli.existing_file('samples', 'test_csv')
cli.existing_file('train_csv', optional=True)
flags.register_validator('predictor', lambda v: not v or os.path.isdir(v),
                         message='--predictor must be a train_property.py run directory')
cli.at_least(1, 'num_eval_samples', 'workers')
cli.at_least(0, 'subset')


def _output() -> dict:
  """How --out is checked and written (`jaxcrystal.data.outputs`)."""
  return dict(overwrite=FLAGS.overwrite, kind='evaluation', inputs=cli.flag_paths('samples', 'test_csv', 'train_csv'))


def _property_scores(samples) -> dict:
  """The --predictor's scores of the samples (`evaluation.property_scores`)."""
  from jaxcrystal.evaluation import metrics
  from jaxcrystal.prediction import train as property_train
  predictor = property_train.load_predictor(FLAGS.predictor)
  prop = predictor.config.property
  target = FLAGS.target
  if target is None:
    summary = os.path.join(os.path.dirname(FLAGS.samples), 'summary.json')
    if os.path.isfile(summary):
      with open(summary) as f:
        target = (json.load(f).get('conditions') or {}).get(prop)
  predicted = property_train.predict(predictor, samples, progress=FLAGS.progress)
  valid = [metrics.structural_validity(s) for s in samples]
  return dict(evaluation.property_scores(predicted, valid, target),
              property=prop, predictor=FLAGS.predictor)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  outputs.check_writable(FLAGS.out, **_output())
  samples = evaluation.read_samples(FLAGS.samples)
  if not samples:
    raise errors.UserError(f'--samples {FLAGS.samples}: holds no structures')
  provenance = None
  if FLAGS.task == 'csp':
    provenance = evaluation.check_made_for(FLAGS.samples, FLAGS.test_csv,
                                           FLAGS.allow_other_test_file)
  try:
    samples, _ = evaluation.random_subset(samples, FLAGS.subset, FLAGS.seed)
  except ValueError as err:
    raise app.UsageError(f'--subset: {err} ({FLAGS.samples})') from None
  reports = []

  def read(path):
    structures, report = readers.read_structures(path, skip_bad=FLAGS.skip_bad,
                                                 progress=FLAGS.progress)
    if report.skipped:
      print(report.summary())
    reports.append(report)
    return structures
  reference = read(FLAGS.test_csv)
  if FLAGS.task == 'csp':
    result = evaluation.evaluate_csp(samples, reference, workers=FLAGS.workers,
                                     progress=FLAGS.progress,
                                     by_position=FLAGS.pair_by_position)
  else:
    train = read(FLAGS.train_csv) if FLAGS.train_csv else None
    result = evaluation.evaluate_dng(
        samples, reference, train, dataset=FLAGS.dataset,
        num_eval_samples=FLAGS.num_eval_samples, seed=FLAGS.seed,
        unique_novel=FLAGS.unique_novel, workers=FLAGS.workers,
        progress=FLAGS.progress)
  if FLAGS.predictor:
    result.update(_property_scores(samples))
  result.update(samples=FLAGS.samples, test_csv=FLAGS.test_csv,
                samples_subset=FLAGS.subset, subset_seed=FLAGS.seed,
                rows_skipped=sum(len(r.skipped) for r in reports),
                test_file_check=provenance)
  with outputs.output_folder(FLAGS.out, **_output()) as out:
    paths = evaluation.write_report(out, result, samples, reference, FLAGS.dataset)
    (out / 'skipped_rows.json').write_text(readers.skip_reports_json(reports))
  print(evaluation.markdown_report(result, FLAGS.dataset))
  if provenance and provenance['check'].startswith('overridden'):
    print(f'note: {FLAGS.samples} were made for {provenance["made_for"]["path"]}, '
          f'not {FLAGS.test_csv} (--allow_other_test_file; in metrics.json)')
  print('wrote', ', '.join(os.path.join(FLAGS.out, str(p.relative_to(out)))
                          for p in paths.values()))


if __name__ == '__main__':
  cli.run(main)
