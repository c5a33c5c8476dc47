"""Sampler flags of train_ddpm.py (the defaults stored with the run),
sample.py, run_benchmark.py and benchmark_sampling_steps.py (each left unset
takes the value stored with the run, `TrainConfig.sampling`, set by its
flag file from measurements). Only parsing lives here."""
import dataclasses

from absl import flags

from jaxcrystal import cli
from jaxcrystal.generative import samplers

FLAGS = flags.FLAGS
flags.DEFINE_enum('sampler', None, sorted(samplers.SAMPLERS),
                  "pc, ddim (score models) or euler, heun, midpoint (flow "
                  "models); default: the run's.")
flags.DEFINE_integer('sample_steps', None, "Sampler time steps (default: the run's; "
                     'fewer than a score model\'s T run on a strided grid).')
flags.DEFINE_float('step_lr', None, "Langevin corrector step scale of 'pc' "
                   "(default: the run's).")
flags.DEFINE_integer('corrector_steps', None, "Corrector steps per time step of "
                     "'pc' (0: predictor only; default: the run's).")
flags.DEFINE_float('anneal_slope', None, 'Anti-annealing slope of the flow '
                   "samplers' coordinate velocity, 1 + s (1 - t) (0: off; "
                   "default: the run's).")
cli.at_least(1, 'sample_steps')
cli.at_least(0, 'step_lr', 'corrector_steps', 'anneal_slope')


def refuse_num_steps() -> None:
  """Sampling scripts: --num_steps (the model's T, set in training) is
  refused in one line pointing to --sample_steps."""
  flags.DEFINE_integer('num_steps', None, 'Renamed --sample_steps (--num_steps is the '
                       "model's T, set in training).")
  flags.register_validator(
      'num_steps', lambda v: v is None,
      message="--num_steps is the model's T, set in training; the sampler's steps "
              'are --sample_steps')


_FIELDS = {'sampler': 'name', 'sample_steps': 'num_steps', 'step_lr': 'step_lr',
           'corrector_steps': 'corrector_steps', 'anneal_slope': 'anneal_slope'}


def sampler_config(stored: samplers.SamplerConfig) -> samplers.SamplerConfig:
  """The run's stored sampler settings with the flags given on top."""
  given = {field: FLAGS[flag].value for flag, field in _FIELDS.items()
           if FLAGS[flag].value is not None}
  return dataclasses.replace(stored, **given)
