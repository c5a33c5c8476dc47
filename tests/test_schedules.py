import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrystal.generative import schedules
from jaxcrystal.generative import wrapped_normal


@pytest.mark.parametrize('name', ['linear', 'cosine', 'sigmoid'])
def test_beta_schedule_consistency(name):
  s = schedules.make_beta_schedule(name, 1000)
  chex.assert_shape([s.betas, s.alphas, s.alpha_bars, s.posterior_variance], (1001,))
  ab = np.asarray(s.alpha_bars, np.float64)
  assert ab[0] == 1.0 and ab[-1] < 0.01
  assert np.all(np.diff(ab) < 0)
  np.testing.assert_allclose(ab, np.cumprod(np.asarray(s.alphas, np.float64)), rtol=1e-4)
  snr = np.asarray(s.snr())
  assert np.all(np.diff(snr[1:]) < 0)
  # continuous time agrees with the discrete steps (linear up to discretisation)
  t = np.linspace(0, 1, 1001)
  cont = np.asarray(s.alpha_bar_continuous(jnp.asarray(t)))
  np.testing.assert_allclose(cont[1:-1], ab[1:-1], atol=0.01 if name == 'linear' else 1e-4)


def test_cosine_matches_nichol_dhariwal_formula():
  s = schedules.make_beta_schedule('cosine', 100)
  t = np.arange(101) / 100
  f = np.cos((t + 0.008) / 1.008 * np.pi / 2)**2
  np.testing.assert_allclose(s.alpha_bars[1:90], (f / f[0])[1:90], rtol=1e-4)


def test_unknown_schedule_name():
  with pytest.raises(ValueError, match='unknown beta schedule'):
    schedules.make_beta_schedule('cubic')


def test_sigma_schedule_geometric_and_norms():
  s = schedules.make_sigma_schedule(1000, 0.005, 0.5)
  sig = np.asarray(s.sigmas)
  assert sig[0] == 0
  np.testing.assert_allclose(sig[1], 0.005, rtol=1e-5)
  np.testing.assert_allclose(sig[-1], 0.5, rtol=1e-5)
  ratios = sig[2:] / sig[1:-1]
  np.testing.assert_allclose(ratios, ratios[0], rtol=1e-4)
  norms = np.asarray(s.score_norms)
  # small sigma: the wrapped normal is a normal, E[score^2] = 1 / sigma^2
  np.testing.assert_allclose(norms[1] * sig[1]**2, 1.0, rtol=1e-3)
  # large sigma: wrapping makes the density flatter, the score smaller
  assert norms[-1] * sig[-1]**2 < 0.5


def test_score_norm_matches_monte_carlo(keys):
  for sigma in (0.01, 0.1, 0.3, 0.5):
    x = sigma * jax.random.normal(next(keys), (400000,))
    mc = float(jnp.mean(wrapped_normal.score(x, sigma)**2))
    quad = float(wrapped_normal.score_norm(np.array([sigma]))[0])
    assert abs(mc - quad) / quad < 0.02, (sigma, mc, quad)


def test_score_norm_of_many_sigmas_equals_each_alone():
  """Computed in chunks for speed, each sigma's value is bit for bit the
  one it has alone (the training loss normaliser must not depend on how
  many sigmas a schedule has)."""
  sigmas = np.exp(np.linspace(np.log(0.005), np.log(0.5), 37))
  together = wrapped_normal.score_norm(sigmas)
  alone = np.concatenate([wrapped_normal.score_norm(sigmas[i:i + 1]) for i in range(37)])
  np.testing.assert_array_equal(together, alone)


def test_time_power_keeps_the_variable_cleaner_early_and_reaches_the_prior():
  plain = schedules.make_beta_schedule('cosine', 1000)
  late = schedules.make_beta_schedule('cosine', 1000, time_power=2.0)
  ab, ab_late = np.asarray(plain.alpha_bars), np.asarray(late.alpha_bars)
  # step t of the warped schedule is step T (t/T)^2 of the plain one
  np.testing.assert_allclose(ab_late[100], ab[10], rtol=1e-5)
  np.testing.assert_allclose(ab_late[500], ab[250], rtol=1e-5)
  assert np.all(ab_late[1:-1] > ab[1:-1]) and ab_late[-1] < 0.01
  # the continuous closed form follows the warp too
  t = np.linspace(0, 1, 1001)
  np.testing.assert_allclose(np.asarray(late.alpha_bar_continuous(jnp.asarray(t)))[1:-1],
                             ab_late[1:-1], atol=1e-4)
  with pytest.raises(ValueError, match='time_power'):
    schedules.make_beta_schedule('linear', 1000, time_power=2.0)
  with pytest.raises(ValueError, match='time_power'):
    schedules.make_beta_schedule('cosine', 1000, time_power=0.0)
