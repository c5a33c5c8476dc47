"""Extending the library without editing it (issues 15 and 31): a new
process, network, sampler and task are registered here, in the test file,
each with settings of its own, then trained and sampled with the library's
own loop, loss and sampling code. Also the checked neighbour-list contract
on the model path."""
import dataclasses
import json

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ase.build import bulk

from jaxcrystal import config_flags
from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import datasets
from jaxcrystal.data import io as io_lib
from jaxcrystal.generative import conditions as conditions_lib
from jaxcrystal.generative import flow
from jaxcrystal.generative import generate
from jaxcrystal.generative import request
from jaxcrystal.generative import losses
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import networks
from jaxcrystal.generative import processes
from jaxcrystal.generative import samplers
from jaxcrystal.generative import sampling
from jaxcrystal.generative import settings
from jaxcrystal.generative import tasks
from jaxcrystal.generative import train
from jaxcrystal.geometry import neighbors
from jaxcrystal.training import checkpoints
from jaxcrystal.training import loop as loop_lib
from jaxcrystal.training import state as state_lib



@dataclasses.dataclass(frozen=True)
class PriorScale(settings.Settings):
  """The toy process's own setting.

  Attributes:
    prior_scale: the prior's standard deviation (A).
  """
  prior_scale: float = 1.0

  def validate(self):
    if not self.prior_scale > 0:
      raise ValueError(f'prior_scale must be > 0, got {self.prior_scale}')


@flax.struct.dataclass
class LatticeFlow(flow.FlowProcess):
  """Straight-line flow for the lattice in continuous time t in [0, 1]:
  L_t = (1 - t) L_0 + t eps (t = 1 is the Gaussian prior, scaled by its
  setting); the target is the velocity toward the data, L_0 - eps (the
  flow processes' convention: samplers move x by (t - t_prev) u)."""
  prior_scale: float = flax.struct.field(pytree_node=False, default=1.0)
  per = 'graph'
  stream = processes.LATTICE_STREAM

  def clean(self, batch):
    return batch.lattice

  def prior(self, rng, template):
    return self.prior_scale * jax.random.normal(rng, template.lattice.shape,
                                                template.lattice.dtype)

  def noise(self, rng, batch, t):
    eps = self.prior_scale * jax.random.normal(rng, batch.lattice.shape,
                                               batch.lattice.dtype)
    s = t[:, None, None]
    return (1.0 - s) * batch.lattice + s * eps, batch.lattice - eps

  def write(self, batch, x):
    return batch.replace(lattice=jnp.where(batch.graph_mask[:, None, None], x,
                                           batch.lattice))


@dataclasses.dataclass(frozen=True)
class CellMLPSettings(settings.Settings):
  """The toy network's own setting.

  Attributes:
    width: its hidden width.
  """
  width: int = 64

  def validate(self):
    if self.width < 1:
      raise ValueError(f'width must be >= 1, got {self.width}')


class CellMLP(nn.Module):
  """Lattice velocity in the clean-estimate form of flow matching: an MLP of
  the noisy lattice, the time, the atom count and the encoded conditions
  estimates the clean lattice L0_hat, and the velocity is (L0_hat - L_t) / t
  (t floored at 0.05)."""
  width: int = 64
  conditions: tuple = ()

  @nn.compact
  def __call__(self, batch, times):
    lattice = batch.lattice
    parts = [lattice.reshape(-1, 9), times[:, None],
             jnp.log(jnp.maximum(batch.n_atoms, 1))[:, None]]
    if self.conditions:
      parts.append(conditions_lib.ConditionEmbedding(self.conditions, 8)(
          batch.conditions, batch.condition_mask, batch.num_graph_slots))
    x = jnp.concatenate(parts, -1)
    x = nn.silu(nn.Dense(self.width)(x))
    x = nn.silu(nn.Dense(self.width)(x))
    clean = nn.Dense(9)(x).reshape(-1, 3, 3)
    return (clean - lattice) / jnp.maximum(times, 0.05)[:, None, None]


class CellMLPScore:
  """Registry adapter: the library's one network call signature."""
  nearest_image = False

  def __init__(self, settings, variables, cutoff, conditions=()):
    assert variables == ('lattice',)
    self.module = CellMLP(settings.width, conditions)

  def init(self, rng, batch, times, graph, noisy):
    return self.module.init(rng, batch, times)

  def apply(self, params, batch, times, graph, noisy):
    out = self.module.apply(params, batch, times)
    return {'lattice': out * batch.graph_mask[:, None, None]}


@dataclasses.dataclass(frozen=True)
class ThresholdSettings(settings.Settings):
  """The toy condition encoder's own setting: where 'large' begins."""
  threshold: float = 0.0


class ThresholdEncoder(nn.Module):
  """A toy condition encoder: one learned vector for values above the
  threshold, another below, a third when unknown."""
  dim: int
  settings: ThresholdSettings

  @nn.compact
  def __call__(self, values, mask):
    table = self.param('table', nn.initializers.normal(1.0), (3, self.dim))
    index = jnp.where(mask, (values > self.settings.threshold).astype(jnp.int32), 2)
    return table[index]


@dataclasses.dataclass(frozen=True)
class TwoStageSettings(settings.Settings):
  """The toy sampler's own setting.

  Attributes:
    alpha: where the second velocity is taken, a fraction of the step
      (2/3: Ralston's method; 1/2: midpoint; 1: Heun).
  """
  alpha: float = 2 / 3

  def validate(self):
    if not 0 < self.alpha <= 1:
      raise ValueError(f'alpha must be in (0, 1], got {self.alpha}')


def two_stage_sampler(model, num_steps, settings, trajectory_every):
  """A new sampler in one function, written against the flow processes'
  interface (`velocity`, `advance`) and touching no process: explicit
  second-order Runge-Kutta, u = (1 - w) u(t) + w u(t - alpha h), w = 1/(2 alpha)."""
  grid = model.time.reverse_grid(num_steps)
  alpha, w = settings.alpha, 1 / (2 * settings.alpha)

  def velocities(params, template, xs, t):
    out, lost = sampling.network_outputs(model, params, template, xs, t)
    return {n: p.velocity(out[n], template) for n, p in model.processes.items()}, lost

  def advance(template, xs, us, t, t_to):
    return {n: p.advance(xs[n], us[n], t, t_to, template) for n, p in model.processes.items()}

  def step(params, template, state, tt):
    t, t_prev = tt
    h = t - t_prev
    u1, lost1 = velocities(params, template, state.xs, t)
    u2, lost2 = velocities(params, template, advance(template, state.xs, u1, t, t - alpha * h),
                           t - alpha * h)
    u = jax.tree.map(lambda a, b: (1 - w) * a + w * b, u1, u2)
    return state.replace(xs=advance(template, state.xs, u, t, t_prev),
                         overflow=jnp.maximum(state.overflow, jnp.maximum(lost1, lost2)))
  return sampling.make_sample(model, step, grid, trajectory_every)


if 'toy_lattice_flow' not in processes.PROCESSES:
  processes.register_process('toy_lattice_flow',
                             lambda s, num_steps: LatticeFlow(s.prior_scale), PriorScale())
  networks.register_network('toy_cell_mlp', CellMLPScore, CellMLPSettings())
  samplers.register_sampler('toy_two_stage', two_stage_sampler, 'flow',
                            lambda num_steps, settings: 2 * num_steps, TwoStageSettings())
  conditions_lib.register_condition('toy_threshold', ThresholdEncoder,
                                    ThresholdSettings())
  tasks.register_task('toy_cell_flow', tasks.Task(
      (('lattice', 'toy_lattice_flow'),), 'toy_cell_mlp', time='continuous'))


def test_a_registered_process_and_network_train_and_sample(tmp_path):
  """One crystal, 16 copies: the flow must carry every N(0, 1) prior draw to
  its lattice, through the library's loop, checkpoints, loader and sampler."""
  al = bulk('Al', 'fcc', a=4.05, cubic=True)
  data = tmp_path / 'al.extxyz'
  io_lib.write_extxyz(data, [al] * 16)
  config = train.TrainConfig(
      model=model_lib.ModelConfig(task='toy_cell_flow', num_steps=20),
      optim=state_lib.OptimConfig(learning_rate=3e-3, warmup_steps=10,
                                  schedule='constant', ema_decay=0.9),
      train_data=str(data), val_data=str(data), batch_size=16, num_buckets=1,
      train_steps=300, eval_every=150, checkpoint_every=150, log_every=10,
      progress=False)
  summary = train.train_and_evaluate(config, tmp_path / 'run', log=lambda *_: None)
  assert summary['final_step'] == 300 and summary['skipped_steps'] == 0
  records = [r for r in checkpoints.read_metrics(tmp_path / 'run' / 'metrics.jsonl')
             if r['split'] == 'train']
  first, last = records[0]['loss'], records[-1]['loss']
  assert last < 0.1 * first, (first, last)
  model, params, _, step = generate.load_run(tmp_path / 'run')
  assert isinstance(model.processes['lattice'], LatticeFlow) and step > 0
  for sampler in (samplers.SamplerConfig(),  # the flow default, euler
                  samplers.SamplerConfig(name='toy_two_stage', num_steps=10),
                  samplers.SamplerConfig('toy_two_stage', 10).with_settings(alpha=0.5)):
    samples, timing = generate.sample_structures(model, params, [al.numbers] * 8,
                                                 sampler=sampler, progress=False)
    assert timing['network_calls_per_structure'] == 20  # 20 Euler steps; 10 of two stages
    for sample in samples:
      np.testing.assert_allclose(np.abs(sample.cell[:]), al.cell[:], atol=0.2)
      np.testing.assert_array_equal(sample.numbers, al.numbers)  # species are given
  # untrained parameters leave the prior where it was: the test can fail
  fresh = model.init_params(jax.random.PRNGKey(0), batch_lib.to_device(
      batch_lib.batch_from_atoms([al])))
  untrained, _ = generate.sample_structures(model, fresh, [al.numbers] * 8,
                                            progress=False)
  assert all(np.abs(np.abs(s.cell[:]) - al.cell[:]).max() > 0.5 for s in untrained)
  # the sampler's own setting reaches it, and a bad one is one line
  cells = {alpha: generate.sample_structures(
      model, fresh, [al.numbers] * 2, progress=False,
      sampler=samplers.SamplerConfig('toy_two_stage', 4).with_settings(alpha=alpha))[0][0]
      .cell[:] for alpha in (0.5, 1.0)}
  assert np.abs(cells[0.5] - cells[1.0]).max() > 1e-4
  with pytest.raises(errors.ConfigError, match=r"^sampler 'toy_two_stage': alpha must be"):
    samplers.SamplerConfig('toy_two_stage').with_settings(alpha=0.0).resolve(model)
  with pytest.raises(errors.ConfigError, match=r"^sampler 'euler': unknown setting"):
    samplers.SamplerConfig().with_settings(alpha=0.5).resolve(model)
  assert (tmp_path / 'run' / 'training_curve.png').is_file()
  stored = json.loads((tmp_path / 'run' / 'config.json').read_text())['model']['processes']
  assert stored == [dict(variable='lattice', process='toy_lattice_flow',
                         settings=dict(prior_scale=1.0))]


def test_a_process_owns_its_settings_and_a_bad_one_is_one_line():
  """The toy process's setting reaches the process through the model
  config, round-trips through the stored form, and a bad value is refused
  naming the process, the variable and the field."""
  config = model_lib.ModelConfig(task='toy_cell_flow', num_steps=20)
  wide = config.with_process('lattice', prior_scale=3.0)
  model = model_lib.build(wide)
  assert model.processes['lattice'].prior_scale == 3.0
  assert model_lib.build(config).processes['lattice'].prior_scale == 1.0
  assert model_lib.ModelConfig.from_dict(wide.to_dict()).process_table() == \
      wide.process_table()
  draw = model.processes['lattice'].prior(jax.random.PRNGKey(0), batch_lib.to_device(
      batch_lib.batch_from_atoms([bulk('Al', 'fcc', a=4.05)] * 64)))
  assert 2.5 < float(np.std(np.asarray(draw)[:64])) < 3.5
  with pytest.raises(errors.ConfigError,
                     match=r"^process 'toy_lattice_flow' \(lattice\): prior_scale must be > 0"):
    config.with_process('lattice', prior_scale=-1.0)
  with pytest.raises(errors.ConfigError, match=r"unknown setting\(s\) \['prior_scal'\]"):
    config.with_process('lattice', prior_scal=2.0)
  bad = dataclasses.replace(config, processes=(('lattice', 'toy_lattice_flow',
                                                PriorScale(0.0)),))
  with pytest.raises(errors.ConfigError, match='prior_scale must be > 0'):
    model_lib.build(bad)


def test_the_toy_settings_are_command_line_flags_with_no_edit():
  """Registering a component is all it takes for its settings to be flags
  of the training scripts (`config_flags`), with the docstring's help."""
  values = flags.FlagValues()
  read = config_flags.define_train_config(flag_values=values, module='test')
  values(['prog', '--task=toy_cell_flow', '--num_steps=20',
          '--lattice.prior_scale=2.5', '--network.width=8'])
  config = read()
  assert config.model.process_table() == (('lattice', 'toy_lattice_flow',
                                           PriorScale(2.5)),)
  assert config.model.network_choice() == ('toy_cell_mlp', CellMLPSettings(8))
  assert 'standard deviation' in values['lattice.prior_scale'].help
  values(['prog', '--task=toy_cell_flow', '--lattice.prior_scale=-1'])
  with pytest.raises(errors.ConfigError, match=r'^--lattice\.prior_scale: process '
                     r"'toy_lattice_flow' \(lattice\): prior_scale must be > 0"):
    read()


def test_a_network_owns_its_settings_and_a_bad_one_is_one_line():
  config = model_lib.ModelConfig(task='toy_cell_flow', num_steps=20)
  batch = batch_lib.to_device(batch_lib.batch_from_atoms([bulk('Al', 'fcc', a=4.05)]))
  widths = {}
  for width in (64, 8):
    model = model_lib.build(config.with_network(width=width))
    params = model.init_params(jax.random.PRNGKey(0), batch)
    widths[width] = {leaf.shape[-1] for leaf in jax.tree_util.tree_leaves(params)}
  assert widths == {64: {64, 9}, 8: {8, 9}}
  stored = config.with_network(width=8).to_dict()['network']
  assert stored == dict(name='toy_cell_mlp', settings=dict(width=8))
  assert model_lib.ModelConfig.from_dict(config.with_network(width=8).to_dict()) \
      .network_choice() == ('toy_cell_mlp', CellMLPSettings(8))
  with pytest.raises(errors.ConfigError, match=r"^network 'toy_cell_mlp': width must be >= 1"):
    config.with_network(width=0)
  with pytest.raises(errors.ConfigError, match=r"network 'toy_cell_mlp': width must be "
                     r"like 64, got 'wide'"):
    config.with_network(width='wide')


def _radius_csp(capacity):
  return model_lib.ModelConfig(
      task='csp', num_steps=10, graph='radius', cutoff=5.0, max_image=2,
      edge_capacity_per_atom=capacity).with_network(hidden=16, num_layers=1, num_freqs=4,
                                                    time_dim=8)


def test_a_too_small_edge_capacity_stops_before_training(tmp_path):
  config = train.TrainConfig(model=_radius_csp(4), train_data='builtin',
                             batch_size=21, train_steps=5, progress=False)
  with pytest.raises(ValueError, match=r'builtin: the radius graph .* set it to at least \d+'):
    train.train_and_evaluate(config, tmp_path, log=lambda *_: None)


def test_an_edge_overflow_during_training_stops_the_loop(tmp_path):
  """Noise can exceed what the clean data needs: the next check (here the
  log step) stops the run naming the step and the reason, and the update is
  never checkpointed."""
  model = model_lib.build(_radius_csp(4))
  batch = batch_lib.to_device(batch_lib.batch_from_atoms(datasets.builtin_structures()))
  optimizer = state_lib.make_optimizer(state_lib.OptimConfig(), 10)
  state = state_lib.initial_state(model.init_params(jax.random.PRNGKey(0), batch),
                                  optimizer, jax.random.PRNGKey(1))
  step = jax.jit(state_lib.make_train_step(losses.get_loss_fn(model), optimizer, 0.9))
  loop = loop_lib.LoopConfig(train_steps=5, log_every=5, progress=False)
  with pytest.raises(neighbors.GraphOverflowError, match=r'training step 1: .*edge buffer'):
    loop_lib.run(tmp_path, loop, state, step, lambda k: batch, log=lambda *_: None)
  assert not (tmp_path / 'checkpoints').exists() or not any(
      (tmp_path / 'checkpoints').iterdir())


def test_the_sampler_returns_overflow_and_sampling_stops_on_it():
  model = model_lib.build(_radius_csp(4))
  real = datasets.builtin_structures()
  template = batch_lib.to_device(sampling.template_from_compositions(
      [s.numbers for s in real]))
  params = model.init_params(jax.random.PRNGKey(0), template)
  _, _, overflow = jax.jit(sampling.get_pc_sampler(model))(jax.random.PRNGKey(0),
                                                        params, template)
  assert np.asarray(overflow)[0] > 0
  with pytest.raises(neighbors.GraphOverflowError, match='sampling batch 0'):
    generate.sample_structures(model, params, [s.numbers for s in real],
                               progress=False)
  # with room for every edge only the other reason is left: this untrained
  # model shrinks cells below what 2 images cover, and that is reported too
  roomy = model_lib.build(_radius_csp(4000))
  _, _, rest = jax.jit(sampling.get_pc_sampler(roomy))(jax.random.PRNGKey(0), params,
                                                    template)
  edge_buffer, bins, too_thin = np.asarray(rest)
  assert edge_buffer == 0 and bins == 0 and too_thin > 0


def test_a_registered_condition_steers_training_and_sampling(tmp_path):
  """Two Al cells (a = 3.6 and 4.6 A), each with its edge as a property
  column: a model conditioned on it through the toy encoder (registered
  here, with its own threshold) trains through the real loop and samples
  the cell it is asked for, guided too; trained with condition dropout, the
  same model told nothing (unknown) samples both."""
  small = bulk('Al', 'fcc', a=3.6, cubic=True)
  large = bulk('Al', 'fcc', a=4.6, cubic=True)
  small.info['edge'], large.info['edge'] = 3.6, 4.6
  data = tmp_path / 'al.extxyz'
  io_lib.write_extxyz(data, [small, large] * 8)
  model_config = model_lib.ModelConfig(task='toy_cell_flow', num_steps=20,
                                       condition_dropout=0.25) \
      .with_condition('edge', 'toy_threshold', threshold=4.0)
  config = train.TrainConfig(
      model=model_config,
      optim=state_lib.OptimConfig(learning_rate=3e-3, warmup_steps=10,
                                  schedule='constant', ema_decay=0.9),
      train_data=str(data), batch_size=16, num_buckets=1, train_steps=400,
      checkpoint_every=400, log_every=20, progress=False)
  logged = []
  train.train_and_evaluate(config, tmp_path / 'run', log=logged.append)
  assert any("'edge' known for 16 of 16 crystals" in str(m) for m in logged), logged
  stored = json.loads((tmp_path / 'run' / 'config.json').read_text())['model']
  assert stored['conditions'] == [dict(property='edge', encoder='toy_threshold',
                                       settings=dict(threshold=4.0))]
  model, params, _, _ = generate.load_run(tmp_path / 'run')
  def edges_of(edge, guidance):
    samples, _ = generate.sample_structures(model, params, [small.numbers] * 8,
                                            conditions={'edge': [edge] * 8},
                                            guidance=guidance, progress=False)
    return np.array([np.abs(np.diag(s.cell[:])) for s in samples])
  for edge, away in ((3.6, -1), (4.6, 1)):
    conditional = edges_of(edge, 0.0)
    np.testing.assert_allclose(conditional, edge, atol=0.25)
    # Guidance extrapolates from the unconditional mixture past the
    # conditional cell: away from the other one.
    guided = edges_of(edge, 2.0)
    assert away * (guided.mean() - conditional.mean()) > 0.2
    # A guided model keeps its weight when no guidance is passed.
    kept, _ = generate.sample_structures(model.with_guidance(2.0), params,
                                         [small.numbers] * 8,
                                         conditions={'edge': [edge] * 8}, progress=False)
    np.testing.assert_allclose([np.abs(np.diag(s.cell[:])) for s in kept], guided)
  told_nothing = request.request_conditions(model.config, {}, 16)
  samples, _ = generate.sample_structures(model, params, [small.numbers] * 16,
                                          conditions=told_nothing, progress=False)
  edges = np.array([np.abs(np.diag(s.cell[:])).mean() for s in samples])
  assert (edges < 4.1).any() and (edges > 4.1).any(), edges
  # Conditions not given at all are unknown: the same samples as told nothing.
  implicit, _ = generate.sample_structures(model, params, [small.numbers] * 16,
                                           progress=False)
  for a, b in zip(implicit, samples):
    np.testing.assert_array_equal(a.cell[:], b.cell[:])


def test_conditions_that_cannot_be_met_are_one_line(tmp_path):
  al = bulk('Al', 'fcc', a=4.05, cubic=True)
  data = tmp_path / 'al.extxyz'
  io_lib.write_extxyz(data, [al] * 4)
  config = train.TrainConfig(
      model=model_lib.ModelConfig(task='toy_cell_flow', num_steps=20)
      .with_condition('band_gap', 'scalar'),
      train_data=str(data), batch_size=4, num_buckets=1, train_steps=2, progress=False)
  with pytest.raises(errors.DataError, match=r"al\.extxyz: the model is conditioned "
                     r"on 'band_gap', but no row has a number in that column"):
    train.train_and_evaluate(config, tmp_path / 'run', log=lambda *_: None)
  egnn = model_lib.ModelConfig(task='cartesian', graph='radius').with_condition(
      'band_gap', 'scalar')
  with pytest.raises(errors.ConfigError, match="network 'cartesian_egnn' takes no "
                     "conditions"):
    model_lib.build(egnn)
  with pytest.raises(errors.ConfigError, match=r"condition 'band_gap' \(scalar\): "
                     "std must be >= 0"):
    egnn.with_condition('band_gap', 'scalar', std=-1.0)
