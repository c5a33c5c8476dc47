"""Train Laplacian-drift graph diffusion on a built-in task.

  python experiments/train_graph_diffusion.py --flagfile=experiments/flags/graph_grid.flags \
      --workdir=runs/graph_grid
"""
import math

from absl import app
from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal.graph_diffusion import model as gd
from jaxcrystal.graph_diffusion import tasks as graph_tasks

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory (must be new).')
flags.DEFINE_enum('task', 'grid', ['grid', 'molecule'], 'Built-in task.')
flags.DEFINE_list('grid_shape', ['5', '5'], 'Grid size (1 to 3 axes).')
flags.DEFINE_string('molecule', 'C6H6', 'ASE g2 molecule for the molecule task.')
flags.DEFINE_float('smoothing', 1.0, 'tau of the reference fields exp(-tau L) W.')
flags.DEFINE_integer('num_train', 2000, 'Training signals.')
flags.DEFINE_float('gamma', 1.0, 'Laplacian drift strength (0: plain DDPM).')
flags.DEFINE_bool('variance_preserving', True, 'Add the VP drift -beta/2 S.')
flags.DEFINE_integer('hidden', 64, 'Network width.')
flags.DEFINE_integer('num_layers', 3, 'Attention layers.')
flags.DEFINE_enum('time_weighting', 'none', ['none', 'snr'], 'Loss weighting over t.')
flags.DEFINE_float('energy_weight', 0.0, 'Energy regulariser weight.')
flags.DEFINE_float('smoothness_weight', 0.0, 'Graph smoothness |L S|^2 weight.')
flags.DEFINE_float('alignment_weight', 0.0, 'Alignment regulariser weight.')
flags.DEFINE_integer('batch_size', 64, 'Signals per step.')
flags.DEFINE_integer('train_steps', 3000, 'Optimizer steps.')
flags.DEFINE_float('lr', 2e-3, 'Peak learning rate.')
flags.DEFINE_integer('sample_steps', 500, 'Reverse-SDE steps when sampling.')
flags.DEFINE_integer('seed', 0, 'Seed.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.DEFINE_bool('resume', False, 'Continue exactly from the latest checkpoint '
                  'in --workdir.')
flags.mark_flags_as_required(['workdir'])
# A grid graph's dense Laplacian has (nodes)^2 entries: 4,096 nodes is 128 MiB.
flags.register_validator('grid_shape', lambda v: 1 <= len(v) <= 3 and all(
    x.isdigit() and int(x) >= 1 for x in v) and math.prod(int(x) for x in v) <= 4096,
    message='--grid_shape: 1 to 3 positive sizes, at most 4,096 nodes in all')
cli.at_least(0, 'gamma', 'energy_weight', 'smoothness_weight', 'alignment_weight')
cli.at_least(1, 'num_train', 'hidden', 'num_layers', 'batch_size', 'train_steps',
             'sample_steps')
cli.positive('lr', 'smoothing')


def main(argv):
  logging.set_verbosity(logging.WARNING)
  config = graph_tasks.GraphTrainConfig(
      task=FLAGS.task, grid_shape=tuple(int(x) for x in FLAGS.grid_shape),
      molecule=FLAGS.molecule, smoothing=FLAGS.smoothing, num_train=FLAGS.num_train,
      gamma=FLAGS.gamma, variance_preserving=FLAGS.variance_preserving,
      hidden=FLAGS.hidden, num_layers=FLAGS.num_layers,
      loss=gd.LossConfig(FLAGS.time_weighting, FLAGS.energy_weight,
                         FLAGS.smoothness_weight, FLAGS.alignment_weight),
      batch_size=FLAGS.batch_size, train_steps=FLAGS.train_steps,
      learning_rate=FLAGS.lr, sample_steps=FLAGS.sample_steps, seed=FLAGS.seed,
      progress=FLAGS.progress)
  try:
    print(graph_tasks.train_graph_diffusion(config, FLAGS.workdir, resume=FLAGS.resume))
  except (ValueError, FileExistsError) as err:
    raise app.UsageError(str(err))


if __name__ == '__main__':
  cli.run(main)
