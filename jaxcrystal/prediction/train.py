"""Train a property regressor on a crystal data file and predict with it.

`train_property(config, workdir)` trains a registered regressor
(`regressors.py`) on one property column (or a property computed from the
structure, `batch.DERIVED_PROPERTIES`) with the library's training loop:
standardised targets (mean and std of the training crystals, stored in
`config.json`), a masked mean squared error (crystals without a value do
not count), the EMA parameters evaluated on the validation file. It writes
`val_metrics.json`: the MAE of the best checkpoint on val against the MAE
of predicting the training mean (the baseline the issue's target divides).

`load_predictor(workdir)` restores a run; `predict(predictor, structures)`
gives one value per structure, in the property's units.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import properties as properties_lib
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import pipeline as data_lib
from jaxcrystal.generative import settings as settings_lib
from jaxcrystal.generative import train as generative_train
from jaxcrystal.geometry import neighbors
from jaxcrystal.prediction import regressors
from jaxcrystal.training import checkpoints
from jaxcrystal.training import loop as loop_lib
from jaxcrystal.training import state as state_lib


@dataclasses.dataclass(frozen=True)
class PropertyConfig:
  """A property-regression run (`experiments/train_property.py`).

  Attributes:
    property: the column predicted (or num_elements, num_atoms).
    regressor: (name, settings) of a registered regressor; () for
      cspnet_regressor with its defaults.
    optim: optimizer and schedule.
    train_data: training file (CSV, CIF or extxyz).
    val_data: validation file.
    mean: the training values' mean (fitted when the run starts).
    std: the training values' standard deviation (0: not fitted yet).
    batch_size: crystals per batch.
    train_steps: optimizer steps.
    eval_every: validation MAE every N steps.
    checkpoint_every: checkpoint every N steps.
    seed: seed of parameters and data order.
    max_atoms: largest crystal read.
    skip_bad: skip unusable rows and report them.
    niggli: Niggli-reduce the cells read.
    cache_dir: cache of parsed datasets ('' = none).
    log_every: training metrics every N steps.
    progress: show a progress bar.
  """
  property: str = ''
  regressor: tuple = ()
  optim: state_lib.OptimConfig = state_lib.OptimConfig(learning_rate=1e-3,
                                                       ema_decay=0.999)
  train_data: str = ''
  val_data: str = ''
  mean: float = 0.0
  std: float = 0.0
  batch_size: int = 128
  train_steps: int = 3000
  eval_every: int = 500
  checkpoint_every: int = 500
  seed: int = 0
  max_atoms: int = 64
  skip_bad: bool = False
  niggli: bool = False
  cache_dir: str = ''
  log_every: int = 50
  progress: bool = True

  def regressor_choice(self) -> tuple[str, settings_lib.Settings]:
    if self.regressor:
      return self.regressor
    return 'cspnet_regressor', regressors.entry('cspnet_regressor').defaults

  def with_regressor(self, name: str | None = None, **settings) -> 'PropertyConfig':
    old_name, old = self.regressor_choice()
    name = name or old_name
    base = old if name == old_name else regressors.entry(name).defaults
    return dataclasses.replace(self, regressor=(name, settings_lib.read(
        base, settings, f'regressor {name!r}')))

  def validate(self) -> None:
    if not self.property:
      raise errors.ConfigError('property: name the column to predict (--property)')
    if not self.train_data or not self.val_data:
      raise errors.ConfigError('property: give --train_data and --val_data')
    for field in ('batch_size', 'train_steps', 'eval_every', 'checkpoint_every',
                  'max_atoms', 'log_every'):
      if getattr(self, field) < 1:
        raise errors.ConfigError(f'property: {field} must be >= 1, got '
                                 f'{getattr(self, field)}')
    name, settings = self.regressor_choice()
    settings_lib.checked_like(settings, regressors.entry(name).defaults,
                              f'regressor {name!r}')
    self.optim.validate()

  def to_dict(self) -> dict:
    name, settings = self.regressor_choice()
    return dict(dataclasses.asdict(self), regressor=dict(name=name,
                                                         settings=settings.to_dict()))

  @classmethod
  def from_dict(cls, d: dict) -> 'PropertyConfig':
    d = dict(d)
    stored = d.pop('regressor')
    d['optim'] = state_lib.OptimConfig(**d['optim'])
    config = cls(**d)
    return config.with_regressor(stored['name'], **stored['settings'])


@dataclasses.dataclass
class Predictor:
  """A trained regressor: `config`, its `module` and EMA `params`; `apply`
  (built once) maps (params, batch) to the property in its units."""
  config: PropertyConfig
  module: object
  params: object
  apply: Callable | None = None

  def __post_init__(self):
    if self.apply is None:
      c, module = self.config, self.module
      self.apply = jax.jit(lambda p, b: module.apply(p, b, _graph(b)) * c.std + c.mean)


def _module(config: PropertyConfig):
  name, settings = config.regressor_choice()
  return regressors.entry(name).build(settings)


def _graph(batch):
  return neighbors.fully_connected_graph(batch, nearest_image=True)


def get_loss_fn(module, mean: float, std: float, prop: str) -> Callable:
  """`loss_fn(rng, params, batch) -> (loss, aux)`: mean squared error of the
  standardised prediction over crystals with a known value; aux holds
  'loss', 'mae' (property units) and the graph's 'overflow'."""
  def loss_fn(rng, params, batch):
    del rng
    graph = _graph(batch)
    pred = module.apply(params, batch, graph)
    target = (batch.conditions[prop] - mean) / std
    mask = (batch.graph_mask & batch.condition_mask[prop]).astype(pred.dtype)
    count = jnp.maximum(mask.sum(), 1.0)
    err = (pred - target) * mask
    loss = jnp.sum(err ** 2) / count
    return loss, dict(loss=loss, mae=jnp.sum(jnp.abs(err)) * std / count,
                      overflow=graph.overflow)
  return loss_fn


def _load(path: str, config: PropertyConfig, log: Callable):
  structures, report = generative_train.load_structures(path, config)
  log(generative_train.describe_load(path, structures, report))
  values = properties_lib.property_values(structures, (config.property,))[config.property]
  known = int(np.isfinite(values).sum())
  if not known:
    raise errors.DataError(f'{path}: no row has a number in column {config.property!r}')
  log(f'{path}: {config.property!r} known for {known} of {len(values)} crystals')
  return structures, values, report


def train_property(config: PropertyConfig, workdir: str | Path, resume: bool = False,
                   overwrite: bool = False, log: Callable = print,
                   files: dict[str, str] | None = None) -> dict:
  """Train `config` in `workdir`; returns `val_metrics.json`'s content:
  {val_mae, baseline_mae (predicting the training mean), ratio, step}."""
  config.validate()
  inputs = {'--train_data': config.train_data, '--val_data': config.val_data,
            '--cache_dir': config.cache_dir}
  loop_lib.check_workdir(workdir, resume, overwrite, inputs)
  train_structures, train_values, report = _load(config.train_data, config, log)
  val_structures, val_values, val_report = _load(config.val_data, config, log)
  known = train_values[np.isfinite(train_values)]
  if config.std == 0:
    config = dataclasses.replace(config, mean=float(known.mean()),
                                 std=float(known.std()) or 1.0)
  module = _module(config)
  prop = (config.property,)
  edges = data_lib.default_bucket_edges([len(s) for s in train_structures], 4)
  train_set = data_lib.BucketedDataset(train_structures, config.batch_size, edges,
                                       1, prop)
  loss_fn = get_loss_fn(module, config.mean, config.std, config.property)
  optimizer = state_lib.make_optimizer(config.optim, config.train_steps)
  step_fn = jax.jit(state_lib.make_train_step(loss_fn, optimizer, config.optim.ema_decay),
                    donate_argnums=0)
  rng = jax.random.PRNGKey(config.seed)
  example = batch_lib.to_device(train_set.batch_for_step(config.seed, 0))
  params = jax.jit(lambda r, b: module.init(r, b, _graph(b)))(rng, example)
  state = state_lib.initial_state(params, optimizer, jax.random.fold_in(rng, 1))
  predictor = Predictor(config, module, None)

  def evaluate(ema_params, step):
    pred = predict(dataclasses.replace(predictor, params=ema_params), val_structures,
                   batch_size=config.batch_size, progress=False)
    ok = np.isfinite(val_values)
    mae = float(np.mean(np.abs(pred[ok] - val_values[ok])))
    return {'loss': mae, 'mae': mae}

  loop = loop_lib.LoopConfig(
      train_steps=config.train_steps, log_every=config.log_every,
      eval_every=config.eval_every, checkpoint_every=config.checkpoint_every,
      keep_checkpoints=2, progress=config.progress, desc=f'train {config.property}',
      curve_keys=('loss', 'mae'))
  loop_lib.run(workdir, loop, state, step_fn,
               lambda step: batch_lib.to_device(train_set.batch_for_step(config.seed, step)),
               evaluate=evaluate, config_dict=config.to_dict(), resume=resume,
               overwrite=overwrite, log=log, inputs=inputs,
               files=dict(files or {}, **{'skipped_rows.json': _skipped(report, val_report)}))
  best = load_predictor(workdir)
  pred = predict(best, val_structures, batch_size=config.batch_size, progress=False)
  ok = np.isfinite(val_values)
  result = dict(property=config.property, val_data=config.val_data,
                num_val=int(ok.sum()),
                val_mae=float(np.mean(np.abs(pred[ok] - val_values[ok]))),
                baseline_mae=float(np.mean(np.abs(config.mean - val_values[ok]))))
  result['ratio'] = result['baseline_mae'] / max(result['val_mae'], 1e-12)
  io_lib.write_json_atomic(Path(workdir) / 'val_metrics.json', result)
  return result


def _skipped(*reports) -> str:
  from jaxcrystal.data import readers
  return readers.skip_reports_json([r for r in reports if r is not None])


def load_predictor(workdir: str | Path, which: str = 'best') -> Predictor:
  """The EMA parameters of a `train_property` run (no optimizer built)."""
  config = checkpoints.read_config(Path(workdir), PropertyConfig.from_dict,
                                   'a property run (--workdir of train_property.py)')
  module = _module(config)
  example = batch_lib.to_device(batch_lib.batch_from_atoms(
      [ase.Atoms('H', cell=np.eye(3) * 3, pbc=True)]))
  like = jax.eval_shape(lambda r: module.init(r, example, _graph(example)),
                        jax.random.PRNGKey(0))
  params, _ = checkpoints.restore_params(workdir, which, True, like)
  return Predictor(config, module, params)


# Prediction batches group structures whose atom counts round up to the same
# multiple of this: one compile per class.
SIZE_CLASS = 4


def predict(predictor: Predictor, structures: Sequence[ase.Atoms], *,
            batch_size: int = 256, progress: bool = True) -> np.ndarray:
  """`[S]` predicted property of each structure (its units; NaN where a
  structure has no finite cell or coordinates)."""
  out = np.full(len(structures), np.nan)
  usable = [i for i, s in enumerate(structures)
            if len(s) and np.isfinite(s.cell[:]).all() and np.isfinite(s.positions).all()
            and abs(np.linalg.det(s.cell[:])) > 1e-6]
  classes: dict[int, list[int]] = {}
  for i in usable:
    classes.setdefault(-(-len(structures[i]) // SIZE_CLASS), []).append(i)
  chunks = []  # (indices, budget): one budget per size class
  for size_class, members in sorted(classes.items()):
    size, max_n = min(batch_size, len(members)), size_class * SIZE_CLASS
    budget = batch_lib.Budget(size + 1, int(np.ceil((size * max_n + 1) / 8) * 8), max_n)
    chunks += [(members[k:k + size], budget) for k in range(0, len(members), size)]
  for chunk, budget in tqdm(chunks, desc='predicting', disable=not progress):
    batch = batch_lib.batch_from_atoms([structures[i] for i in chunk], budget)
    values = np.asarray(predictor.apply(predictor.params, batch_lib.to_device(batch)))
    out[chunk] = values[:len(chunk)]
  return out
