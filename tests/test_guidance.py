"""Conditions fitted to the data, condition dropout and classifier-free
guidance (issue 34): the dropout's statistics, the guided prediction
against its definition, and every refusal in one line."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import properties as properties_lib
from jaxcrystal.generative import conditions
from jaxcrystal.generative import request
from jaxcrystal.generative import losses
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import sampling


def _conditioned_batch(gaps, num_graphs=None):
  structures = [bulk('NaCl', 'rocksalt', a=5.6), bulk('Si', 'diamond', a=5.43),
                bulk('Cu', 'fcc', a=3.6)]
  for atoms, gap in zip(structures, gaps):
    atoms.info['band_gap'] = gap
  return batch_lib.batch_from_atoms(structures, properties=('band_gap', 'num_elements'))


def test_condition_dropout_statistics_and_masks_only_narrow():
  g = 20000
  values = np.linspace(0, 1, g).astype(np.float32)
  known = np.arange(g) % 10 != 0  # a tenth unknown in the data
  cond = {'a': jnp.asarray(values), 'b': jnp.asarray(values)}
  mask = {'a': jnp.asarray(known), 'b': jnp.ones(g, bool)}
  batch = batch_lib.CrystalBatch(
      lattice=jnp.zeros((g, 3, 3)), frac=jnp.zeros((1, 3)), species=jnp.zeros(1, jnp.int32),
      graph_index=jnp.zeros(1, jnp.int32), atom_mask=jnp.ones(1, bool),
      graph_mask=jnp.ones(g, bool), n_atoms=jnp.zeros(g, jnp.int32),
      conditions=cond, condition_mask=mask)
  rate = 0.3
  out = losses.drop_conditions(jax.random.PRNGKey(0), batch, rate)
  a, b = np.asarray(out.condition_mask['a']), np.asarray(out.condition_mask['b'])
  assert not np.any(a & ~known)  # an unknown value never becomes known
  np.testing.assert_array_equal(np.asarray(out.conditions['a']), values)
  # Both dropped together with probability rate + (1 - rate) rate^2 ...
  np.testing.assert_allclose(np.mean(~b), rate + (1 - rate) * rate, atol=0.015)
  np.testing.assert_allclose(np.mean(~a[known] & ~b[known]),
                             rate + (1 - rate) * rate ** 2, atol=0.015)
  # ... and each kept with probability (1 - rate)^2, the other's draw apart.
  np.testing.assert_allclose(np.mean(a[known]), (1 - rate) ** 2, atol=0.015)
  np.testing.assert_allclose(np.mean(a[known] & b[known]), (1 - rate) ** 3, atol=0.015)
  again = losses.drop_conditions(jax.random.PRNGKey(0), batch, rate)
  np.testing.assert_array_equal(np.asarray(again.condition_mask['a']), a)


def test_settings_fit_the_training_values_and_refuse_what_cannot_be_encoded():
  values = np.array([1.0, np.nan, 3.0, 5.0], np.float32)
  fitted = conditions.ScalarSettings().fit(values)
  assert fitted.mean == pytest.approx(3.0) and fitted.std == pytest.approx(np.std([1, 3, 5]))
  assert (fitted.low, fitted.high) == (1.0, 5.0)
  given = conditions.ScalarSettings(mean=2.0, std=0.5).fit(values)
  assert (given.mean, given.std) == (2.0, 0.5)
  assert conditions.ScalarSettings().fit(np.array([2.0, 2.0])).std == 1.0
  config = model_lib.ModelConfig(task='dng').with_condition('num_elements', 'categorical',
                                                            num_classes=4)
  with pytest.raises(errors.DataError, match=r"^train\.csv: condition 'num_elements' "
                     r"\(categorical\): 1 values are not integers in \[0, 4\) "
                     r"\(first: 2\.5\)$"):
    config.fit_conditions({'num_elements': np.array([1.0, 2.5, np.nan])}, 'train.csv')
  with pytest.raises(errors.DataError, match=r'first: 4'):
    config.fit_conditions({'num_elements': np.array([1.0, 4.0])}, 'train.csv')
  # An encoder that was never fitted refuses to run.
  model = model_lib.build(model_lib.ModelConfig(task='dng').with_condition('band_gap',
                                                                           'scalar'))
  with pytest.raises(errors.ConfigError, match='std 0 has not been fitted'):
    model.init_params(jax.random.PRNGKey(0),
                      batch_lib.to_device(_conditioned_batch([0.0, 1.1, 0.0])))


def test_guided_prediction_is_cond_plus_w_times_cond_minus_uncond():
  config = (model_lib.ModelConfig(task='dng_flow', num_steps=10, condition_dropout=0.1)
            .with_condition('band_gap', 'scalar', mean=1.0, std=1.0)
            .with_condition('num_elements', 'scalar', mean=1.5, std=0.5)
            .with_network(hidden=16, num_layers=1))
  model = model_lib.build(config)
  batch = batch_lib.to_device(_conditioned_batch([5.0, 1.1, 0.0]))
  params = model.init_params(jax.random.PRNGKey(0), batch)
  # Perturb the null vectors away from their init so "unknown" differs.
  params = jax.tree.map(lambda p: p + 0.3, params)
  xs = {name: p.clean(batch) for name, p in model.processes.items()}
  t = jnp.full(batch.num_graph_slots, 0.4)
  cond, _ = model.apply(params, batch, t, xs)
  unknown = {k: jnp.zeros_like(m) for k, m in batch.condition_mask.items()}
  uncond, _ = model.apply(params, batch.replace(condition_mask=unknown), t, xs)
  for w in (1.0, 2.5):
    guided, _ = model.with_guidance(w).apply(params, batch, t, xs)
    for name in model.processes:
      np.testing.assert_allclose(guided[name], cond[name] + w * (cond[name] - uncond[name]),
                                 rtol=1e-4, atol=1e-4)
  plain, _ = model.with_guidance(0.0).apply(params, batch, t, xs)
  for name in model.processes:
    np.testing.assert_array_equal(plain[name], cond[name])
    # The condition reaches every output: guidance is not a no-op.
    assert np.abs(np.asarray(cond[name]) - np.asarray(uncond[name])).max() > 1e-4, name
  # Another band gap changes the prediction.
  other, _ = model.apply(params, batch.replace(
      conditions=dict(batch.conditions, band_gap=batch.conditions['band_gap'] + 2.0)), t, xs)
  assert np.abs(np.asarray(other['lattice']) - np.asarray(cond['lattice'])).max() > 1e-4


def test_guidance_and_requests_that_cannot_work_are_one_line():
  plain = model_lib.build(model_lib.ModelConfig(task='dng_flow'))
  with pytest.raises(errors.ConfigError, match='^guidance needs a conditioned model; '
                     'this one was trained without conditions$'):
    plain.with_guidance(2.0)
  assert plain.with_guidance(0.0).guidance == 0.0
  no_dropout = model_lib.ModelConfig(task='dng_flow').with_condition(
      'heat_ref', 'scalar', mean=0.0, std=1.0, low=-1.0, high=0.5)
  with pytest.raises(errors.ConfigError, match=r"trained with --condition_dropout > 0 .*"
                     r"conditioned on \['heat_ref'\], was trained without it$"):
    model_lib.build(no_dropout).with_guidance(1.0)
  with pytest.raises(errors.ConfigError, match='guidance must be a finite number >= 0'):
    model_lib.build(no_dropout).with_guidance(-1.0)
  with pytest.raises(errors.UserError, match=r"^--condition band_gap: the model is not "
                     r"conditioned on it; its conditions are \['heat_ref'\]$"):
    request.request_conditions(no_dropout, {'band_gap': 1.0}, 2)
  with pytest.raises(errors.UserError, match='it was trained without conditions'):
    request.request_conditions(model_lib.ModelConfig(), {'band_gap': 1.0}, 2)
  with pytest.raises(errors.UserError, match=r'needs a value of each: give --condition '
                     r'heat_ref=VALUE$'):
    request.request_conditions(no_dropout, {}, 2)
  warned = []
  assert request.request_conditions(no_dropout, {'heat_ref': -2.0}, 2,
                                     warned.append) == {'heat_ref': [-2.0, -2.0]}
  assert warned == ["warning: --condition heat_ref=-2 lies outside the training data's "
                    "range [-1, 0.5]; the model extrapolates"]
  dropout = no_dropout.__class__(**{**no_dropout.__dict__, 'condition_dropout': 0.1})
  got = request.request_conditions(dropout, {}, 3)
  assert np.isnan(got['heat_ref']).all() and len(got['heat_ref']) == 3
  with pytest.raises(errors.ConfigError, match='condition_dropout needs conditions'):
    model_lib.ModelConfig(condition_dropout=0.1).validate()
  with pytest.raises(errors.ConfigError, match=r'condition_dropout must be in \[0, 1\)'):
    dropout.__class__(**{**dropout.__dict__, 'condition_dropout': 1.0}).validate()


def test_chemical_system_is_a_derived_element_set_condition():
  structures = [bulk('NaCl', 'rocksalt', a=5.6), bulk('Si', 'diamond', a=5.43)]
  structures[1].info['chemical_system'] = 'not a vector'  # unknown, not derived
  values = properties_lib.property_values(structures, ('chemical_system', 'num_elements'))
  assert values['chemical_system'].shape == (2, batch_lib.NUM_ELEMENTS)
  assert np.flatnonzero(values['chemical_system'][0]).tolist() == [10, 16]  # Na, Cl
  assert np.isnan(values['chemical_system'][1]).all()
  np.testing.assert_array_equal(values['num_elements'], [2, 1])
  batch = batch_lib.batch_from_atoms(structures, properties=('chemical_system',))
  assert batch.conditions['chemical_system'].shape == (3, batch_lib.NUM_ELEMENTS)
  np.testing.assert_array_equal(batch.condition_mask['chemical_system'], [True, False, False])
  np.testing.assert_array_equal(properties_lib.parse_element_set('Cl-Na'),
                                values['chemical_system'][0])
  with pytest.raises(ValueError, match="'Xx' in 'Li-Xx' is not an element"):
    properties_lib.parse_element_set('Li-Xx')
  config = (model_lib.ModelConfig(task='dng_flow', condition_dropout=0.1)
            .with_network(hidden=16, num_layers=1)
            .with_condition('chemical_system', 'element_set'))
  got = request.request_conditions(config, {'chemical_system': 'Li-Fe-O'}, 2)
  assert np.flatnonzero(got['chemical_system'][1]).tolist() == [2, 7, 25]
  with pytest.raises(errors.UserError, match=r"^--condition chemical_system=Li-Qq: 'Qq'"):
    request.request_conditions(config, {'chemical_system': 'Li-Qq'}, 2)
  # sample.py --elements: each sample is told its own allowed set as its
  # system, unless a system is asked for (which then wins).
  offered = [np.array([3, 8]), np.array([3, 26, 8])]
  told = request.request_conditions(config, {}, 2, allowed_elements=offered)
  assert [np.flatnonzero(v).tolist() for v in told['chemical_system']] == [[2, 7], [2, 7, 25]]
  asked = request.request_conditions(config, {'chemical_system': 'Cu'}, 2,
                                     allowed_elements=offered)
  assert [np.flatnonzero(v).tolist() for v in asked['chemical_system']] == [[28], [28]]
  no_dropout = dataclasses.replace(config, condition_dropout=0.0)
  assert request.request_conditions(no_dropout, {}, 2, allowed_elements=offered).keys() == {'chemical_system'}
  with pytest.raises(errors.UserError, match='give --condition chemical_system'):
    request.request_conditions(no_dropout, {}, 2)
  # The network is told the set: another set, another prediction.
  model = model_lib.build(config)
  template = sampling.template_from_compositions([[1, 1, 1]] * 2, conditions=got)
  template = batch_lib.to_device(template)
  params = model.init_params(jax.random.PRNGKey(0), template)
  xs = {name: p.clean(template) for name, p in model.processes.items()}
  t = jnp.full(template.num_graph_slots, 0.5)
  out, _ = model.apply(params, template, t, xs)
  other = request.request_conditions(config, {'chemical_system': 'Cu'}, 2)
  moved = batch_lib.to_device(sampling.template_from_compositions([[1, 1, 1]] * 2,
                                                                  conditions=other))
  out2, _ = model.apply(params, moved, t, xs)
  assert np.abs(np.asarray(out['lattice']) - np.asarray(out2['lattice'])).max() > 1e-5
  with pytest.raises(errors.DataError, match='only 0 and 1'):
    config.fit_conditions({'chemical_system': np.full((2, 100), 0.5)}, 'x.csv')


def test_sampling_a_conditioned_model_without_its_conditions_takes_them_as_unknown():
  """`generate.sample_structures` called as for an unconditioned model:
  conditions not given are unknown (the same samples as NaN given), or for
  chemical_system with allowed elements each sample's set; a model that
  never learned "unknown" is one line, not a traceback from the network."""
  from jaxcrystal.generative import generate
  config = (model_lib.ModelConfig(task='dng_flow', num_steps=4, condition_dropout=0.1)
            .with_condition('band_gap', 'scalar', mean=1.0, std=1.0)
            .with_condition('chemical_system', 'element_set')
            .with_network(hidden=16, num_layers=1))
  model = model_lib.build(config)
  structures = [bulk('NaCl', 'rocksalt', a=5.6), bulk('Si', 'diamond', a=5.43)]
  for atoms in structures:
    atoms.info['band_gap'] = 1.0
  batch = batch_lib.to_device(batch_lib.batch_from_atoms(
      structures, properties=('band_gap', 'chemical_system')))
  params = jax.tree.map(lambda p: p + 0.3, model.init_params(jax.random.PRNGKey(0), batch))
  comps = [np.array([8, 8, 22, 38, 38])] * 2
  allowed = [[8, 22, 38]] * 2
  run = lambda **kw: generate.sample_structures(model, params, comps, seed=0, progress=False,
                                                allowed_elements=allowed, **kw)[0]
  implicit = run()
  explicit = run(conditions={'band_gap': [np.nan] * 2, 'chemical_system': [
      properties_lib.element_set_of(a) for a in allowed]})
  told_other = run(conditions={'band_gap': [3.0] * 2})
  for a, b in zip(implicit, explicit):
    np.testing.assert_array_equal(a.positions, b.positions)
  assert any(not np.array_equal(a.positions, b.positions)
             for a, b in zip(implicit, told_other))  # the condition reaches the samples
  strict = model_lib.build(dataclasses.replace(config, condition_dropout=0.0))
  with pytest.raises(errors.UserError, match='trained without --condition_dropout'):
    generate.sample_structures(strict, params, comps, progress=False)
