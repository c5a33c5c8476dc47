"""Relax structures with an interatomic potential and say how far they moved.

  python experiments/relax.py --samples runs/samples/samples.npz --potential chgnet \
      --reference ../shared/datasets/carbon_24/val.csv --max_structures 200 --out runs/relaxed
  (kill it, then add --resume to continue where it stopped)

Each structure is relaxed in cell and positions through ASE
(`evaluation/relaxation.py`), in --workers processes with a progress bar;
every finished structure is journaled at once (relax.jsonl), so --resume
relaxes only the rest. --reference relaxes real structures the same way
(reference.jsonl): the calibration row beside the generated one.

Stability: the energy above the convex hull of reference structures relaxed
with the same potential (--hull_references, e.g. the training CSV's lowest
rows, and ASE's crystal of each element, graphite too for carbon), the
stable fraction (within --stable_margin) and the S.U.N. rate (stable,
unique, and novel against --train):

  python experiments/relax.py --samples S.npz --reference VAL.csv --potential chgnet \
      --hull_references TRAIN.csv --train TRAIN.csv --max_structures 200 --out DIR

Writes relaxed.extxyz and cifs/ (and relaxed_reference.extxyz), summary.json
and summary.md (RMSD, energies, kept symmetry and coordination, failures
by reason, stability; generated and reference side by side), energy.png,
rmsd.png and e_above_hull.png.
"""
import os
import time

from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal import errors
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import outputs
from jaxcrystal.data import readers
from jaxcrystal.evaluation import evaluate
from jaxcrystal.evaluation import relaxation
from jaxcrystal.evaluation import stability
from jaxcrystal.plotting import plots
from jaxcrystal.training import loop as loop_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('samples', None, 'Structures to relax (.npz from sample.py, '
                    'extxyz, CIF, CSV).')
flags.DEFINE_string('reference', '', 'Real structures relaxed the same way (e.g. '
                    'the val CSV): the calibration row.')
flags.DEFINE_string('hull_references', '', 'Stability: structures whose relaxed '
                    'energies (same potential) span the convex hull, e.g. the '
                    'training CSV; with --hull_lowest only its lowest-energy rows.')
flags.DEFINE_integer('hull_lowest', 20, 'Of --hull_references, the N rows lowest in '
                     'its energy_per_atom column (all rows if it has none; 0: all).')
flags.DEFINE_bool('elemental_references', True, "Stability: add ASE's reference crystal "
                  'of each element (and graphite for carbon) to the hull.')
flags.DEFINE_string('train', '', 'Stability: training structures, for the novelty '
                    'of the S.U.N. rate.')
flags.DEFINE_float('stable_margin', stability.STABLE_MARGIN, 'Stable: at most this '
                   'far above the hull (eV/atom).')
flags.DEFINE_bool('paired', False, 'CSP: each sample was made for a row of '
                  '--reference (its source_row, as sample.py --compositions_from '
                  'records): compare each relaxed sample with its relaxed true '
                  'structure (energy difference, RMSD).')
flags.DEFINE_integer('max_structures', 0, 'Relax the first N of each file (0: all).')
flags.DEFINE_enum('potential', 'emt', sorted(relaxation.POTENTIALS), 'The potential.')
flags.DEFINE_enum('device', 'cpu', list(relaxation.DEVICES), 'Where the potential '
                  'runs (CHGNet; with cuda, fewer --workers than cores is usually best).')
flags.DEFINE_float('fmax', 0.05, 'Force threshold of convergence (eV/A).')
flags.DEFINE_integer('max_steps', 300, 'Optimizer steps at most per structure.')
flags.DEFINE_enum('optimizer', 'FIRE', list(relaxation.OPTIMIZERS), "ASE's optimizer.")
flags.DEFINE_bool('relax_cell', True, 'Relax the cell too (FrechetCellFilter).')
flags.DEFINE_integer('workers', os.cpu_count() or 1, 'Worker processes.')
flags.DEFINE_string('out', None, 'Output folder (new or empty).')
flags.DEFINE_bool('resume', False, 'Continue a killed run into the same --out.')
flags.DEFINE_bool('overwrite', False, 'Replace what --out holds.')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.mark_flags_as_required(['samples', 'out'])
cli.existing_file('samples')
cli.existing_file('reference', 'hull_references', 'train', optional=True)
cli.at_least(0, 'max_structures')
cli.at_least(1, 'max_steps', 'workers')
flags.register_validator('fmax', lambda v: v > 0, message='--fmax must be > 0')
flags.register_multi_flags_validator(
    ['paired', 'reference'], lambda f: not f['paired'] or f['reference'],
    message='--paired needs --reference (the file the samples were made for)')
flags.register_multi_flags_validator(
    ['resume', 'overwrite'], lambda f: not (f['resume'] and f['overwrite']),
    message='--resume and --overwrite contradict each other')


def _output() -> dict:
  return dict(overwrite=FLAGS.overwrite, kind='relaxation', resumable=True,
              resume=FLAGS.resume, inputs=cli.flag_paths('samples', 'reference'))


# What a resumed run may change: how many structures (the journal keeps the
# first ones), how many workers, and where the potential runs.
RESUME_MAY_CHANGE = ('max_structures', 'workers', 'device')
# Keys relax_config.json did not hold before it was checked on --resume.
RECORDED_LATER = ('samples_sha256', 'reference_sha256', 'hull_references',
                  'hull_references_sha256', 'train', 'train_sha256', 'paired', 'hull_lowest',
                  'elemental_references', 'stable_margin', 'min_volume_per_atom')


def _run_record(config: relaxation.RelaxConfig) -> dict:
  """relax_config.json: everything the records depend on, with the input
  files' sha256, so that --resume can refuse to mix two configurations."""
  files = {name: getattr(FLAGS, name) for name in ('samples', 'reference', 'hull_references',
                                                   'train')}
  return {**config.__dict__, **{k: v or None for k, v in files.items()},
          **{f'{k}_sha256': io_lib.file_sha256(v) for k, v in files.items() if v},
          'max_structures': FLAGS.max_structures, 'workers': FLAGS.workers,
          'paired': FLAGS.paired, 'hull_lowest': FLAGS.hull_lowest,
          'elemental_references': FLAGS.elemental_references,
          'stable_margin': FLAGS.stable_margin}


def _read(path: str) -> list:
  structures = (evaluate.read_samples(path) if path.endswith('.npz')
                else readers.read_structures(path, validate=False, progress=FLAGS.progress)[0])
  return structures[:FLAGS.max_structures] if FLAGS.max_structures else structures


def _pair_index(sets) -> list[int]:
  """For --paired: the position in --reference of each sample's source row."""
  rows = [a.info.get('source_row') for a in sets['generated']]
  by_row = {int(a.info.get('row', k)): k for k, a in enumerate(sets['reference'])}
  if any(r is None or int(r) not in by_row for r in rows):
    raise errors.DataError(
        f'--paired: {FLAGS.samples} has samples without a source_row among the '
        f'{len(sets["reference"])} rows read of --reference {FLAGS.reference} '
        '(sample them with --compositions_from that file, or raise --max_structures)')
  return [by_row[int(r)] for r in rows]


def _pairs(out, relaxed, records, index) -> dict:
  """Each relaxed sample against the relaxed reference row it was made for."""
  report = relaxation.compare_pairs(
      [((relaxed['generated'][i], records['generated'][i]),
        (relaxed['reference'][j], records['reference'][j])) for i, j in enumerate(index)])
  io_lib.write_json_atomic(out / 'pairs.json', report)
  return {k: v for k, v in report.items() if k != 'pairs'}


def _hull_structures(sets) -> list:
  """The hull's references: the lowest-energy rows of --hull_references and
  ASE's crystal of each element the structures hold."""
  refs = []
  if FLAGS.hull_references:
    rows = readers.read_structures(FLAGS.hull_references, validate=False,
                                   progress=FLAGS.progress)[0]
    if FLAGS.hull_lowest and all('energy_per_atom' in a.info for a in rows):
      rows = sorted(rows, key=lambda a: a.info['energy_per_atom'])[:FLAGS.hull_lowest]
    elif FLAGS.hull_lowest:
      rows = rows[:FLAGS.hull_lowest]
    refs += rows
  if FLAGS.elemental_references:
    symbols = {s for structures in sets.values() for a in structures
               for s in a.get_chemical_symbols()}
    refs += stability.elemental_references(symbols)
  return refs


def _stability(out, config, sets, relaxed, records) -> dict:
  """Relax the hull's references (hull.jsonl), then each set's energy above
  the hull, stable fraction and S.U.N. rate."""
  refs = _hull_structures(sets)
  _, ref_records = relaxation.relax_all(refs, config, out / 'hull.jsonl',
                                        workers=FLAGS.workers, progress=FLAGS.progress,
                                        desc='relaxing hull references')
  ref_energy = [r['energy_after'] if not r['failure'] else float('nan') for r in ref_records]
  train = (readers.read_structures(FLAGS.train, validate=False)[0] if FLAGS.train else None)
  report = {}
  for name in sets:
    energy = [r['energy_after'] if not r['failure'] else float('nan') for r in records[name]]
    e_hull = stability.energies_above_hull(relaxed[name], energy, refs, ref_energy)
    report[name] = dict(stability.sun_report(relaxed[name], e_hull, train, FLAGS.stable_margin,
                                             workers=FLAGS.workers),
                        hull_references=len(refs))
    for record, e in zip(records[name], e_hull):
      record['e_above_hull'] = float(e)
  return report


def main(argv):
  del argv
  started = time.perf_counter()
  logging.set_verbosity(logging.WARNING)
  config = relaxation.RelaxConfig(
      potential=FLAGS.potential, fmax=FLAGS.fmax, max_steps=FLAGS.max_steps,
      optimizer=FLAGS.optimizer, relax_cell=FLAGS.relax_cell, device=FLAGS.device)
  config.validate()
  outputs.check_resume(FLAGS.out, FLAGS.resume, FLAGS.overwrite)  # before any work
  sets = {'generated': _read(FLAGS.samples)}
  if FLAGS.reference:
    sets['reference'] = _read(FLAGS.reference)
  pair_index = _pair_index(sets) if FLAGS.paired else None
  outputs.check_writable(FLAGS.out, FLAGS.overwrite, kind='relaxation',
                         inputs=cli.flag_paths('samples', 'reference'))
  with outputs.output_folder(FLAGS.out, **_output()) as out:
    record = _run_record(config)
    if FLAGS.resume:  # the journal's records must come from this same configuration
      loop_lib.config_changes(out, record, RESUME_MAY_CHANGE, filename='relax_config.json',
                              flag='--out', recorded_later=RECORDED_LATER)
    io_lib.write_json_atomic(out / 'relax_config.json', record)
    summary, relaxed, records, table = {}, {}, {}, ''
    for name, structures in sets.items():
      journal = out / ('relax.jsonl' if name == 'generated' else 'reference.jsonl')
      relaxed[name], records[name] = relaxation.relax_all(
          structures, config, journal, workers=FLAGS.workers, progress=FLAGS.progress,
          desc=f'relaxing {name}')
      stem = 'relaxed' if name == 'generated' else 'relaxed_reference'
      io_lib.write_extxyz(out / f'{stem}.extxyz', relaxed[name])
      if name == 'generated':
        io_lib.write_cifs(out / 'cifs', relaxed[name], prefix='relaxed')
      summary[name] = relaxation.summarize(records[name])
    if FLAGS.paired:
      summary['pairs'] = _pairs(out, relaxed, records, pair_index)
    if FLAGS.hull_references or FLAGS.elemental_references:
      stable = _stability(out, config, sets, relaxed, records)
      for name in stable:
        summary[name]['stability'] = stable[name]
    io_lib.write_json_atomic(out / 'summary.json', dict(
        summary, potential=config.potential, wall_s=time.perf_counter() - started))
    table = relaxation.markdown_table({k: summary[k] for k in sets})
    if FLAGS.paired:
      table += '\n' + relaxation.pairs_table(summary['pairs'])
    if 'stability' in summary['generated']:
      table += '\n' + stability.markdown_table({k: summary[k]['stability'] for k in sets})
      plots.plot_histograms_overlaid(
          {name: [r['e_above_hull'] for r in rows] for name, rows in records.items()},
          out / 'e_above_hull.png', xlabel=f'energy above the hull (eV/atom, {config.potential})')
    io_lib.write_text_atomic(out / 'summary.md', table)
    plots.plot_histograms_overlaid(
        {f'{name}, {when}': [r[f'energy_{when}'] for r in rows if not r['failure']]
         for name, rows in records.items() for when in ('before', 'after')},
        out / 'energy.png', xlabel=f'energy per atom (eV, {config.potential})')
    plots.plot_histograms_overlaid(
        {name: [r['rmsd'] for r in rows if not r['failure']] for name, rows in records.items()},
        out / 'rmsd.png', xlabel='RMSD to the relaxed structure (A)')
  print(table)


if __name__ == '__main__':
  cli.run(main)
