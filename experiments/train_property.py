"""Train a property regressor (the predictor that scores guided samples).

  python experiments/train_property.py --property=heat_ref \
      --train_data=../shared/datasets/perov_5/train.csv \
      --val_data=../shared/datasets/perov_5/val.csv --workdir=runs/heat_ref
  (--resume continues from the latest checkpoint)

Writes config.json (with the training values' mean and std), metrics.jsonl,
checkpoints, training_curve.png and val_metrics.json: the val MAE of the
best checkpoint against the MAE of predicting the training mean.
"""
from absl import app
from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal import config_flags
from jaxcrystal import errors
from jaxcrystal.prediction import regressors
from jaxcrystal.prediction import train as property_train
from jaxcrystal.training import state as state_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory.')
flags.DEFINE_bool('resume', False, 'Continue from the latest checkpoint in --workdir.')
flags.DEFINE_bool('overwrite', False, 'Delete what --workdir holds and start afresh.')
config_flags.define_fields(property_train.PropertyConfig)
config_flags.define_fields(state_lib.OptimConfig, 'optim.')
_REGRESSOR = config_flags.define_component('regressor', regressors.REGRESSORS,
                                           "the regressor ('' = cspnet_regressor)")
flags.mark_flags_as_required(['workdir'])
cli.existing_file('train_data', 'val_data')
flags.register_multi_flags_validator(
    ['resume', 'overwrite'], lambda f: not (f['resume'] and f['overwrite']),
    message='--resume and --overwrite contradict each other')


def read_config() -> property_train.PropertyConfig:
  try:
    config = config_flags.read_fields(property_train.PropertyConfig, base=(
        property_train.PropertyConfig(
            optim=config_flags.read_fields(state_lib.OptimConfig, 'optim.'))))
    config = config_flags.apply_component(_REGRESSOR, config.with_regressor)
    config.validate()
  except errors.UserError as err:
    raise app.UsageError(str(err)) from None
  return config


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  result = property_train.train_property(
      read_config(), FLAGS.workdir, resume=FLAGS.resume, overwrite=FLAGS.overwrite,
      files={'flags.txt': FLAGS.flags_into_string()})
  print(result)


if __name__ == '__main__':
  cli.run(main)
