"""Loss of a trained model at each noise level: where does it fail?

  python experiments/loss_by_noise_level.py --checkpoint runs/carbon24_csp_cpu \
      --data ../shared/datasets/carbon_24/val.csv --out runs/noise_carbon24_csp

The training loss averages over diffusion times. Here every crystal of --data
is noised to each step of --timesteps; the coordinate loss is a normalised
score MSE, so 1.0 means nothing learned at that level and a sharp model is
near 0 at small t. Writes loss_by_noise_level.json and .png.
"""

from absl import app
from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal.data import outputs
from jaxcrystal.data import pipeline as data_lib
from jaxcrystal.generative import generate
from jaxcrystal.data import io as io_lib
from jaxcrystal.plotting import plots
from jaxcrystal.generative import train

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None, 'Training workdir.')
flags.DEFINE_enum('which', 'best', ['best', 'best_quality', 'latest'], 'Which checkpoint (best_quality: the sample-quality monitor\'s best).')
flags.DEFINE_string('data', '', 'Structures (CDVAE CSV or any ASE file); '
                    "default: the run's --val_data.")
flags.DEFINE_list('timesteps', ['1', '3', '10', '30', '100', '200', '400', '600',
                                '800', '1000'], 'Diffusion steps to evaluate.')
flags.DEFINE_integer('batch_size', 64, 'Crystals per batch.')
flags.DEFINE_integer('seed', 0, 'Noise seed.')
flags.DEFINE_string('out', None, 'Output folder (new or empty).')
flags.DEFINE_bool('overwrite', False, 'Replace what --out holds.')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.mark_flags_as_required(['checkpoint', 'out'])
flags.register_validator('timesteps', lambda v: all(s.strip().isdigit() for s in v),
                         message='--timesteps must be positive integers')
cli.existing_file('data', optional=True)
cli.at_least(1, 'batch_size')
cli.at_most(100_000, 'batch_size')


def _output() -> dict:
  """How --out is checked and written (`jaxcrystal.data.outputs`)."""
  return dict(overwrite=FLAGS.overwrite, kind='noise_levels', inputs=cli.flag_paths('checkpoint', 'data'))


def main(argv):
  logging.set_verbosity(logging.WARNING)
  outputs.check_writable(FLAGS.out, **_output())
  model, params, config, step = generate.load_run(FLAGS.checkpoint, FLAGS.which)
  data = FLAGS.data or config.val_data
  if not data:
    raise app.UsageError(f'--data: the run in {FLAGS.checkpoint} has no val data; '
                         'give a structures file')
  structures, _ = train.load_structures(data, config)
  dataset = data_lib.BucketedDataset(structures, FLAGS.batch_size)
  try:
    result = train.loss_by_noise_level(
        model, params, dataset, [int(t) for t in FLAGS.timesteps],
        weights=config.loss_weights, seed=FLAGS.seed, progress=FLAGS.progress)
  except ValueError as err:
    raise app.UsageError(f'--timesteps: {err}') from err
  report = {k: v.tolist() for k, v in result.items()}
  report.update(checkpoint=FLAGS.checkpoint, checkpoint_step=step, data=data,
                num_structures=len(structures))
  curves = {k: v for k, v in result.items()
            if k not in ('t', 'loss', 'sigma_frac', 'sigma_angstrom')}
  with outputs.output_folder(FLAGS.out, **_output()) as out:
    io_lib.write_json_atomic(out / 'loss_by_noise_level.json', report)
    plots.plot_curve(result['t'], curves, out / 'loss_by_noise_level.png',
                     xlabel='diffusion step t (noise grows with t)',
                     ylabel='loss (coords: 1 = nothing learned)', log_x=True,
                     markers=True, title=f'{FLAGS.checkpoint} (step {step})')
  for i, t in enumerate(result['t']):
    print(f't={t:5d}  ' + '  '.join(f'{k}={result[k][i]:.4f}' for k in curves))


if __name__ == '__main__':
  cli.run(main)
