"""Guided against unconditional de novo samples (issue 34).

For each --targets value of the property a model is conditioned on and each
--weights guidance weight, sample --num_samples structures (the same de novo
atom counts and seed throughout), score them with a property predictor
(train_property.py) and the de novo metrics against --test_csv, beside the
same model's unconditional samples (conditions unknown). A property computed
from the structure (--property space_group) needs no predictor; whole-number
targets such as space groups are judged by the share of samples at the target:

  python experiments/guidance_sweep.py --checkpoint=runs/perov5_dng_heat_ref \
      --predictor=runs/heat_ref --targets=0.5,1.5,2.5 --weights=0,1,2,4 \
      --test_csv=../shared/datasets/perov_5/val.csv --out=runs/guidance_heat_ref
  python experiments/guidance_sweep.py --checkpoint=runs/perov5_space_group \
      --property=space_group --targets=123,25,99 ...   (scored exactly, by spglib)

Writes OUT/results.json (one row per target and weight), results.md (the
table) and guidance.png (histograms of the predicted property; validity
and COV against the weight).
"""
import dataclasses
import os

from absl import app
from absl import flags
from absl import logging

import sampler_flags
from jaxcrystal import cli
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import outputs
from jaxcrystal.data import readers
from jaxcrystal.evaluation import metrics
from jaxcrystal.generative import generate
from jaxcrystal.generative import request
from jaxcrystal.prediction import train as property_train
from jaxcrystal.recipes import guidance

FLAGS = flags.FLAGS
sampler_flags.refuse_num_steps()
flags.DEFINE_string('checkpoint', None, 'A conditioned de novo run or model file.')
flags.DEFINE_string('which', 'best', "'best', 'best_quality', 'latest' or a step.")
flags.DEFINE_string('predictor', None, 'A train_property.py run of the property.')
flags.DEFINE_string('property', '', 'Without --predictor: a property computed from '
                    'the structure (space_group, num_elements, num_atoms), scored exactly.')
flags.DEFINE_list('targets', [], 'Property values asked for.')
flags.DEFINE_list('weights', ['0', '1', '2', '4'], 'Guidance weights.')
flags.DEFINE_integer('num_samples', 256, 'Structures per target and weight.')
flags.DEFINE_string('test_csv', None, 'Val (or test) file: COV reference.')
flags.DEFINE_enum('dataset', 'perov_5', sorted(metrics.COV_CUTOFFS), 'COV cutoffs.')
flags.DEFINE_integer('batch_size', 256, 'Structures per sampling batch.')
flags.DEFINE_integer('seed', 0, 'Seed of atom counts and sampling.')
flags.DEFINE_integer('workers', os.cpu_count() or 1, 'Processes for fingerprints.')
flags.DEFINE_string('out', None, 'Output folder (new or empty).')
flags.DEFINE_bool('overwrite', False, 'Replace what --out holds.')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.mark_flags_as_required(['checkpoint', 'test_csv', 'out'])
cli.trained_model('checkpoint')
cli.checkpoint_choice('which')
cli.existing_dir('predictor', 'a train_property.py run directory')
cli.existing_file('test_csv')
cli.at_least(1, 'num_samples', 'batch_size', 'workers')


def _numbers(name):
  try:
    values = [float(v) for v in FLAGS[name].value]
  except ValueError:
    raise app.UsageError(f'--{name} must be numbers, got {FLAGS[name].value}') from None
  if not values:
    raise app.UsageError(f'--{name}: give at least one value')
  return values


def _output() -> dict:
  return dict(overwrite=FLAGS.overwrite, kind='guidance_sweep',
              inputs=cli.flag_paths('checkpoint', 'predictor', 'test_csv'))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  targets, weights = _numbers('targets'), _numbers('weights')
  if min(weights) < 0:
    raise app.UsageError('--weights must be >= 0')
  outputs.check_writable(FLAGS.out, **_output())
  model, params, config, step = generate.load_run(FLAGS.checkpoint, FLAGS.which)
  if bool(FLAGS.predictor) == bool(FLAGS.property):
    raise app.UsageError('give --predictor (a trained regressor) or --property (one '
                         'computed from the structure), one of them')
  if FLAGS.predictor:
    predictor = property_train.load_predictor(FLAGS.predictor)
    prop, score = predictor.config.property, guidance.predictor_scorer(predictor)
  else:
    prop, score = FLAGS.property, guidance.derived_scorer(FLAGS.property)
  if prop not in config.model.properties:
    raise app.UsageError(f'--{"predictor predicts" if FLAGS.predictor else "property"} '
                         f'{prop!r}; --checkpoint is conditioned on '
                         f'{list(config.model.properties)}')
  if max(weights) > 0:
    model.with_guidance(max(weights))  # one line now if it cannot be guided
  if not model.task.generates_types:
    raise app.UsageError('--checkpoint must be a de novo model')
  compositions, _, _, _ = request.compositions_for_request(
      config, num_samples=FLAGS.num_samples, seed=FLAGS.seed,
      atom_counts=generate.recorded_atom_counts(FLAGS.checkpoint))
  reference, _ = readers.read_structures(FLAGS.test_csv, progress=FLAGS.progress)
  config = dataclasses.replace(config, sampling=sampler_flags.sampler_config(
      config.sampling))
  rows = guidance.guidance_sweep(
      model, params, config, prop, score, reference, compositions, targets, weights,
      cov_cutoffs=metrics.COV_CUTOFFS[FLAGS.dataset], seed=FLAGS.seed,
      batch_size=FLAGS.batch_size, workers=FLAGS.workers, progress=FLAGS.progress)
  with outputs.output_folder(FLAGS.out, **_output()) as out:
    io_lib.write_json_atomic(out / 'results.json', dict(
        checkpoint=FLAGS.checkpoint, checkpoint_step=step, predictor=FLAGS.predictor or None,
        property=prop, test_csv=FLAGS.test_csv, seed=FLAGS.seed,
        sampler=config.sampling.to_dict(), rows=rows))
    table = guidance.markdown_table(rows, prop)
    io_lib.write_text_atomic(out / 'results.md', table + '\n')
    guidance.plot_guidance(rows, prop, out / 'guidance.png',
                           title=f'{FLAGS.checkpoint} (step {step}), {FLAGS.num_samples} '
                                 'samples per panel line')
  print(table)


if __name__ == '__main__':
  cli.run(main)
