"""Sampler flags of train_ddpm.py (the defaults stored with the run),
sample.py, run_benchmark.py and benchmark_sampling_steps.py (each left unset
takes the value stored with the run, `TrainConfig.sampling`, set by its
flag file from measurements). `--sampler.FIELD` flags are generated from
the registered samplers' settings. Only parsing lives here."""
import dataclasses

from absl import flags

from jaxcrystal import cli
from jaxcrystal import config_flags
from jaxcrystal.generative import samplers

FLAGS = flags.FLAGS
_SAMPLER = config_flags.define_component(
    'sampler', samplers.SAMPLERS, "the sampler ('' = the run's; in training, the "
    "model's default; pc and ddim run "
    'score models, euler, heun and midpoint flow models)')
flags.DEFINE_integer('sample_steps', None, "Sampler time steps (default: the run's; "
                     'fewer than a score model\'s T run on a strided grid).')
cli.at_least(1, 'sample_steps')


def refuse_num_steps() -> None:
  """Sampling scripts: --num_steps (the model's T, set in training) is
  refused in one line pointing to --sample_steps."""
  flags.DEFINE_integer('num_steps', None, 'Renamed --sample_steps (--num_steps is the '
                       "model's T, set in training).")
  flags.register_validator(
      'num_steps', lambda v: v is None,
      message="--num_steps is the model's T, set in training; the sampler's steps "
              'are --sample_steps')


def sampler_config(stored: samplers.SamplerConfig) -> samplers.SamplerConfig:
  """The run's stored sampler settings with the flags given on top. Another
  sampler than the run's keeps only the stored settings it also has
  (euler's anneal_slope carries over to heun, pc's step_lr not to ddim)."""
  config = stored
  if FLAGS.sampler:
    config = dataclasses.replace(stored, name=FLAGS.sampler)
    if FLAGS.sampler in samplers.SAMPLERS:
      own = {f.name for f in dataclasses.fields(samplers.SAMPLERS[FLAGS.sampler].defaults)}
      config = dataclasses.replace(config, settings=tuple(
          (k, v) for k, v in stored.settings if k in own))
  if FLAGS.sample_steps is not None:
    config = dataclasses.replace(config, num_steps=FLAGS.sample_steps)
  return config.with_settings(**_SAMPLER.given())
