"""How fast do model variants learn local geometry? (small-noise training)

  python experiments/benchmark_coord_learning.py \
      --data ../shared/datasets/carbon_24/train.csv --out runs/coord_learning

Each variant is trained from scratch for --steps Adam steps at noise levels
t in {1..--max_t} only, and its coordinate loss is recorded (1: nothing
learned). Variants: `base` (the CPU flag files' CSPNet, cells as in the
file), `niggli` (Niggli-reduced cells, as DiffCSP), `niggli_edge` (plus the
distance basis and the edge-vector score head); `*_clean_lattice` give the
network the clean lattice (only the atoms noised): how much of the atoms'
loss the lattice's noise hides; `niggli_edge_late_lattice` reads the
lattice's schedule at (t/T)^2 (`--lattice.time_power=2`), so its noise at
small t is that of t^2/T (`niggli_edge_later_lattice`: p = 3). Writes coord_learning.json,
coord_learning.md and coord_learning.png.
"""
import os
import time

from absl import flags
from absl import logging
import numpy as np

from jaxcrystal import cli
from jaxcrystal.recipes import benchmarks
from jaxcrystal.generative import model as model_lib
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import readers
from jaxcrystal.plotting import plots

EDGE = dict(distance_basis=32, edge_score_head=True)
LATE_LATTICE = dict(time_power=2.0)
# name: (Niggli cells, network overrides, variables given clean, lattice settings)
VARIANTS = {
    'base': (False, dict(), (), dict()),
    'niggli': (True, dict(), (), dict()),
    'niggli_edge': (True, EDGE, (), dict()),
    'niggli_clean_lattice': (True, dict(), ('lattice',), dict()),
    'niggli_edge_clean_lattice': (True, EDGE, ('lattice',), dict()),
    'niggli_edge_late_lattice': (True, EDGE, (), LATE_LATTICE),
    'niggli_edge_later_lattice': (True, EDGE, (), dict(time_power=3.0)),
}

FLAGS = flags.FLAGS
flags.DEFINE_string('data', None, 'Training structures (CDVAE CSV).')
flags.DEFINE_list('variants', list(VARIANTS), f'Some of {list(VARIANTS)}.')
flags.DEFINE_integer('steps', 300, 'Adam steps per variant.')
flags.DEFINE_integer('max_t', 200, 'Largest diffusion step trained on (of 1000).')
flags.DEFINE_integer('batch_size', 64, 'Structures per step.')
flags.DEFINE_integer('max_atoms', 24, 'Skip larger structures.')
flags.DEFINE_string('out', None, 'Output folder.')
flags.mark_flags_as_required(['data', 'out'])
flags.register_validator('data', lambda v: v is None or os.path.isfile(v),
                         message='--data must be an existing file')
flags.register_validator('variants', lambda v: set(v) <= set(VARIANTS),
                         message=f'--variants must be among {list(VARIANTS)}')
flags.register_validator('steps', lambda v: v >= 50, message='--steps must be >= 50')


def main(argv):
  logging.set_verbosity(logging.WARNING)
  curves, rows = {}, []
  for name in FLAGS.variants:
    niggli, overrides, clean, lattice = VARIANTS[name]
    structures, _ = readers.read_structures(FLAGS.data, skip_bad=True, niggli=niggli,
                                          max_atoms=FLAGS.max_atoms, progress=False)
    config = model_lib.ModelConfig(task='csp').with_network(
        hidden=128, num_layers=4, num_freqs=128, time_dim=128, **overrides)
    if lattice:
      config = config.with_process('lattice', **lattice)
    start = time.perf_counter()
    curve = benchmarks.coord_learning_curve(structures, config, FLAGS.steps,
                                            FLAGS.max_t, FLAGS.batch_size,
                                            clean=clean)
    seconds = time.perf_counter() - start
    curves[name] = curve
    rows.append(dict(variant=name, last50=float(curve[-50:].mean()),
                     first50=float(curve[:50].mean()), seconds=seconds))
    print(rows[-1], flush=True)
  os.makedirs(FLAGS.out, exist_ok=True)
  io_lib.write_json_atomic(os.path.join(FLAGS.out, 'coord_learning.json'), dict(
      data=FLAGS.data, steps=FLAGS.steps, max_t=FLAGS.max_t,
      batch_size=FLAGS.batch_size, rows=rows,
      curves={k: v.tolist() for k, v in curves.items()}))
  table = ['| variant | coords loss, first 50 steps | last 50 steps | wall (s) |',
           '|---|---|---|---|']
  table += [f"| {r['variant']} | {r['first50']:.3f} | {r['last50']:.3f} | "
            f"{r['seconds']:.0f} |" for r in rows]
  io_lib.write_text_atomic(os.path.join(FLAGS.out, 'coord_learning.md'),
                           '\n'.join(table) + '\n')
  window = 25
  smooth = {k: np.convolve(v, np.ones(window) / window, 'valid')
            for k, v in curves.items()}
  plots.plot_curve(np.arange(window, FLAGS.steps + 1), smooth,
                   os.path.join(FLAGS.out, 'coord_learning.png'),
                   xlabel='Adam step', ylabel=f'coords loss (t <= {FLAGS.max_t})',
                   title=os.path.basename(FLAGS.data))


if __name__ == '__main__':
  cli.run(main)
