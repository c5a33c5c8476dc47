"""Time one healing step from ~10^3 to ~10^5 atoms (linear cost check).

  python experiments/benchmark_healing.py --denoiser=runs/healing_pt \
      --out=docs/benchmark_healing.json --plot=docs/benchmark_healing.png

Damaged Pt fcc supercells of 4 n^3 atoms; the cell-list graph is built once
(timed separately) and one denoiser step applied; best of --repeats after a
warm-up. Prints a markdown table and the fitted log-log slope.
"""
import os

import numpy as np
from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal.recipes import benchmarks
from jaxcrystal.healing import heal as healing
from jaxcrystal.data import io as io_lib
from jaxcrystal.plotting import plots

FLAGS = flags.FLAGS
flags.DEFINE_string('denoiser', None, 'Workdir of train_denoiser.py.')
flags.DEFINE_list('repeats_per_side', ['6', '10', '14', '18', '24', '30'],
                  'Supercell sizes n (4 n^3 atoms).')
flags.DEFINE_integer('repeats', 3, 'Timed calls per size (best is reported).')
flags.DEFINE_string('out', '', 'Optional JSON file for the results.')
flags.DEFINE_string('plot', '', 'Optional log-log PNG.')
flags.mark_flags_as_required(['denoiser'])
flags.register_validator('denoiser', lambda v: v is None or os.path.isdir(v),
                         message='--denoiser must be a train_denoiser.py workdir')


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  del argv
  model, params, config = healing.load_denoiser(FLAGS.denoiser)
  rows = benchmarks.benchmark_healing_step(
      model, params, config, [int(n) for n in FLAGS.repeats_per_side], FLAGS.repeats)
  atoms = np.array([r['atoms'] for r in rows], float)
  step = np.array([r['step_s'] for r in rows])
  slope = float(np.polyfit(np.log(atoms), np.log(step), 1)[0])
  print('| atoms | edges | healing step (s) | us per atom | graph build (s) |')
  print('|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['atoms']} | {r['edges']} | {r['step_s']:.4f} | "
          f"{r['step_s'] / r['atoms'] * 1e6:.2f} | {r['graph_s']:.4f} |")
  print(f'log-log slope of step time against atoms: {slope:.2f}')
  if FLAGS.out:
    io_lib.write_json_atomic(FLAGS.out, dict(rows=rows, slope=slope))
  if FLAGS.plot:
    plots.plot_curve(atoms, {'healing step': step,
                             'graph build': [r['graph_s'] for r in rows],
                             'linear reference': step[0] * atoms / atoms[0]},
                     FLAGS.plot, xlabel='atoms', ylabel='seconds', log_x=True,
                     log_y=True, markers=True, title='Healing cost against size')


if __name__ == '__main__':
  cli.run(main)
