"""Graph Laplacians, the exact Laplacian-drift transition, the epsilon
network, losses, the PC sampler (with an exact oracle score) and training."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from ase.build import bulk
from ase.collections import g2

from jaxcrystal.graph_diffusion import model as gd
from jaxcrystal.graph_diffusion import laplacian as gl
from jaxcrystal.graph_diffusion import tasks as graph_tasks
from jaxcrystal.generative import schedules


def test_laplacians_of_grids_molecules_and_crystals():
  for shape, degrees in (((5,), [1, 2]), ((3, 4), [2, 3, 4]), ((3, 3, 3), [3, 4, 5, 6])):
    lap = gl.grid(shape)
    gl.check_laplacian(lap)
    assert sorted(set(np.diag(lap).astype(int))) == degrees
  assert set(np.diag(gl.grid((4, 4), periodic=True))) == {4.0}
  assert sp.issparse(gl.grid((50, 50)))  # 2500 nodes: sparse
  benzene = g2['C6H6']
  lap = gl.molecule(benzene)
  gl.check_laplacian(lap)
  degree = dict(zip(benzene.get_chemical_symbols(), np.diag(lap)))
  assert degree == {'C': 3.0, 'H': 1.0}
  cu = bulk('Cu', 'fcc', a=3.61, cubic=True)
  lap = gl.crystal(cu, 2.7)  # each atom's 12 neighbours are images of the other 3
  assert np.allclose(np.diag(lap), 3) and np.allclose(lap.sum(1), 0)
  with pytest.raises(ValueError, match='not symmetric'):
    gl.check_laplacian(np.array([[1.0, -1.0], [0.0, 0.0]]))


def _euler_maruyama(process, lap, s0, t_end, paths, steps, rng):
  x = np.tile(s0, (paths, 1))
  dt = t_end / steps
  for k in range(steps):
    beta = float(process.schedule.beta(k * dt))
    drift = -0.5 * process.vp * beta * x - process.gamma * x @ lap.T
    x = x + drift * dt + np.sqrt(beta * dt) * rng.normal(size=x.shape)
  return x


@pytest.mark.parametrize('vp', [True, False])
def test_exact_transition_matches_euler_maruyama(vp):
  lap = gl.grid((4,))
  process = gd.GraphProcess.from_laplacian(lap, gamma=2.0, variance_preserving=vp)
  s0 = np.array([1.0, -0.5, 2.0, 0.3])
  paths = 8000
  x = _euler_maruyama(process, lap, s0, 0.3, paths, 600, np.random.default_rng(0))
  mean, cov = np.asarray(process.phi(0.3)) @ s0, np.asarray(process.sigma(0.3))
  std_err = np.sqrt(np.diag(cov) / paths)
  assert np.all(np.abs(x.mean(0) - mean) < 5 * std_err + 2e-3)  # MC + time-step error
  np.testing.assert_allclose(np.cov(x.T), cov, atol=5 * np.sqrt(2 / paths) * cov.max())
  assert np.abs(cov - np.diag(np.diag(cov))).max() > 0.01  # the graph couples nodes


def test_zero_gamma_is_plain_ddpm_and_long_times_are_stable():
  lap = gl.grid((3, 3))
  plain = gd.GraphProcess.from_laplacian(lap, gamma=0.0)
  for t in (0.05, 0.5, 1.0):
    ab = float(schedules.linear_alpha_bar(t))
    np.testing.assert_allclose(plain.phi(t), np.sqrt(ab) * np.eye(9), atol=1e-6)
    np.testing.assert_allclose(plain.sigma(t), (1 - ab) * np.eye(9), atol=1e-6)
  stiff = gd.GraphProcess.from_laplacian(lap, gamma=500.0, variance_preserving=False)
  v, m = np.asarray(stiff.var_coef(1.0)), np.asarray(stiff.mean_coef(1.0))
  assert np.all(np.isfinite(v)) and np.all(v >= 0) and np.all(np.isfinite(m))
  # The constant mode (eigenvalue 0) keeps its signal and gathers all noise.
  assert m[0] == pytest.approx(1.0) and v[0] == pytest.approx(stiff.schedule.integral(1.0),
                                                               rel=1e-5)
  # A stiff mode relaxes to beta / (2 gamma lam).
  beta1 = stiff.schedule.beta(1.0)
  assert v[-1] == pytest.approx(beta1 / (2 * 500.0 * float(stiff.eigvals[-1])), rel=0.05)


def test_batched_noising_statistics(keys):
  process = gd.GraphProcess.from_laplacian(gl.grid((3,)), gamma=1.0)
  s0 = jnp.tile(jnp.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-2.0, 1.0, 0.0]]),
                (4000, 1, 1))
  t = jnp.full((4000,), 0.2)
  noisy, eps = process.noise(next(keys), s0, t)
  chex_mean = np.asarray(noisy).mean(0)
  np.testing.assert_allclose(chex_mean, np.asarray(process.phi(0.2)) @ np.asarray(s0[0]),
                             atol=0.05)
  assert np.asarray(eps).std() == pytest.approx(1.0, abs=0.03)


def _model_and_params(lap, keys):
  process = gd.GraphProcess.from_laplacian(lap)
  senders, receivers = (jnp.asarray(x) for x in gl.edges(lap))
  net = gd.GraphEpsilonNet(hidden=16, num_layers=2)
  pe = gd.laplacian_positional_encoding(process)
  x = jax.random.normal(next(keys), (2, lap.shape[0], 3))
  params = net.init(next(keys), x, jnp.array([0.1, 0.9]), senders, receivers, pe)
  return process, net, params, senders, receivers, pe, x


def test_network_and_losses(keys):
  lap = gl.grid((3, 3))
  process, net, params, s, r, pe, x = _model_and_params(lap, keys)
  out = net.apply(params, x, jnp.array([0.1, 0.9]), s, r, pe)
  assert out.shape == x.shape and jnp.abs(out).max() > 0
  jitted = jax.jit(net.apply)(params, x, jnp.array([0.1, 0.9]), s, r, pe)
  np.testing.assert_allclose(out, jitted, atol=1e-5)
  other_t = net.apply(params, x, jnp.array([0.5, 0.5]), s, r, pe)
  assert not np.allclose(out, other_t)  # the time embedding matters
  config = gd.LossConfig('snr', energy=1.0, smoothness=1.0, alignment=1.0)
  loss_fn = gd.get_loss_fn(process, net, s, r, config, lap, pe)
  loss, aux = loss_fn(next(keys), params, x)
  assert np.isfinite(loss) and set(aux) >= {'eps_mse', 'energy', 'smoothness', 'alignment'}
  plain, _ = gd.get_loss_fn(process, net, s, r, gd.LossConfig(), lap, pe)(
      jax.random.PRNGKey(0), params, x)
  assert float(plain) > 0
  with pytest.raises(ValueError, match='time_weighting'):
    gd.get_loss_fn(process, net, s, r, gd.LossConfig('bad'))


class _OracleNet:
  """The exact noise predictor of Gaussian data with covariance diag(c) in
  the Laplacian eigenbasis (the built-in tasks' reference distribution)."""
  def __init__(self, process, c):
    self.process, self.c = process, c

  def apply(self, params, x, t, senders, receivers, node_features=None):
    p = self.process
    m, v = p.mean_coef(t)[..., None], p.var_coef(t)[..., None]
    return p.from_eigen(jnp.sqrt(v) * p.to_eigen(x) / (m**2 * self.c[:, None] + v))


def test_sampler_with_exact_score_reproduces_the_data_and_inpaints(keys):
  task = graph_tasks.make_task(graph_tasks.GraphTrainConfig(grid_shape=(4, 4)))
  process = gd.GraphProcess.from_laplacian(task.laplacian, gamma=1.0)
  oracle = _OracleNet(process, jnp.exp(-2 * task.smoothing * process.eigvals))
  s, r = (jnp.asarray(x) for x in gl.edges(task.laplacian))
  sample = jax.jit(gd.get_sampler(process, oracle, s, r, num_steps=500),
                   static_argnums=2)
  x = np.asarray(sample(next(keys), None, 400))
  reference = task.sample(np.random.default_rng(0), 400)
  result = graph_tasks.compare(x, reference, task.laplacian)
  floor = graph_tasks.compare(task.sample(np.random.default_rng(1), 400), reference,
                              task.laplacian)
  assert result['covariance_mse'] < 5 * floor['covariance_mse']
  assert result['smoothness'] == pytest.approx(result['reference_smoothness'], rel=0.2)
  # Inpainting: half the nodes fixed; they are kept exactly, and the free
  # nodes follow them (smooth fields: neighbours agree).
  known = jnp.asarray(reference[0])
  mask = jnp.arange(16) % 2 == 0
  filled = np.asarray(sample(next(keys), None, 50, known, mask))
  np.testing.assert_allclose(filled[:, np.asarray(mask)],
                             np.broadcast_to(reference[0][np.asarray(mask)], (50, 8, 3)))
  free = ~np.asarray(mask)
  conditioned = np.mean((filled[:, free] - reference[0][free]) ** 2)
  unconditioned = np.mean((x[:50, free] - reference[0][free]) ** 2)
  assert conditioned < 0.6 * unconditioned


def test_train_load_and_sample_end_to_end(tmp_path):
  config = graph_tasks.GraphTrainConfig(grid_shape=(3, 3), num_train=64, hidden=16,
                                        num_layers=1, batch_size=16, train_steps=100,
                                        progress=False)
  graph_tasks.train_graph_diffusion(config, tmp_path)
  with pytest.raises(FileExistsError):
    graph_tasks.train_graph_diffusion(config, tmp_path)
  loaded, gm, params = graph_tasks.load(tmp_path)
  assert loaded == config
  x = jax.jit(gm.sampler(20), static_argnums=2)(jax.random.PRNGKey(0), params, 4)
  assert x.shape == (4, 9, 3) and np.all(np.isfinite(x))
  rng = np.random.default_rng(0)
  train = gm.task.sample(rng, 32)
  for name, fn in graph_tasks.BASELINES.items():
    assert fn(rng, train, 5).shape == (5, 9, 3), name
  assert (tmp_path / 'training_curve.png').stat().st_size > 1000
