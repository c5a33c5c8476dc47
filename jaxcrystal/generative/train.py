"""Training a crystal generative model: its config, data, and the glue to the
training kit (`jaxcrystal.training`).

Layout after flax's examples: `TrainConfig`, `create_train_state` and
`train_and_evaluate(config, workdir)`; the loop itself is `training.loop.run`.
`loss_by_noise_level` shows at which noise levels a trained model fails.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import properties as properties_lib
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import readers
from jaxcrystal.data import pipeline as data_lib
from jaxcrystal.generative import constraints
from jaxcrystal.generative import losses
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import samplers
from jaxcrystal.geometry import neighbors
from jaxcrystal.training import loop as loop_lib
from jaxcrystal.training import sharding
from jaxcrystal.training import state as state_lib
from jaxcrystal.training import warm_start


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole run; built from flags by `experiments/train_ddpm.py` (each
  scalar field is a flag of the same name, `config_flags.py`).

  Attributes:
    model: the model (`ModelConfig`).
    optim: optimizer and schedule (`OptimConfig`, flags --optim.*).
    loss_weights: weight of each variable's loss term (flags --loss_weights.*).
    sampling: sampler defaults stored with the run, measured for it.
    train_data: 'builtin' or a CSV/extxyz/CIF path.
    val_data: validation file ('' = none).
    batch_size: crystals per batch.
    num_buckets: size buckets of the input pipeline.
    train_steps: optimizer steps.
    eval_every: validation loss every N steps.
    checkpoint_every: checkpoint every N steps.
    keep_checkpoints: periodic checkpoints kept.
    seed: seed of parameters, data order and noise.
    max_atoms: reject (or skip, with skip_bad) crystals with more atoms.
    skip_bad: skip unusable rows of the data files and report them in
      skipped_rows.json instead of stopping at the first.
    niggli: Niggli-reduce the cells read from files.
    cache_dir: cache of parsed datasets ('' = none).
    log_every: training metrics every N steps.
    progress: show a progress bar.
    monitor_every: sample-quality checks every N steps against val_data
      (`monitor.py`; 0: none); the best is kept in best_quality/.
    monitor_samples: structures sampled at each check.
    monitor_sample_steps: sampler steps of the checks (0: the run's sampler's).
    monitor_patience: stop after this many checks without a better quality
      (0: never stop early).
    init_from: a model file (`pretrained/NAME`) or run directory whose (EMA,
      best) parameters start this run: fine-tuning, e.g. a pretrained
      unconditional model taught a condition ('' = fresh initialisation).
      Parameters the source lacks (the condition's embedding) keep their
      initialisation; a source parameter with no place here, or another
      shape, is refused (`training/warm_start.py`).
  """
  model: model_lib.ModelConfig = model_lib.ModelConfig()
  optim: state_lib.OptimConfig = state_lib.OptimConfig()
  loss_weights: losses.LossWeights = losses.LossWeights()
  sampling: samplers.SamplerConfig = samplers.SamplerConfig()
  train_data: str = 'builtin'
  val_data: str = ''
  batch_size: int = 64
  num_buckets: int = 4
  train_steps: int = 1000
  eval_every: int = 200
  checkpoint_every: int = 200
  keep_checkpoints: int = 3
  seed: int = 0
  max_atoms: int = 64
  skip_bad: bool = False
  niggli: bool = False
  cache_dir: str = ''
  log_every: int = 20
  progress: bool = True
  monitor_every: int = 0
  monitor_samples: int = 256
  monitor_sample_steps: int = 0
  monitor_patience: int = 0
  init_from: str = ''

  def validate(self) -> None:
    """Raises `errors.ConfigError` naming the first bad field."""
    for field in ('batch_size', 'num_buckets', 'train_steps', 'eval_every',
                  'checkpoint_every', 'keep_checkpoints', 'max_atoms', 'log_every'):
      if getattr(self, field) < 1:
        raise errors.ConfigError(f'train: {field} must be >= 1, got {getattr(self, field)}')
    for field in ('monitor_every', 'monitor_sample_steps', 'monitor_patience'):
      if getattr(self, field) < 0:
        raise errors.ConfigError(f'train: {field} must be >= 0, got {getattr(self, field)}')
    if self.monitor_samples < 1:
      raise errors.ConfigError(f'train: monitor_samples must be >= 1, got {self.monitor_samples}')
    if self.monitor_every and not self.val_data:
      raise errors.ConfigError('train: monitor_every needs val_data (the samples are '
                               'scored against the validation crystals)')
    if self.monitor_patience and not self.monitor_every:
      raise errors.ConfigError('train: monitor_patience needs monitor_every')
    self.model.validate()
    self.optim.validate()
    self.loss_weights.validate()

  def to_dict(self) -> dict:
    return dict(dataclasses.asdict(self), model=self.model.to_dict(),
                sampling=self.sampling.to_dict())

  @classmethod
  def from_dict(cls, d: dict) -> 'TrainConfig':
    d = dict(d)
    d.pop('data', None)  # the run's data record (`data_record`), not settings
    d['model'] = model_lib.ModelConfig.from_dict(d['model'])
    d['optim'] = state_lib.OptimConfig(**d['optim'])
    d['loss_weights'] = losses.LossWeights(**d['loss_weights'])
    d['sampling'] = samplers.SamplerConfig.from_dict(d.get('sampling', {}))
    return cls(**d)


def current_layout(stored: dict) -> dict:
  """A run's stored `config.json` in this version's layout (what
  `TrainConfig.to_dict` writes now), its data record kept."""
  data = {'data': stored['data']} if 'data' in stored else {}
  return dict(TrainConfig.from_dict(stored).to_dict(), **data)


def create_train_state(rng: jax.Array, model: model_lib.Model,
                       example: batch_lib.CrystalBatch,
                       optimizer: optax.GradientTransformation) -> state_lib.TrainState:
  def create(rng, example):
    init_rng, rng = jax.random.split(rng)
    return state_lib.initial_state(model.init_params(init_rng, example), optimizer, rng)
  # One compiled program: op by op, init compiles a program per operation
  # and shape (about 200 on a small CSP model, most of the time to first step).
  return jax.jit(create)(rng, batch_lib.to_device(example))


def evaluate(eval_step, params, batches: Sequence[batch_lib.CrystalBatch], seed: int,
             where: str = 'evaluation') -> dict:
  """Mean losses over `batches` (placed on the device once, e.g. by
  `Training.val_batches`), weighting batches by crystal count; stops if a
  graph lost edges (`where` names the moment in the error)."""
  rng = jax.random.PRNGKey(seed)
  return _crystal_weighted_means(
      batches, lambda k, b: eval_step(params, b, jax.random.fold_in(rng, k)), where)


def _crystal_weighted_means(batches, losses_of: Callable, where: str) -> dict:
  """Means of the dicts `losses_of(k, batch)` over batches, each batch
  weighted by its number of real crystals (batch means are per crystal)."""
  totals, count = {}, 0
  for k, batch in enumerate(batches):
    n = int(batch.graph_mask.sum())
    values = dict(losses_of(k, batch))
    neighbors.check_overflow(values.pop('overflow', 0), f'{where}, batch {k}')
    for key, value in values.items():
      totals[key] = totals.get(key, 0.0) + float(value) * n
    count += n
  return {k: v / max(count, 1) for k, v in totals.items()}


def loss_by_noise_level(model: model_lib.Model, params,
                        dataset: data_lib.BucketedDataset, timesteps: Sequence,
                        weights: losses.LossWeights = losses.LossWeights(),
                        seed: int = 0, progress: bool = True) -> dict:
  """Loss components with every crystal of `dataset` noised to each time t.

  The training loss averages over t; this shows where a model fails. The
  coords component of score models is the normalised-score MSE, so 1 means
  nothing learned at that noise level (the target has unit variance) and a
  well-trained model is near 0 at small t.

  Args:
    timesteps: times on the model's grid (steps in {1..T} for DDPM models).
  Returns:
    {'t': [S]; each process's noise scale at t under its `scale_name`
    ('sigma_frac' or 'sigma_angstrom'); each loss component: [S]
    crystal-weighted means}.
  """
  bad = model.time.validate(timesteps)
  if bad or not len(timesteps):
    raise ValueError(f'timesteps must be in 1..{model.time.num_steps} (non-empty); '
                     f'got {bad or "none"}')
  loss_at_times = jax.jit(losses.get_loss_at_times_fn(model, weights))
  batches = list(dataset.all_batches())
  rng = jax.random.PRNGKey(seed)
  ts = np.asarray(timesteps, model.time.dtype)
  out = {'t': ts}
  for t in tqdm(ts, desc='noise levels', disable=not progress):
    means = _crystal_weighted_means(batches, lambda k, b: loss_at_times(
        jax.random.fold_in(rng, k), params, b,
        model.time.full(t, b.num_graph_slots))[1], f'noise level t = {t}')
    for key, value in means.items():
      out.setdefault(key, []).append(value)
  for process in model.processes.values():
    if process.scale_name:
      out[process.scale_name] = np.asarray(process.schedule.sigmas)[ts]
  return {k: np.asarray(v) for k, v in out.items()}


def load_structures(path: str, config: TrainConfig):
  """The built-in set or a file; returns (structures, report) where report
  is None for the built-in set. Raises `readers.DataError` naming the file
  and row of a bad structure (unless `config.skip_bad`), or when no
  structure is usable."""
  from jaxcrystal.data import datasets
  if path == 'builtin':
    return datasets.builtin_structures(), None
  structures, report = readers.read_structures(
      path, skip_bad=config.skip_bad, max_atoms=config.max_atoms,
      niggli=config.niggli, cache_dir=config.cache_dir or None,
      progress=config.progress)
  if not structures:
    first = report.skipped[0] if report.skipped else None
    raise readers.DataError(
        f'{path}: no usable structures' + (
            f' ({len(report.skipped)} skipped; row {first.row} ({first.identifier}): '
            f'{first.reason})' if first else ''))
  return structures, report


def data_record(config: TrainConfig, train_structures) -> dict:
  """What a run stores of its data in `config.json` under 'data', so that
  `--resume` refuses changed files and sampling knows its size budget:
  the sha256 of each data file (None for the built-in set or none), the
  largest structure trained on (atoms), the histogram of atoms per
  crystal {atoms: crystals}, which de novo sampling draws from, and the
  crystals holding each element {symbol: crystals}, which `--elements`
  is checked against."""
  sha = lambda path: io_lib.file_sha256(path) if path not in ('', 'builtin') else None
  return {'train_data_sha256': sha(config.train_data),
          'val_data_sha256': sha(config.val_data),
          'largest_structure': max(len(s) for s in train_structures),
          'atom_counts': atom_count_histogram(train_structures),
          'elements': constraints.element_histogram(train_structures)}


def atom_count_histogram(structures) -> dict[str, int]:
  """{atoms per crystal (as a string, for JSON): crystals}, sorted."""
  counts = np.bincount([len(s) for s in structures])
  return {str(n): int(c) for n, c in enumerate(counts) if c}


def data_inputs(config: TrainConfig) -> dict[str, str]:
  """{flag: path} of the files and folders a run reads."""
  return {'--train_data': '' if config.train_data == 'builtin' else config.train_data,
          '--val_data': config.val_data, '--cache_dir': config.cache_dir}


def describe_load(path: str, structures, report) -> str:
  """One line (plus skipped rows) of what a `load_structures` call read."""
  return report.summary() if report is not None else f'{path}: {len(structures)} structures'


def fit_conditions(config: TrainConfig, train_structures) -> TrainConfig:
  """`config` with its model's condition settings fitted to the training
  crystals (`ModelConfig.fit_conditions`); unchanged without conditions. A
  property no crystal has is left for `check_conditions` to name."""
  model = config.model
  if not model.conditions:
    return config
  values = properties_lib.property_values(train_structures, model.properties)
  if not all(np.isfinite(v).any() for v in values.values()):
    return config
  return dataclasses.replace(config, model=model.fit_conditions(values, config.train_data))


def check_conditions(dataset: data_lib.BucketedDataset, source: str,
                     log: Callable) -> None:
  """Say how many crystals of `source` have each conditioned property; a
  property no crystal has stops the run (`errors.DataError`)."""
  for name, values in dataset.packed.properties.items():
    finite = np.isfinite(values)
    known = int((finite if finite.ndim == 1 else finite.all(-1)).sum())
    if not known:
      raise errors.DataError(f'{source}: the model is conditioned on {name!r}, but '
                             'no row has a number in that column')
    log(f'{source}: {name!r} known for {known} of {len(values)} crystals'
        + ('' if known == len(values) else ' (the others train unconditioned)'))


@dataclasses.dataclass
class Training:
  """What a run is built from (`build_training`): its config (conditions
  fitted to the data), the model, datasets, the jitted steps, the initial
  state and how batches and states are placed."""
  config: TrainConfig
  model: model_lib.Model
  train_set: data_lib.BucketedDataset
  val_set: data_lib.BucketedDataset | None
  train_step: Callable       # jitted (state, batch) -> (state, metrics)
  eval_step: Callable        # jitted (params, batch, rng) -> losses
  state: state_lib.TrainState
  place: Callable            # host batch -> device batch
  replicate: Callable        # state -> device state
  train_structures: list
  reports: list
  val_structures: list = dataclasses.field(default_factory=list)
  _val_batches: list | None = dataclasses.field(default=None, repr=False)

  def batch_for_step(self, seed: int, step: int):
    """The placed training batch of `step`."""
    return self.place(self.train_set.batch_for_step(seed, step))

  def val_batches(self) -> list:
    """Every validation batch, gathered and placed on the device at the
    first call and kept: each evaluation reuses them."""
    if self.val_set is None:
      return []
    if self._val_batches is None:
      self._val_batches = [self.place(b) for b in self.val_set.all_batches()]
    return self._val_batches


def build_training(config: TrainConfig, log: Callable = print) -> Training:
  """Read the data, build the model, the datasets, the jitted train and
  eval steps and the initial state of `config`."""
  train_structures, report = load_structures(config.train_data, config)
  log(describe_load(config.train_data, train_structures, report))
  config = fit_conditions(config, train_structures)
  model = model_lib.build(config.model)
  reports = [report]
  mesh = sharding.make_mesh()
  edges = data_lib.default_bucket_edges([len(s) for s in train_structures],
                                        config.num_buckets)
  properties = config.model.properties
  train_set = data_lib.BucketedDataset(train_structures, config.batch_size,
                                       edges, mesh.size, properties)
  check_conditions(train_set, config.train_data, log)
  val_set, val_structures = None, []
  if config.val_data:
    val_structures, val_report = load_structures(config.val_data, config)
    log(describe_load(config.val_data, val_structures, val_report))
    reports.append(val_report)
    val_set = data_lib.BucketedDataset(val_structures, config.batch_size,
                                       edges, mesh.size, properties)
    check_conditions(val_set, config.val_data, log)
  model.check_edge_capacity(train_set.all_batches(), config.train_data)
  if val_set is not None:
    model.check_edge_capacity(val_set.all_batches(), config.val_data)
  loss_fn = losses.get_loss_fn(model, config.loss_weights)
  optimizer = state_lib.make_optimizer(config.optim, config.train_steps)
  train_step = jax.jit(state_lib.make_train_step(loss_fn, optimizer,
                                                 config.optim.ema_decay),
                       donate_argnums=0)
  state = create_train_state(jax.random.PRNGKey(config.seed), model,
                             train_set.batch_for_step(config.seed, 0), optimizer)
  return Training(
      config=config, model=model, train_set=train_set, val_set=val_set, train_step=train_step,
      eval_step=jax.jit(state_lib.make_eval_step(loss_fn)), state=state,
      place=lambda b: sharding.shard_batch(b, mesh),
      replicate=lambda s: sharding.replicate(s, mesh),
      train_structures=train_structures, reports=reports, val_structures=val_structures)


def warm_started(state: state_lib.TrainState, source: str,
                 log: Callable = print) -> state_lib.TrainState:
  """A fresh `state` whose parameters and EMA start from `source`'s (a
  model file or run directory: its best EMA parameters), where they fit
  (`warm_start.transplant`); step, optimizer moments and PRNG stay fresh."""
  from jaxcrystal.generative import generate  # generate imports this module
  _, params, _, step = generate.load_run(source)
  merged, taken, new = warm_start.transplant(params, jax.device_get(state.params), source)
  log(f'init_from {source} (step {step}): {taken} parameter arrays copied, '
      f'{len(new)} new ones initialised afresh{": " + ", ".join(new[:4]) if new else ""}'
      f'{" ..." if len(new) > 4 else ""}')
  return dataclasses.replace(state, params=merged,
                             ema_params=jax.tree_util.tree_map(jax.numpy.copy, merged))


def train_and_evaluate(config: TrainConfig, workdir: str | Path,
                       resume: bool = False, log: Callable = print,
                       overwrite: bool = False,
                       files: dict[str, str] | None = None) -> dict:
  """Train `config` in `workdir`; resume from its latest checkpoint if asked
  (a configuration that would change the results is refused), or start
  afresh in a used workdir with `overwrite`.

  Writes `config.json`, `metrics.jsonl`, `training_curve.png`, periodic
  checkpoints (last `keep_checkpoints`), the best-by-validation one, with
  `monitor_every` the best-by-sample-quality one and `quality_curve.png`,
  `skipped_rows.json` (what each data file left out) and `files`.
  Returns the loop's summary dict (with `first_step_s`, the time from this
  call to the end of the first training step: reading, init and compile).
  """
  started = time.perf_counter()
  inputs = data_inputs(config)
  loop_lib.check_workdir(workdir, resume, overwrite, inputs)  # before any work
  t = build_training(config, log)
  config = t.config  # conditions fitted to the training data
  if config.init_from and not resume:  # a resumed run restores its own parameters
    t = dataclasses.replace(t, state=warm_started(t.state, config.init_from, log))
  evaluate_fn = None
  if t.val_set is not None:
    evaluate_fn = lambda params, step: evaluate(
        t.eval_step, params, t.val_batches(), config.seed,
        f'validation at step {step}')
  monitor_fn = None
  if config.monitor_every:
    from jaxcrystal.generative import monitor  # it samples through generate, which imports this
    monitor_fn = monitor.make_quality_monitor(
        t.model, dataclasses.replace(config.sampling, num_steps=config.monitor_sample_steps)
        if config.monitor_sample_steps else config.sampling,
        t.val_structures, [len(s) for s in t.train_structures],
        num_samples=config.monitor_samples, seed=config.seed)
  loop = loop_lib.LoopConfig(
      train_steps=config.train_steps, log_every=config.log_every,
      eval_every=config.eval_every, checkpoint_every=config.checkpoint_every,
      monitor_every=config.monitor_every, monitor_patience=config.monitor_patience,
      keep_checkpoints=config.keep_checkpoints, progress=config.progress,
      may_change_on_resume=loop_lib.LoopConfig.may_change_on_resume + ('sampling',))
  _, summary = loop_lib.run(
      workdir, loop, t.replicate(t.state), t.train_step,
      lambda step: t.batch_for_step(config.seed, step),
      evaluate=evaluate_fn, monitor=monitor_fn, resume=resume, started=started,
      config_dict=dict(config.to_dict(), data=data_record(config, t.train_structures)),
      overwrite=overwrite, replicate=t.replicate, log=log, inputs=inputs,
      read_config=current_layout,
      files=dict(files or {}, **{'skipped_rows.json': readers.skip_reports_json(
          [r for r in t.reports if r is not None])}))
  return summary
