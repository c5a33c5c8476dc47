"""Flags shared by train_ddpm.py and quickstart.py, and their mapping to a
`TrainConfig`. Only parsing lives here; all logic is in `jaxcrystal`."""
import os
import re

from absl import app
from absl import flags

from jaxcrystal import cli
from jaxcrystal import errors
from jaxcrystal.generative import losses
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import samplers
from jaxcrystal.generative import tasks
from jaxcrystal.generative import train
from jaxcrystal.training import state as state_lib

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, plots).')
flags.DEFINE_bool('resume', False, 'Continue from the latest checkpoint in --workdir '
                  '(only --train_steps and logging flags may change).')
flags.DEFINE_bool('overwrite', False, 'Delete what --workdir holds and start afresh.')
flags.DEFINE_enum('task', 'csp', list(tasks.TASKS), 'What is generated.')
flags.DEFINE_string('train_data', 'builtin', "'builtin' or a CSV/extxyz/CIF path.")
flags.DEFINE_string('val_data', '', 'Validation file (empty: none).')
flags.DEFINE_integer('hidden', 128, 'Network width.')
flags.DEFINE_integer('num_layers', 4, 'Message-passing layers.')
flags.DEFINE_integer('num_freqs', 128, 'Fourier frequencies per axis.')
flags.DEFINE_integer('time_dim', 256, 'Time-embedding width.')
flags.DEFINE_integer('num_steps', 1000, 'Diffusion steps T.')
flags.DEFINE_enum('beta_schedule', 'cosine', ['linear', 'cosine', 'sigmoid'],
                  'Lattice/type beta schedule.')
flags.DEFINE_float('sigma_begin', 0.005, 'Smallest fractional-coordinate sigma.')
flags.DEFINE_float('sigma_end', 0.5, 'Largest fractional-coordinate sigma.')
flags.DEFINE_float('cart_sigma_begin', 0.01, 'Smallest Cartesian sigma (A).')
flags.DEFINE_float('cart_sigma_end', 1.0, 'Largest Cartesian sigma (A).')
flags.DEFINE_enum('graph', 'fc', ['fc', 'radius'], 'Fully connected or radius graph.')
flags.DEFINE_float('cutoff', 6.0, 'Radius-graph cutoff (A).')
flags.DEFINE_integer('distance_basis', 0, 'Gaussian distance features (0: off).')
flags.DEFINE_bool('edge_score_head', False, 'Coordinate score from distance-'
                  'weighted edge vectors too (needs --distance_basis).')
flags.DEFINE_integer('num_basis', 16, 'Radial basis functions of the cartesian EGNN.')
flags.DEFINE_integer('max_image', 2, 'Image range searched by radius graphs.')
flags.DEFINE_integer('edge_capacity_per_atom', 64, 'Radius graphs: edge slots '
                     'per atom slot of each crystal (checked on the data before '
                     'training and after every step).')
flags.DEFINE_integer('batch_size', 64, 'Crystals per batch.')
flags.DEFINE_integer('num_buckets', 4, 'Size buckets of the input pipeline.')
flags.DEFINE_integer('train_steps', 1000, 'Optimizer steps.')
flags.DEFINE_float('lr', 1e-3, 'Peak learning rate.')
flags.DEFINE_integer('warmup_steps', 100, 'Linear warm-up steps.')
flags.DEFINE_enum('lr_schedule', 'cosine', ['cosine', 'constant', 'plateau'],
                  'Learning-rate schedule after warm-up.')
flags.DEFINE_float('weight_decay', 0.0, 'AdamW weight decay.')
flags.DEFINE_float('grad_clip', 1.0, 'Global gradient-norm clip.')
flags.DEFINE_float('ema_decay', 0.999, 'EMA decay of the parameters.')
flags.DEFINE_float('lattice_weight', 1.0, 'Loss weight of the lattice term.')
flags.DEFINE_float('coord_weight', 1.0, 'Loss weight of the coordinate term.')
flags.DEFINE_float('type_weight', 1.0, 'Loss weight of the type term (dng).')
flags.DEFINE_enum('sampler', '', [''] + sorted(samplers.SAMPLERS),
                  "Default sampler stored with the run ('': pc for score "
                  'models, euler for flow models).')
flags.DEFINE_integer('sample_steps', 0, "Default sampler steps stored with the "
                     "run (0: the model's --num_steps).")
flags.DEFINE_float('step_lr', 1e-5, "Default Langevin step scale of 'pc' stored "
                   'with the run (measured per dataset: see the flag files).')
flags.DEFINE_integer('corrector_steps', 1, "Default corrector steps of 'pc'.")
flags.DEFINE_float('anneal_slope', 0.0, 'Default anti-annealing slope of the '
                   'flow samplers.')
flags.DEFINE_integer('eval_every', 200, 'Validation loss every N steps.')
flags.DEFINE_integer('checkpoint_every', 200, 'Checkpoint every N steps.')
flags.DEFINE_integer('keep_checkpoints', 3, 'Periodic checkpoints kept.')
flags.DEFINE_integer('seed', 0, 'Seed of parameters, data order and noise.')
flags.DEFINE_integer('max_atoms', 64, 'Reject (or skip) crystals with more atoms.')
flags.DEFINE_bool('skip_bad', False, 'Skip unusable rows of --train_data and '
                  '--val_data and report them (printed and in skipped_rows.json) '
                  'instead of stopping at the first.')
flags.DEFINE_bool('niggli', False, 'Niggli-reduce the cells of --train_data and '
                  '--val_data files, as DiffCSP and CDVAE do: skewed cells make '
                  'the fractional geometry harder to learn.')
flags.DEFINE_string('cache_dir', '', 'Cache of parsed datasets (empty: none).')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.DEFINE_string('coordinator_address', '',
                    'Multi-host: host:port of process 0 (empty: single host).')
flags.DEFINE_integer('num_processes', 1, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', 0, 'Multi-host: index of this process.')

flags.mark_flag_as_required('workdir')
cli.at_least(1, 'hidden', 'num_layers', 'num_freqs', 'time_dim', 'num_steps',
             'batch_size', 'train_steps', 'eval_every', 'checkpoint_every',
             'keep_checkpoints', 'max_atoms', 'num_buckets', 'edge_capacity_per_atom',
             'num_basis')
cli.at_least(0, 'step_lr', 'corrector_steps', 'anneal_slope', 'sample_steps')
cli.at_least(0, 'warmup_steps', 'distance_basis', 'max_image', 'num_processes',
             'process_id')
cli.positive('lr', 'sigma_begin', 'sigma_end', 'cart_sigma_begin', 'cart_sigma_end',
             'cutoff', 'grad_clip')
for _name in ('weight_decay', 'lattice_weight', 'coord_weight', 'type_weight'):
  flags.register_validator(_name, lambda v: v >= 0, message=f'--{_name} must be >= 0')
flags.register_validator('ema_decay', lambda v: 0 <= v < 1,
                         message='--ema_decay must be in [0, 1)')
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
for _name in ('train_data', 'val_data'):
  flags.register_validator(
      _name, lambda v: v in ('', 'builtin') or os.path.isfile(v),
      message=f'--{_name} must be "builtin" or an existing file')


def config_from_flags() -> train.TrainConfig:
  # The component flags keep their flat names; the model's reader of flat
  # (pre-issue-31) settings puts each into its process's or network's
  # settings, whose own checks then run (one line naming the component).
  model = model_lib.ModelConfig.from_dict(dict(
      task=FLAGS.task, hidden=FLAGS.hidden, num_layers=FLAGS.num_layers,
      num_freqs=FLAGS.num_freqs, time_dim=FLAGS.time_dim, num_steps=FLAGS.num_steps,
      beta_schedule=FLAGS.beta_schedule, sigma_begin=FLAGS.sigma_begin,
      sigma_end=FLAGS.sigma_end, cart_sigma_begin=FLAGS.cart_sigma_begin,
      cart_sigma_end=FLAGS.cart_sigma_end, graph=FLAGS.graph, cutoff=FLAGS.cutoff,
      distance_basis=FLAGS.distance_basis, edge_score_head=FLAGS.edge_score_head,
      num_basis=FLAGS.num_basis, max_image=FLAGS.max_image,
      edge_capacity_per_atom=FLAGS.edge_capacity_per_atom))
  optim = state_lib.OptimConfig(
      learning_rate=FLAGS.lr, warmup_steps=FLAGS.warmup_steps,
      schedule=FLAGS.lr_schedule, weight_decay=FLAGS.weight_decay,
      grad_clip=FLAGS.grad_clip, ema_decay=FLAGS.ema_decay)
  weights = losses.LossWeights(FLAGS.lattice_weight, FLAGS.coord_weight,
                                  FLAGS.type_weight)
  config = train.TrainConfig(
      model=model, optim=optim, loss_weights=weights,
      sampling=samplers.SamplerConfig(
          name=FLAGS.sampler, num_steps=FLAGS.sample_steps, step_lr=FLAGS.step_lr,
          corrector_steps=FLAGS.corrector_steps, anneal_slope=FLAGS.anneal_slope),
      train_data=FLAGS.train_data,
      val_data=FLAGS.val_data, batch_size=FLAGS.batch_size,
      num_buckets=FLAGS.num_buckets, train_steps=FLAGS.train_steps,
      eval_every=FLAGS.eval_every, checkpoint_every=FLAGS.checkpoint_every,
      keep_checkpoints=FLAGS.keep_checkpoints, seed=FLAGS.seed,
      max_atoms=FLAGS.max_atoms, skip_bad=FLAGS.skip_bad, niggli=FLAGS.niggli,
      cache_dir=FLAGS.cache_dir,
      progress=FLAGS.progress)
  try:
    config.model.validate()
  except ValueError as err:  # errors.ConfigError too
    raise app.UsageError(f'model flags: {err}') from None
  try:
    config.sampling.resolve(model_lib.build(config.model))
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
