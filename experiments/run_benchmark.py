"""Sample from a trained run and evaluate on a given test (or val) file.

  python experiments/run_benchmark.py --task=csp --dataset=perov_5 \
      --checkpoint=runs/perov5_csp_cpu --test_csv=../shared/datasets/perov_5/val.csv \
      --num_samples=20 --out=runs/bench_perov5_csp
  python experiments/run_benchmark.py --task=dng --dataset=perov_5 \
      --checkpoint=runs/perov5_dng --test_csv=FILE --num_samples=10000 --out=DIR

CSP: --num_samples samples per composition of --test_csv (one-sample figures
use the first of each). DNG: --num_samples de novo structures, atom counts
from the run's training data; novelty against the run's training file. Only
the files named by flags are read. Writes samples/ and the metrics report.

--num_targets=N evaluates a seeded random subset of N test rows (the CSP
compositions, or the DNG reference) for CPU-budget runs; the report says so.
The sampler (--sampler, --sample_steps, --sampler.step_lr, ...) defaults to the one
stored with the run; the report records what ran and its network calls.
--nounique_novel leaves out uniqueness and novelty (quadratic StructureMatcher
work on a one-element set such as Carbon-24).
"""
import os
import time

from absl import app
from absl import flags
from absl import logging

import sampler_flags
from jaxcrystal import cli
from jaxcrystal.evaluation import evaluate as evaluation
from jaxcrystal.generative import generate
from jaxcrystal.generative import request
from jaxcrystal.data import outputs
from jaxcrystal.data import readers
from jaxcrystal.generative import train

FLAGS = flags.FLAGS
sampler_flags.refuse_num_steps()
flags.DEFINE_enum('task', None, ['csp', 'dng'], 'Benchmark task.')
flags.DEFINE_enum('dataset', None, ['perov_5', 'carbon_24', 'mp_20'], 'Dataset.')
flags.DEFINE_string('checkpoint', None, 'Training workdir or model file (pretrained/NAME).')
flags.DEFINE_enum('which', 'best', ['best', 'best_quality', 'latest'], 'Which checkpoint (best_quality: the sample-quality monitor\'s best).')
flags.DEFINE_string('test_csv', None, 'Test (or val) CSV to evaluate against.')
flags.DEFINE_integer('num_samples', 1, 'CSP: samples per composition; DNG: total.')
flags.DEFINE_integer('batch_size', 512, 'Structures per sampling batch.')
flags.DEFINE_integer('seed', 0, 'Sampling seed (also picks --num_targets rows).')
flags.DEFINE_integer('num_targets', 0, 'Evaluate a random subset of this many '
                     'test rows (0: all).')
flags.DEFINE_bool('unique_novel', True, 'DNG: also compute uniqueness and novelty.')
flags.DEFINE_integer('workers', os.cpu_count() or 1, 'Processes for the metrics.')
flags.DEFINE_string('out', None, 'Output folder (new or empty).')
flags.DEFINE_bool('overwrite', False, 'Replace what --out holds.')
flags.DEFINE_bool('skip_bad', False, 'Skip unusable rows of --test_csv '
                  '(reported, and in skipped_rows.json) instead of stopping.')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.mark_flags_as_required(['task', 'dataset', 'checkpoint', 'test_csv', 'out'])
cli.trained_model('checkpoint')
cli.existing_file('test_csv')
cli.at_least(1, 'num_samples', 'batch_size', 'workers')
cli.at_least(0, 'num_targets')
cli.at_most(10_000_000, 'num_samples', 'num_targets')
cli.at_most(100_000, 'batch_size')


def _output() -> dict:
  """How --out is checked and written (`jaxcrystal.data.outputs`)."""
  return dict(overwrite=FLAGS.overwrite, kind='benchmark', inputs=cli.flag_paths('checkpoint', 'test_csv'))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  outputs.check_writable(FLAGS.out, **_output())
  model, params, config, step = generate.load_run(FLAGS.checkpoint, FLAGS.which)
  if ('dng' if model.task.generates_types else 'csp') != FLAGS.task:
    raise app.UsageError(f'--checkpoint is a {config.model.task} model, not {FLAGS.task}')
  test_all, report = readers.read_structures(
      FLAGS.test_csv, skip_bad=FLAGS.skip_bad, progress=FLAGS.progress)
  if report.skipped:
    print(report.summary())
  try:
    test, _ = evaluation.random_subset(test_all, FLAGS.num_targets, FLAGS.seed)
  except ValueError as err:
    raise app.UsageError(f'--num_targets: {err} ({FLAGS.test_csv})') from None
  rows = None
  if FLAGS.task == 'csp':
    compositions, rows = evaluation.csp_compositions(test, FLAGS.num_samples)
  else:
    compositions, _, _, _ = request.compositions_for_request(
        config, num_samples=FLAGS.num_samples, seed=FLAGS.seed,
        atom_counts=generate.recorded_atom_counts(FLAGS.checkpoint))
  # A conditioned model is benchmarked unconditionally (conditions unknown).
  conditions = request.request_conditions(config.model, {}, len(compositions))
  start = time.perf_counter()
  samples, timing = generate.sample_structures(
      model, params, compositions, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
      sampler=sampler_flags.sampler_config(config.sampling), conditions=conditions,
      progress=FLAGS.progress)
  sample_wall = time.perf_counter() - start
  generate.set_source_rows(samples, rows)
  if FLAGS.task == 'csp':
    result = evaluation.evaluate_csp(samples, test, workers=FLAGS.workers,
                                     progress=FLAGS.progress)
  else:
    train_structures, _ = train.load_structures(config.train_data, config)
    result = evaluation.evaluate_dng(samples, test, train_structures,
                                     dataset=FLAGS.dataset,
                                     unique_novel=FLAGS.unique_novel,
                                     workers=FLAGS.workers, progress=FLAGS.progress)
  result.update(checkpoint=FLAGS.checkpoint, checkpoint_step=step,
                test_csv=FLAGS.test_csv, test_rows_in_file=len(test_all),
                test_rows_evaluated=len(test), target_seed=FLAGS.seed,
                rows_skipped=len(report.skipped), sampling_seconds=sample_wall,
                sampler=timing['sampler'],
                network_calls_per_structure=timing['network_calls_per_structure'],
                num_generated=len(samples))
  with outputs.output_folder(FLAGS.out, **_output()) as out:
    generate.write_samples(out / 'samples', samples, dict(
        checkpoint=FLAGS.checkpoint, checkpoint_step=step, **timing))
    evaluation.write_report(out, result, samples, test, FLAGS.dataset)
    (out / 'skipped_rows.json').write_text(readers.skip_reports_json([report]))
  print(evaluation.markdown_report(result, FLAGS.dataset))


if __name__ == '__main__':
  cli.run(main)
