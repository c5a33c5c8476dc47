"""Sample structures from a trained run.

  python experiments/sample.py --checkpoint runs/quickstart --formula Al4 --num_samples 500 --out runs/samples
  python experiments/sample.py --checkpoint RUN --compositions_from FILE --samples_per_composition 20 --out DIR
  python experiments/sample.py --checkpoint RUN_DNG --num_samples 1000 --out DIR   (de novo)
  python experiments/sample.py --checkpoint RUN --sampler ddim --sample_steps 50 ...   (fewer calls)
  python experiments/sample.py --checkpoint RUN_COND --condition heat_ref=-0.5 --guidance 2 ...
      (a model trained with --condition heat_ref --condition_dropout 0.1)
  python experiments/sample.py --checkpoint RUN_DNG --elements Ba,Sr,Ti,O --max_elements 3 \
      --num_atoms 5 ...   (de novo within a chemical system; constraints.py)
  python experiments/sample.py --checkpoint RUN_SG --space_group 221 --guidance 1 --symmetrize 0.1 ...
      (a model trained with --condition space_group; symmetrized samples beside the raw ones)
  python experiments/sample.py --checkpoint RUN_DNG --repel 0.7 ...
      (overlapping atoms pushed apart, beside the raw samples; healing/repulsion.py)

The sampler (--sampler, --sample_steps, --sampler.step_lr, ...) defaults to the settings
stored with the run; summary.json records what ran and its network calls.

--out must be new or empty (or give --overwrite); it appears only when every
file is written. summary.json splits the wall time: setup_s (reading the
run and the compositions), compile_s, sample_s (the network),
host_batching_s, validation_s and writing_s. Samples made for
--compositions_from record the file row they belong to (`source_row`),
which evaluate.py pairs by.
"""
import os
import time

from absl import flags
from absl import logging

import sampler_flags
from jaxcrystal import cli
from jaxcrystal.data import outputs
from jaxcrystal.data import readers
from jaxcrystal.evaluation import symmetry
from jaxcrystal.generative import constraints
from jaxcrystal.generative import generate
from jaxcrystal.generative import request
from jaxcrystal.generative import train
from jaxcrystal.healing import repulsion

FLAGS = flags.FLAGS
sampler_flags.refuse_num_steps()
flags.DEFINE_string('checkpoint', None, 'Training workdir or model file '
                    '(pretrained/NAME) to sample from.')
flags.DEFINE_string('which', 'best', "Which checkpoint: 'best', 'best_quality', 'latest' or a "
                    "periodic checkpoint's step.")
flags.DEFINE_integer('num_samples', 100, 'Samples (for --formula or de novo).')
flags.DEFINE_string('formula', '', 'One composition, e.g. BaTiO3 or C8.')
flags.DEFINE_string('compositions_from', '',
                    'File of structures (CSV, extxyz, ...): one sample per row.')
flags.DEFINE_bool('skip_bad', False, 'Skip unusable rows of --compositions_from '
                  '(reported, and listed in skipped_rows.json) instead of stopping.')
flags.DEFINE_integer('samples_per_composition', 1, 'With --compositions_from.')
flags.DEFINE_string('atom_counts_from', '',
                    'De novo: draw atom counts from this file (default: the '
                    "run's training data).")
flags.DEFINE_integer('batch_size', 256, 'Structures per sampling batch.')
flags.DEFINE_integer('max_atoms', 0, 'Largest structure to sample (atoms); 0: the '
                     'largest the run was trained on.')
flags.DEFINE_integer('seed', 0, 'Sampling seed.')
flags.DEFINE_multi_string('condition', [], 'NAME=VALUE: a property the model is '
                          'conditioned on, asked of every sample (repeatable; '
                          'conditions not given are unknown).')
flags.DEFINE_float('guidance', 0.0, 'Classifier-free guidance weight w: each '
                   'prediction is cond + w (cond - uncond); needs a model trained '
                   'with --condition_dropout. 0: the conditional model alone.')
flags.DEFINE_string('elements', '', 'De novo: the elements samples may hold '
                    '(Li,Fe,O); types are drawn only among them. A model '
                    'conditioned on chemical_system is also told each sample\'s '
                    'set (unless --condition chemical_system=... is given).')
flags.DEFINE_integer('min_elements', 0, 'With --elements: each sample is offered a '
                     'random subset of at least this many (0: 1).')
flags.DEFINE_integer('max_elements', 0, 'With --elements: and at most this many '
                     '(0: all of them).')
flags.DEFINE_string('num_atoms', '', 'De novo: atoms per sample, N or LOW-HIGH '
                    "(drawn from the training data's counts in the range).")
flags.DEFINE_integer('space_group', 0, 'De novo: the space group (1..230) asked of '
                     'a model trained with --condition space_group (the same as '
                     '--condition space_group=N; with --guidance). 0: any.')
flags.DEFINE_float('symmetrize', 0.0, 'TOL (Angstrom): also write each sample '
                   'refined by spglib within TOL to OUT/symmetrized/, and the space '
                   'groups of raw, symmetrized and training structures to '
                   'OUT/space_groups.{json,md,png}. 0: off.')
flags.DEFINE_float('repel', 0.0, 'R (Angstrom): also write each sample with atoms '
                   'closer than R pushed apart by a soft repulsion (nothing else '
                   'moves) to OUT/repelled/; summary.json counts invalid -> valid. '
                   '0: off.')
flags.DEFINE_string('out', None, 'Output folder (new or empty).')
flags.DEFINE_bool('overwrite', False, 'Replace what --out holds.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['checkpoint', 'out'])
cli.trained_model('checkpoint')
cli.existing_file('compositions_from', 'atom_counts_from', optional=True)
cli.at_least(1, 'num_samples', 'samples_per_composition', 'batch_size')
cli.at_least(0, 'max_atoms', 'min_elements', 'max_elements', 'space_group')
cli.at_most(10_000_000, 'num_samples', 'samples_per_composition')
cli.at_most(100_000, 'batch_size', 'max_atoms')
cli.checkpoint_choice('which')
cli.formula('formula')
cli.conditions('condition')
flags.register_validator(
    'symmetrize', lambda v: v == 0 or symmetry.SYMPREC_RANGE[0] <= v <= symmetry.SYMPREC_RANGE[1],
    message=f'--symmetrize must be 0 (off) or a tolerance in '
            f'[{symmetry.SYMPREC_RANGE[0]:g}, {symmetry.SYMPREC_RANGE[1]:g}] Angstrom')
flags.register_validator('repel', lambda v: 0 <= v <= 2,
                         message='--repel must be 0 (off) or a distance in (0, 2] Angstrom')
flags.register_validator('guidance', lambda v: v >= 0, message='--guidance must be >= 0')


def _output() -> dict:
  """How --out is checked and written (`jaxcrystal.data.outputs`)."""
  return dict(overwrite=FLAGS.overwrite, kind='samples', inputs=cli.flag_paths('checkpoint', 'compositions_from', 'atom_counts_from'))


def _seen_elements(config) -> dict | None:
  """The training data's elements {symbol: crystals}: as the run recorded
  them, else read from its training file if it is here (None: unknown)."""
  seen = generate.recorded_data(FLAGS.checkpoint).get('elements')
  if seen is None and config.train_data and os.path.isfile(config.train_data):
    seen = constraints.element_histogram(train.load_structures(config.train_data, config)[0])
  return seen


def _symmetrize(out, samples, config) -> dict:
  """Write OUT/symmetrized/ and the space-group report (raw samples,
  symmetrized ones, and the training data where its file is here); return
  the report's non-P1 shares."""
  tol = FLAGS.symmetrize
  refined, arrays = symmetry.symmetrize_all(samples, tol, FLAGS.progress)
  generate.write_samples(out / 'symmetrized', refined, {
      'symprec': tol, 'symmetrized_fraction': float(arrays['symmetrized'].mean()),
      'atoms_changed': int((arrays['atoms_before'] != arrays['atoms_after']).sum())})
  sets = {'raw samples': symmetry.space_groups(samples, tol, FLAGS.progress, 'raw space groups'),
          'symmetrized': arrays['space_group']}
  if config.train_data and os.path.isfile(config.train_data):
    sets['training data'] = symmetry.space_groups(
        train.load_structures(config.train_data, config)[0], tol, FLAGS.progress,
        'training space groups')
  return symmetry.write_space_group_report(out, sets, tol)['non_p1_share']


def _repel(out, samples) -> dict:
  """Write OUT/repelled/ (`healing.repulsion`); return what it did."""
  corrected, arrays = repulsion.repel(samples, FLAGS.repel, seed=FLAGS.seed)
  report = dict(repulsion.summarize(arrays), threshold=FLAGS.repel)
  generate.write_samples(out / 'repelled', corrected, {'repulsion': report})
  return report


def main(argv):
  del argv
  started = time.perf_counter()
  logging.set_verbosity(logging.WARNING)
  outputs.check_writable(FLAGS.out, **_output())  # before any work
  model, params, config, step = generate.load_run(FLAGS.checkpoint, FLAGS.which)
  compositions, lattices, rows, report = request.compositions_for_request(
      config, formula=FLAGS.formula, compositions_from=FLAGS.compositions_from,
      samples_per_composition=FLAGS.samples_per_composition,
      num_samples=FLAGS.num_samples, atom_counts_from=FLAGS.atom_counts_from,
      seed=FLAGS.seed, skip_bad=FLAGS.skip_bad,
      atom_counts=generate.recorded_atom_counts(FLAGS.checkpoint),
      atom_range=constraints.parse_atom_range(FLAGS.num_atoms) if FLAGS.num_atoms else None)
  allowed = constraints.allowed_for_request(
      config.model.task, compositions, FLAGS.elements, FLAGS.min_elements,
      FLAGS.max_elements, seen=_seen_elements(config) if FLAGS.elements else None,
      seed=FLAGS.seed, de_novo=not (FLAGS.formula or FLAGS.compositions_from))
  if report is not None and report.skipped:
    print(report.summary())
  generate.check_size_budget(
      compositions, FLAGS.max_atoms or generate.size_budget(FLAGS.checkpoint, config),
      f'--formula {FLAGS.formula}' if FLAGS.formula else
      f'--compositions_from {FLAGS.compositions_from}' if FLAGS.compositions_from
      else 'de novo atom counts')
  requested = cli.parse_conditions(FLAGS.condition)
  if FLAGS.space_group:
    requested['space_group'] = FLAGS.space_group
  conditions = request.request_conditions(config.model, requested, len(compositions),
                                          allowed_elements=allowed)
  if FLAGS.space_group:
    constraints.check_space_group(FLAGS.space_group, compositions)
  model = model.with_guidance(FLAGS.guidance)
  sampling_started = time.perf_counter()
  samples, timing = generate.sample_structures(
      model, params, compositions, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
      sampler=sampler_flags.sampler_config(config.sampling), lattices=lattices,
      conditions=conditions, guidance=FLAGS.guidance, allowed_elements=allowed,
      progress=FLAGS.progress)
  generate.set_source_rows(samples, rows)
  with outputs.output_folder(FLAGS.out, **_output()) as out:
    space_groups = _symmetrize(out, samples, config) if FLAGS.symmetrize else None
    repelled = _repel(out, samples) if FLAGS.repel else None
    summary = generate.write_samples(out, samples, {
        'checkpoint': FLAGS.checkpoint, 'checkpoint_step': step,
        'compositions_from': FLAGS.compositions_from or None,
        'conditions': requested,
        'constraints': {'elements': FLAGS.elements or None,
                        'min_elements': FLAGS.min_elements,
                        'max_elements': FLAGS.max_elements,
                        'num_atoms': FLAGS.num_atoms or None,
                        **(constraints.element_report(samples, allowed, FLAGS.min_elements)
                           if allowed is not None else {})},
        'non_p1_share': space_groups,
        'repulsion': repelled,
        'rows_skipped': len(report.skipped) if report is not None else 0,
        'setup_s': sampling_started - started,
        **timing}, made_for=FLAGS.compositions_from or None)
    if report is not None:
      (out / 'skipped_rows.json').write_text(readers.skip_reports_json([report]))
  summary['wall_s'] = time.perf_counter() - started
  print(summary)


if __name__ == '__main__':
  cli.run(main)
