"""Masked (absorbing-state D3PM) atom types (issue 33): noising statistics,
the cross-entropy, the reverse jump against its exact rates, and the
process inside every sampler family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import datasets
from jaxcrystal.generative import discrete
from jaxcrystal.generative import losses
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import samplers

TINY_NETWORK = dict(hidden=16, num_layers=1, num_freqs=4, time_dim=8)


def _batch(copies=1):
  return batch_lib.to_device(batch_lib.batch_from_atoms(
      datasets.builtin_structures() * copies))


def _model(task):
  config = model_lib.ModelConfig(task=task, num_steps=50).with_process(
      'types', 'types_masked').with_network(**TINY_NETWORK)
  return model_lib.build(config)


@pytest.mark.parametrize('t, fraction', [(250, 0.25), (900, 0.9), (0.4, 0.4), (1.0, 1.0)])
def test_masking_rate_and_targets(keys, t, fraction):
  batch = _batch(40)
  proc = discrete.TypesMasked(num_steps=1000)
  ts = jnp.full((batch.num_atom_slots,), t)
  x, target = proc.noise(next(keys), batch, ts)
  mask = np.asarray(batch.atom_mask)
  x, target = np.asarray(x)[mask], np.asarray(target)[mask]
  clean = np.asarray(proc.one_hot(batch.species))[mask]
  masked = x.sum(-1) == 0
  assert abs(masked.mean() - fraction) < 0.03
  # unmasked atoms show their clean type; masked ones are the target's
  np.testing.assert_array_equal(x[~masked], clean[~masked])
  np.testing.assert_array_equal(target[masked], clean[masked])
  assert not target[~masked].any()


def test_cross_entropy_counts_masked_atoms_only():
  target = jnp.array([[0., 1., 0.], [0., 0., 0.], [1., 0., 0.], [0., 0., 1.]])
  mask = jnp.array([True, True, True, False])
  logits = jnp.array([[0., 2., 0.], [9., -9., 3.], [1., 1., 1.], [5., 0., 0.]])
  got = discrete.masked_cross_entropy(logits, target, mask)
  nll0 = -jax.nn.log_softmax(logits[0])[1]
  nll2 = np.log(3.0)
  np.testing.assert_allclose(got, (nll0 + nll2) / 2, rtol=1e-6)
  assert float(discrete.masked_cross_entropy(logits, target * 0, mask)) == 0.0


def test_reverse_jump_rates_and_oracle_recovery(keys):
  """With logits that know the answer, the reverse chain recovers every type,
  and after each step the fraction still masked is m(t_prev)."""
  batch = _batch(40)
  proc = discrete.TypesMasked(num_steps=100)
  mask = np.asarray(batch.atom_mask)
  oracle = 50.0 * proc.one_hot(batch.species)
  x = proc.prior(next(keys), batch)
  for t in range(100, 0, -10):
    x = proc.jump(next(keys), x, oracle, jnp.int32(t), jnp.int32(t - 10), batch)
    still = (np.asarray(x).sum(-1) == 0)[mask].mean()
    assert abs(still - (t - 10) / 100) < 0.04, (t, still)
  np.testing.assert_array_equal(np.asarray(proc.species(batch, x))[mask],
                                np.asarray(batch.species)[mask])
  # padding atoms stay masked and read as species 0
  assert not np.asarray(x)[~mask].any()


@pytest.mark.parametrize('task, sampler', [('dng', 'pc'), ('dng', 'ddim'),
                                           ('dng_flow', 'euler'), ('dng_flow', 'heun')])
def test_masked_types_train_and_sample_in_every_family(keys, task, sampler):
  model = _model(task)
  batch = _batch()
  params = model.init_params(next(keys), batch)
  loss_fn = jax.jit(losses.get_loss_fn(model))
  (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
      next(keys), params, batch)
  assert np.isfinite(float(loss)) and float(aux['types']) > 0
  # the cross-entropy reaches the type head
  type_grads = [np.abs(np.asarray(v)).sum() for k, v in
                jax.tree_util.tree_flatten_with_path(grads)[0] if 'type_out' in str(k)]
  assert type_grads and max(type_grads) > 0
  sample = samplers.get_sampler(model, samplers.SamplerConfig(sampler, num_steps=10))
  out, _, overflow = jax.jit(sample)(next(keys), params, batch)
  species = np.asarray(out.species)[np.asarray(batch.atom_mask)]
  assert ((species >= 1) & (species <= 100)).all()
  assert not np.asarray(overflow).any()
  # types are drawn, not fixed: another key gives other species
  other, _, _ = jax.jit(sample)(next(keys), params, batch)
  assert (np.asarray(other.species) != np.asarray(out.species)).any()


def test_models_without_jump_processes_keep_their_keys(keys):
  """A jump-free flow model's sampler never splits the state's key, so
  seeds give the structures they gave before jump processes existed."""
  model = model_lib.build(model_lib.ModelConfig(task='dng_flow', num_steps=50)
                          .with_process('types', 'types_flow')
                          .with_network(**TINY_NETWORK))
  rng = next(keys)
  from jaxcrystal.generative import sampling
  assert sampling.jump_keys(model, rng)[0] is rng
  assert samplers.model_kind(_model('dng_flow')) == 'flow'
  # masked types are dng_flow's default; a run stored with no processes
  # (before issue 31) had flow types and keeps them
  assert model_lib.ModelConfig(task='dng_flow').process_table()[2][1] == 'types_masked'
  legacy = model_lib.ModelConfig.from_dict({'task': 'dng_flow', 'num_steps': 50})
  assert legacy.process_table()[2][1] == 'types_flow'
  assert samplers.model_kind(_model('dng')) == 'score'
