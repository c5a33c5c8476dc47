import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.geometry import find_mic

from jaxcrystal.generative import processes as forward
from jaxcrystal.generative import wrapped_normal


@pytest.mark.parametrize('sigma', [0.005, 0.05, 0.3, 0.5, 1.0])
def test_wrapped_normal_score_is_gradient_of_log_density(sigma):
  x = jnp.linspace(-0.5, 1.5, 101)
  grad = jax.vmap(jax.grad(lambda v: wrapped_normal.log_density(v, sigma)))(x)
  np.testing.assert_allclose(wrapped_normal.score(x, sigma), grad, rtol=1e-4,
                             atol=1e-3)
  # the density integrates to one over a period
  grid = np.linspace(0, 1, 20001)
  dens = np.exp(np.asarray(wrapped_normal.log_density(jnp.asarray(grid), sigma)))
  np.testing.assert_allclose(np.trapezoid(dens, grid), 1.0, rtol=1e-4)
  assert np.abs(np.asarray(grad)).max() > 0


def test_registry():
  assert set(forward.PROCESSES) >= {'lattice_ddpm', 'frac_wrapped_normal',
                                    'cart_minimum_image', 'types_ddpm'}
  with pytest.raises(ValueError, match='unknown process'):
    forward.get_process('nope', None, 10)


@pytest.mark.parametrize('t', [10, 300, 700, 1000])
def test_lattice_ddpm_statistics(keys, t):
  proc = forward.get_process('lattice_ddpm', forward.DDPMSettings(), 1000)
  lat0 = jnp.broadcast_to(jnp.array([[4.0, 0, 0], [1.0, 5.0, 0], [0.5, 0.5, 6.0]]),
                          (20000, 3, 3))
  fn = jax.jit(proc.diffuse)
  lat_t, eps = fn(next(keys), lat0, jnp.full((20000,), t))
  chex.assert_shape([lat_t, eps], (20000, 3, 3))
  ab = float(proc.schedule.alpha_bars[t])
  se = np.sqrt(1 - ab) / np.sqrt(20000) * 5
  np.testing.assert_allclose(lat_t.mean(0), np.sqrt(ab) * lat0[0], atol=se)
  np.testing.assert_allclose(lat_t.std(0), np.sqrt(1 - ab), rtol=0.05)
  np.testing.assert_allclose(lat_t, np.sqrt(ab) * lat0 + np.sqrt(1 - ab) * eps, atol=1e-5)
  # jit == no jit
  np.testing.assert_allclose(proc.diffuse(jax.random.PRNGKey(1), lat0[:4], jnp.full((4,), t))[0],
                             fn(jax.random.PRNGKey(1), lat0[:4], jnp.full((4,), t))[0],
                             atol=1e-6)


@pytest.mark.parametrize('t', [1, 400, 800, 1000])
def test_frac_wrapped_normal_statistics(keys, t):
  proc = forward.get_process('frac_wrapped_normal', forward.SigmaSettings(), 1000)
  n = 50000
  frac0 = jnp.full((n, 3), 0.3)
  tt = jnp.full((n,), t)
  frac_t, target = jax.jit(proc.diffuse)(next(keys), frac0, tt)
  assert float(frac_t.min()) >= 0 and float(frac_t.max()) < 1
  sigma = float(proc.schedule.sigmas[t])
  # circular statistics against theory: E[exp(2 pi i (F_t - F_0))] = exp(-2 pi^2 sigma^2)
  phase = np.exp(2j * np.pi * (np.asarray(frac_t) - 0.3))
  np.testing.assert_allclose(np.abs(phase.mean()), np.exp(-2 * np.pi**2 * sigma**2),
                             atol=0.01)
  # the normalised target has unit second moment at every t
  np.testing.assert_allclose(float(jnp.mean(target**2)), 1.0, atol=0.03)
  score = proc.score_from_prediction(target, tt)
  np.testing.assert_allclose(score, wrapped_normal.score(frac_t - frac0, sigma), rtol=1e-4,
                             atol=1e-3)


def test_cartesian_minimum_image_process(keys):
  proc = forward.get_process('cart_minimum_image', forward.SigmaSettings(0.01, 1.0), 100)
  n = 20000
  lattice = jnp.broadcast_to(jnp.array([[5.0, 0, 0], [2.0, 5.0, 0], [1.0, 1.0, 6.0]]),
                             (n, 3, 3))
  cart0 = jnp.full((n, 3), 1.0)
  for t, check_gaussian in ((10, True), (100, False)):
    cart_t, target = jax.jit(proc.diffuse)(next(keys), cart0, jnp.full((n,), t), lattice)
    frac_t = np.asarray(jnp.einsum('ni,nij->nj', cart_t, jnp.linalg.inv(lattice)))
    assert frac_t.min() > -1e-5 and frac_t.max() < 1 + 1e-5  # wrapped into the cell
    sigma = float(proc.schedule.sigmas[t])
    if check_gaussian:  # sigma << cell: the minimum image undoes wrapping exactly
      np.testing.assert_allclose(np.asarray(target).mean(0), 0, atol=0.05)
      np.testing.assert_allclose(np.asarray(target).std(0), 1, atol=0.03)
    # target is always the shortest image of the displacement (ASE's find_mic)
    disp = np.asarray(target[:500], np.float64) * sigma
    raw = np.asarray(cart_t[:500] - cart0[:500], np.float64)
    mic, _ = find_mic(raw, np.asarray(lattice[0], np.float64))
    np.testing.assert_allclose(disp, mic, atol=1e-4)


@pytest.mark.parametrize('t', [50, 500, 1000])
def test_types_ddpm_statistics(keys, t):
  proc = forward.get_process('types_ddpm', forward.DDPMSettings(), 1000)
  species = jnp.full((30000,), 26)
  x_t, eps = jax.jit(proc.diffuse)(next(keys), species, jnp.full((30000,), t))
  chex.assert_shape(x_t, (30000, 100))
  ab = float(proc.schedule.alpha_bars[t])
  np.testing.assert_allclose(x_t[:, 25].mean(), np.sqrt(ab), atol=0.03)
  np.testing.assert_allclose(x_t[:, 0].mean(), 0.0, atol=0.03)
  np.testing.assert_allclose(x_t[:, 25].std(), np.sqrt(1 - ab), rtol=0.05)
