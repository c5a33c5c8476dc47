"""Built-in graph-diffusion tasks, training, baselines and their comparison.

Tasks: smooth random 3D vector fields on a 2D grid (`grid`, 5 x 5 by
default) and smooth displacement fields (Angstrom) on a molecule's bond graph
(`molecule`, benzene by default). Both draw S = exp(-tau L) W / norm with
white noise W `[n, 3]`, so the reference distribution is known exactly.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from jaxcrystal.training import checkpoints
from jaxcrystal.graph_diffusion import model as gd
from jaxcrystal.graph_diffusion import laplacian as gl
from jaxcrystal.training import loop as loop_lib
from jaxcrystal.training import state as state_lib


@dataclasses.dataclass(frozen=True)
class GraphTrainConfig:
  task: str = 'grid'               # 'grid' or 'molecule'
  grid_shape: tuple[int, ...] = (5, 5)
  molecule: str = 'C6H6'           # a name in ASE's g2 collection
  smoothing: float = 1.0           # tau of exp(-tau L)
  num_train: int = 2000
  gamma: float = 1.0
  variance_preserving: bool = True
  hidden: int = 64
  num_layers: int = 3
  loss: gd.LossConfig = gd.LossConfig()
  batch_size: int = 64
  train_steps: int = 3000
  learning_rate: float = 2e-3
  ema_decay: float = 0.995
  sample_steps: int = 500
  seed: int = 0
  progress: bool = True

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> 'GraphTrainConfig':
    d = dict(d)
    d['loss'] = gd.LossConfig(**d['loss'])
    d['grid_shape'] = tuple(d['grid_shape'])
    return cls(**d)


@dataclasses.dataclass
class GraphTask:
  name: str
  laplacian: np.ndarray
  smoothing: float
  scale: float

  @property
  def num_nodes(self) -> int:
    return self.laplacian.shape[0]

  def sample(self, rng: np.random.Generator, num: int) -> np.ndarray:
    """Reference signals `[num, n, 3]`: exp(-tau L) W, times `scale` (the
    model works on signals divided by `scale`, of order one)."""
    smooth = scipy.linalg.expm(-self.smoothing * self.laplacian)
    white = rng.normal(size=(num, self.num_nodes, 3))
    return (self.scale * np.einsum('nm,bmd->bnd', smooth, white)).astype(np.float32)


def make_task(config: GraphTrainConfig) -> GraphTask:
  if config.task == 'grid':
    return GraphTask(f'grid {config.grid_shape}', gl.grid(config.grid_shape, sparse=False),
                     config.smoothing, 1.0)
  if config.task == 'molecule':
    from ase.collections import g2
    if config.molecule not in g2.names:
      raise ValueError(f'molecule {config.molecule!r} is not in ASE g2')
    lap = gl.molecule(g2[config.molecule], sparse=False)
    return GraphTask(f'{config.molecule} bond graph', lap, config.smoothing, 0.1)
  raise ValueError(f"task must be 'grid' or 'molecule', got {config.task!r}")


@dataclasses.dataclass
class GraphModel:
  """Everything a run's model needs besides its parameters."""
  task: GraphTask
  process: gd.GraphProcess
  net: gd.GraphEpsilonNet
  senders: jax.Array
  receivers: jax.Array
  node_features: jax.Array   # Laplacian positional encoding [n, 8]

  def loss_fn(self, config: GraphTrainConfig):
    return gd.get_loss_fn(self.process, self.net, self.senders, self.receivers,
                          config.loss, self.task.laplacian, self.node_features)

  def sampler(self, num_steps: int, corrector_steps: int = 1):
    """`sample(rng, params, num) -> [num, n, 3]` in the task's units."""
    inner = gd.get_sampler(self.process, self.net, self.senders, self.receivers,
                           num_steps, corrector_steps, node_features=self.node_features)
    scale = self.task.scale

    def sample(rng, params, num_samples, known=None, known_mask=None):
      known = None if known is None else known / scale
      return scale * inner(rng, params, num_samples, known, known_mask)
    return sample


def build(config: GraphTrainConfig) -> GraphModel:
  task = make_task(config)
  process = gd.GraphProcess.from_laplacian(task.laplacian, config.gamma,
                                           config.variance_preserving)
  senders, receivers = gl.edges(task.laplacian)
  return GraphModel(task, process, gd.GraphEpsilonNet(config.hidden, config.num_layers),
                    jnp.asarray(senders), jnp.asarray(receivers),
                    gd.laplacian_positional_encoding(process))


def _state(config, gm: GraphModel, optimizer):
  rng = jax.random.PRNGKey(config.seed)
  return state_lib.initial_state(_init(config, gm, rng), optimizer,
                                 jax.random.fold_in(rng, 1))


def _init(config, gm: GraphModel, rng):
  x = jnp.zeros((1, gm.process.num_nodes, 3))
  return gm.net.init(rng, x, jnp.zeros(1), gm.senders, gm.receivers, gm.node_features)


def train_graph_diffusion(config: GraphTrainConfig, workdir: str | Path,
                          resume: bool = False) -> dict:
  """Train on `num_train` reference signals with the training kit; writes
  config.json, metrics.jsonl, training_curve.png and a checkpoint into
  `workdir`. Returns the loop's summary."""
  gm = build(config)
  data = gm.task.sample(np.random.default_rng(config.seed), config.num_train)
  optimizer = state_lib.make_optimizer(
      state_lib.OptimConfig(learning_rate=config.learning_rate,
                            ema_decay=config.ema_decay), config.train_steps)
  step_fn = jax.jit(state_lib.make_train_step(gm.loss_fn(config), optimizer,
                                              config.ema_decay))
  batch_for_step = loop_lib.replayed_draws(config.seed + 1, lambda r: jnp.asarray(
      data[r.choice(len(data), config.batch_size, replace=False)] / gm.task.scale))
  loop = loop_lib.LoopConfig(train_steps=config.train_steps, log_every=50,
                             keep_checkpoints=1, progress=config.progress,
                             desc='train graph diffusion', curve_keys=('loss',))
  _, summary = loop_lib.run(workdir, loop, _state(config, gm, optimizer), step_fn,
                            batch_for_step, config_dict=config.to_dict(),
                            resume=resume, log=lambda *_: None)
  return summary


def load(workdir: str | Path):
  """(config, GraphModel, EMA params) of a run (no optimizer built)."""
  workdir = Path(workdir)
  config = checkpoints.read_config(workdir, GraphTrainConfig.from_dict,
                                  'a train_graph_diffusion.py workdir')
  gm = build(config)
  like = jax.eval_shape(lambda r: _init(config, gm, r), jax.random.PRNGKey(0))
  params, _ = checkpoints.restore_params(workdir, 'latest', True, like)
  return config, gm, params


# ----------------------------------------------------------------- comparison

def statistics(signals: np.ndarray, laplacian: np.ndarray) -> dict[str, np.ndarray]:
  """Per-node mean and variance `[n, 3]`, neighbour covariance `[n, n]`
  (channel-averaged second moments) and smoothness `[]` (mean |L S|^2)."""
  s = np.asarray(signals, np.float64)
  second = np.einsum('bnd,bmd->nm', s, s) / (len(s) * 3)
  smooth = np.mean(np.einsum('nm,bmd->bnd', laplacian, s) ** 2)
  return dict(mean=s.mean(0), variance=s.var(0), covariance=second, smoothness=smooth)


def compare(signals: np.ndarray, reference: np.ndarray, laplacian: np.ndarray) -> dict:
  """Distribution match: MSE of each statistic against the reference's."""
  got, want = statistics(signals, laplacian), statistics(reference, laplacian)
  out = {f'{k}_mse': float(np.mean((got[k] - want[k]) ** 2))
         for k in ('mean', 'variance', 'covariance')}
  out.update(smoothness=float(got['smoothness']),
             reference_smoothness=float(want['smoothness']))
  return out


def linear_interpolation(rng, train, num):
  """Convex combinations of random pairs of training signals."""
  a = train[rng.integers(len(train), size=num)]
  b = train[rng.integers(len(train), size=num)]
  w = rng.uniform(size=(num, 1, 1))
  return (w * a + (1 - w) * b).astype(np.float32)


def uniform_random(rng, train, num):
  """Uniform in the per-node, per-channel training range."""
  return rng.uniform(train.min(0), train.max(0),
                     size=(num,) + train.shape[1:]).astype(np.float32)


def independent_gaussian(rng, train, num):
  """Independent Gaussians with each node and channel's training mean and std."""
  return (train.mean(0) + train.std(0) * rng.normal(size=(num,) + train.shape[1:])
          ).astype(np.float32)


BASELINES = {'linear interpolation': linear_interpolation,
             'uniform random': uniform_random, 'Gaussian': independent_gaussian}
