"""Match rate against network calls per structure (issue 17).

Sample one structure per row of --test_csv from a run with one sampler at
each budget of --calls (the most steps that fit), and score the one-sample
CSP match rate and RMSE:

  python experiments/benchmark_sampling_steps.py --checkpoint=runs/perov5_csp_flow_cpu \
      --sampler=euler --calls=10,20,50,100,200 \
      --test_csv=../shared/datasets/perov_5/val.csv --out=runs/curve_flow_euler

Writes OUT/results.json (one row per budget). With --plot, draws the curves
of several such folders instead (no sampling):

  python experiments/benchmark_sampling_steps.py --plot=docs/match_vs_calls.png \
      --results=runs/curve_pc,runs/curve_ddim,runs/curve_flow_euler --labels=pc,ddim,flow
  (--metric=rmse draws the RMSE of the matched samples instead)

Sampler flags left unset take the run's stored settings.
"""
import json
import os
from pathlib import Path

from absl import app
from absl import flags
from absl import logging

import sampler_flags
from jaxcrystal import cli
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import outputs
from jaxcrystal.data import readers
from jaxcrystal.evaluation import evaluate as evaluation
from jaxcrystal.generative import generate
from jaxcrystal.recipes import sampler_curves

FLAGS = flags.FLAGS
sampler_flags.refuse_num_steps()
flags.DEFINE_string('checkpoint', None, 'Training workdir or model file (pretrained/NAME).')
flags.DEFINE_string('which', 'best', "'best', 'latest' or a checkpoint's step.")
flags.DEFINE_string('test_csv', None, 'Test (or val) file: one sample per row.')
flags.DEFINE_list('calls', ['10', '20', '50', '100', '200', '500', '2000'],
                  'Network-call budgets per structure.')
flags.DEFINE_integer('num_targets', 0, 'Seeded random subset of rows (0: all).')
flags.DEFINE_integer('first_rows', 0, "Only the file's first N rows (0: all), e.g. "
                     "the 256 that DiffCSP's timing harness samples.")
flags.DEFINE_integer('batch_size', 512, 'Structures per sampling batch.')
flags.DEFINE_integer('seed', 0, 'Sampling seed (also picks --num_targets rows).')
flags.DEFINE_integer('workers', os.cpu_count() or 1, 'Processes for matching.')
flags.DEFINE_string('out', None, 'Output folder (new or empty).')
flags.DEFINE_bool('overwrite', False, 'Replace what --out holds.')
flags.DEFINE_string('plot', '', 'Draw a figure from --results folders to this PNG.')
flags.DEFINE_list('results', [], 'With --plot: folders written by this script.')
flags.DEFINE_list('labels', [], 'With --plot: one label per --results folder.')
flags.DEFINE_string('title', '', 'With --plot: figure title.')
flags.DEFINE_enum('metric', 'match_rate', ['match_rate', 'rmse'], 'With --plot: '
                  'what to draw.')
flags.DEFINE_list('reference', [], "With --plot: 'label=percent' lines, e.g. "
                  "'DiffCSP (published)=52.02'.")
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.register_validator('calls', lambda v: all(c.isdigit() and int(c) >= 1 for c in v),
                         message='--calls must be positive integers')
flags.register_validator('which', lambda v: v in ('best', 'best_quality', 'latest') or v.isdigit(),
                         message="--which must be 'best', 'latest' or a step")
cli.trained_model('checkpoint')
cli.existing_file('test_csv', optional=True)
cli.at_least(0, 'num_targets', 'first_rows')
cli.at_least(1, 'batch_size', 'workers')
cli.at_most(100_000, 'batch_size')


def plot():
  if not FLAGS.results or len(FLAGS.labels) != len(FLAGS.results):
    raise app.UsageError('--plot needs --results and one --labels entry per folder')
  curves = {}
  for label, folder in zip(FLAGS.labels, FLAGS.results):
    path = Path(folder) / 'results.json'
    if not path.is_file():
      raise app.UsageError(f'--results: {path} does not exist')
    curves[label] = json.loads(path.read_text())['rows']
  reference = {}
  for item in FLAGS.reference:
    label, _, value = item.rpartition('=')
    try:
      reference[label] = float(value)
    except ValueError:
      raise app.UsageError(f'--reference: {item!r} is not label=percent') from None
  print(sampler_curves.plot_match_against_calls(curves, FLAGS.plot, title=FLAGS.title,
                                                reference=reference, metric=FLAGS.metric))


def _output() -> dict:
  """How --out is checked and written (`jaxcrystal.data.outputs`)."""
  return dict(overwrite=FLAGS.overwrite, kind='sampler_curve', inputs=cli.flag_paths('checkpoint', 'test_csv'))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.plot:
    return plot()
  for name in ('checkpoint', 'test_csv', 'out'):
    if not FLAGS[name].value:
      raise app.UsageError(f'--{name} is required (unless --plot)')
  outputs.check_writable(FLAGS.out, **_output())
  model, params, config, step = generate.load_run(FLAGS.checkpoint, FLAGS.which)
  targets, report = readers.read_structures(FLAGS.test_csv, progress=FLAGS.progress)
  if FLAGS.first_rows:
    targets = targets[:FLAGS.first_rows]
  targets, _ = evaluation.random_subset(targets, FLAGS.num_targets, FLAGS.seed)
  rows = sampler_curves.match_against_calls(
      model, params, sampler_flags.sampler_config(config.sampling), targets,
      [int(c) for c in FLAGS.calls], seed=FLAGS.seed, batch_size=FLAGS.batch_size,
      workers=FLAGS.workers, progress=FLAGS.progress)
  with outputs.output_folder(FLAGS.out, **_output()) as out:
    io_lib.write_json_atomic(out / 'results.json', dict(
        checkpoint=FLAGS.checkpoint, checkpoint_step=step, task=config.model.task,
        test_csv=FLAGS.test_csv, num_targets=len(targets), seed=FLAGS.seed,
        batch_size=FLAGS.batch_size, first_rows=FLAGS.first_rows,
        rows=rows))


if __name__ == '__main__':
  cli.run(main)
