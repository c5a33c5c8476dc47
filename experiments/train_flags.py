"""Flags shared by train_ddpm.py, quickstart.py and benchmark_loop.py. The
configuration flags are generated from the config classes and the
registered components (`jaxcrystal.config_flags`): a new field of a
component's settings is a flag here with no edit. Only parsing lives here."""
import os
import re

from absl import app
from absl import flags

import sampler_flags
from jaxcrystal import cli
from jaxcrystal import config_flags
from jaxcrystal import errors
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import model_file
from jaxcrystal.generative import train

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, plots).')
flags.DEFINE_bool('resume', False, 'Continue from the latest checkpoint in --workdir '
                  '(only --train_steps and logging flags may change).')
flags.DEFINE_bool('overwrite', False, 'Delete what --workdir holds and start afresh.')
flags.DEFINE_string('coordinator_address', '',
                    'Multi-host: host:port of process 0 (empty: single host).')
flags.DEFINE_integer('num_processes', 1, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', 0, 'Multi-host: index of this process.')

# The configuration (`TrainConfig`): flags generated from the config
# classes and the registered components, the sampler defaults from
# sampler_flags (shared with sample.py).
_read_generated = config_flags.define_train_config(
    lambda: sampler_flags.sampler_config(train.TrainConfig().sampling))

flags.mark_flag_as_required('workdir')
cli.at_least(0, 'num_processes', 'process_id')
flags.register_multi_flags_validator(
    ['resume', 'overwrite'], lambda f: not (f['resume'] and f['overwrite']),
    message='--resume and --overwrite contradict each other')
flags.register_validator(
    'coordinator_address',
    lambda v: not v or re.fullmatch(r'[\w.\-]+:\d{1,5}', v) is not None,
    message='--coordinator_address must be HOST:PORT')
flags.register_validator('cache_dir', lambda v: not v or not os.path.isfile(v),
                         message='--cache_dir must be a folder, not a file')
flags.register_validator('workdir', lambda v: not v or not os.path.isfile(v),
                         message='--workdir must be a folder, not a file')
flags.register_validator(
    'init_from', lambda v: not v or os.path.isdir(v) or model_file.resolve(v) is not None,
    message='--init_from must be a model file (pretrained/NAME) or a run directory')
for _name in ('train_data', 'val_data'):
  flags.register_validator(
      _name, lambda v: v in ('', 'builtin') or os.path.isfile(v),
      message=f'--{_name} must be "builtin" or an existing file')


def read_config() -> train.TrainConfig:
  """The `TrainConfig` the flags describe (no field is named here); a bad
  setting raises `app.UsageError` naming the flag or component."""
  try:
    config = _read_generated()
  except errors.UserError as err:
    raise app.UsageError(str(err)) from None
  try:
    built = model_lib.build(config.model)
  except (errors.UserError, ValueError) as err:
    raise app.UsageError(f'model flags: {err}') from None
  try:
    config.sampling.resolve(built)
  except errors.UserError as err:
    raise app.UsageError(f'sampler flags: {err}') from None
  return config


def maybe_initialize_distributed() -> None:
  if FLAGS.coordinator_address:
    from jaxcrystal.training import sharding
    sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)


def flags_file() -> dict[str, str]:
  """{'flags.txt': the flags used, as a reusable flag file}, for the workdir."""
  return {'flags.txt': FLAGS.flags_into_string()}
