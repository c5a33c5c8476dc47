"""De novo constraints (issue 35): samples hold only the allowed elements
in every type process, because the sampler draws and decodes only them
(not because samples are filtered); subsets, atom-count ranges and the
refusals of impossible requests."""

import dataclasses

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import constraints
from jaxcrystal.generative import discrete
from jaxcrystal.generative import flow
from jaxcrystal.generative import generate
from jaxcrystal.generative import request
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import sampling

TINY_NETWORK = dict(hidden=16, num_layers=1, num_freqs=4, time_dim=8)
SETS = [np.array([3, 8]), np.array([26]), np.array([8, 26, 56])]  # Li O / Fe / O Fe Ba


def _template(sets=SETS, sizes=(4, 3, 6)):
  return batch_lib.to_device(sampling.template_from_compositions(
      [np.ones(n, int) for n in sizes], allowed_elements=sets))


def _within(species, template, sets):
  graph = np.asarray(template.graph_index)
  mask = np.asarray(template.atom_mask)
  return all(int(z) in sets[g] for z, g in zip(np.asarray(species)[mask], graph[mask]))


def test_masked_jump_draws_only_allowed_elements_however_the_logits_lean(keys):
  template = _template()
  proc = discrete.TypesMasked(num_steps=10)
  # logits that favour the disallowed elements by far
  logits = jnp.full((template.num_atom_slots, 100), 30.0)
  logits = logits.at[:, np.concatenate(SETS) - 1].set(0.0)
  x = proc.prior(next(keys), template)
  x = proc.jump(next(keys), x, logits, 10, 0, template)  # every atom unmasked
  species = proc.species(template, x)
  assert _within(species, template, SETS)
  # the same logits without the constraint draw the favoured elements
  unconstrained = template.replace(allowed_elements=None)
  free = proc.jump(next(keys), proc.prior(next(keys), template), logits, 10, 0,
                   unconstrained)
  assert not _within(proc.species(unconstrained, free), template, SETS)


def test_decoding_picks_the_most_likely_allowed_element(keys):
  template = _template()
  proc = flow.TypesFlow()
  x = jax.random.normal(next(keys), (template.num_atom_slots, 100))
  species = np.asarray(proc.species(template, x))
  allowed = np.asarray(template.allowed_elements)[np.asarray(template.graph_index)]
  expected = np.argmax(np.where(allowed, np.asarray(x), -np.inf), -1) + 1
  mask = np.asarray(template.atom_mask)
  np.testing.assert_array_equal(species[mask], expected[mask])
  assert not np.asarray(species)[~mask].any()


# masked types draw within the set; continuous ones (types_ddpm here, and
# types_flow, whose decoding is the same `species`) decode within it
@pytest.mark.parametrize('task, types', [('dng_flow', 'types_masked'),
                                         ('dng', 'types_ddpm')])
def test_untrained_models_sample_within_the_elements_in_every_family(keys, task, types):
  """An untrained network spreads over all 100 classes; constrained, every
  atom of every sample is one of its set's elements."""
  model = model_lib.build(model_lib.ModelConfig(task=task, num_steps=10)
                          .with_process('types', types).with_network(**TINY_NETWORK))
  template = _template()
  params = model.init_params(next(keys), template)
  compositions = [np.ones(n, int) for n in (4, 3, 2, 4)]  # one size class
  sets = SETS + [np.array([1, 2])]
  samples, _ = generate.sample_structures(model, params, compositions, seed=1,
                                          allowed_elements=sets, progress=False)
  for atoms, allowed in zip(samples, sets):
    assert set(atoms.numbers) <= set(allowed.tolist()), (atoms.numbers, allowed)
  free, _ = generate.sample_structures(model, params, compositions, seed=1,
                                       progress=False)
  assert any(not set(a.numbers) <= set(s.tolist()) for a, s in zip(free, sets))
  report = constraints.element_report(samples, sets, 1)
  assert report['within_elements_fraction'] == 1.0
  assert sum(report['distinct_elements'].values()) == 4


def test_subsets_sizes_and_atom_ranges():
  rng = np.random.default_rng(0)
  elements = constraints.parse_elements('Ba,Sr,Ti,O')
  np.testing.assert_array_equal(elements, [8, 22, 38, 56])
  subsets = constraints.element_subsets(rng, elements, 400, 2, 3)
  sizes = np.array([len(s) for s in subsets])
  assert set(sizes) == {2, 3} and abs((sizes == 2).mean() - 0.5) < 0.1
  assert all(set(s) <= set(elements) and len(set(s)) == len(s) for s in subsets)
  # every element is drawn, not always the first ones
  assert set(np.concatenate(subsets)) == set(elements)
  assert all(len(s) == 4 for s in constraints.element_subsets(rng, elements, 5, 4, 4))
  assert constraints.parse_atom_range('8') == (8, 8)
  assert constraints.parse_atom_range(' 6-12 ') == (6, 12)
  counts, seen = constraints.atom_counts_in_range(rng, [5, 6, 6, 12, 20], 500, 6, 12)
  assert seen and set(counts) == {6, 12} and abs((counts == 6).mean() - 2 / 3) < 0.07
  counts, seen = constraints.atom_counts_in_range(rng, [5], 500, 7, 9)
  assert not seen and set(counts) == {7, 8, 9}


@pytest.mark.parametrize('text', ['0', '9-3', 'a-b', '1-2-3', '', '-4'])
def test_bad_atom_ranges_are_refused(text):
  with pytest.raises(errors.UserError, match='--num_atoms'):
    constraints.parse_atom_range(text)


def test_impossible_requests_are_refused_in_one_line():
  comps = [np.ones(5, int)] * 3
  seen = constraints.element_histogram([ase.Atoms('BaTiO3'), ase.Atoms('SrTiO3')])
  assert list(seen) == ['O', 'Ti', 'Sr', 'Ba'] and seen['Ti'] == 2
  ask = lambda *a, **k: constraints.allowed_for_request('dng_flow', comps, *a, seen=seen, **k)
  with pytest.raises(errors.UserError, match='never saw Li in its training data; '
                     'it knows O,Ti,Sr,Ba'):
    ask('Li,O')
  with pytest.raises(errors.UserError, match=r"--elements: 'Xx'"):
    ask('Ba,Xx')
  with pytest.raises(errors.UserError, match='--min_elements=3 is more than --max_elements=2'):
    ask('Ba,Ti,O', 3, 2)
  with pytest.raises(errors.UserError, match='names only 2'):
    ask('Ba,O', 3)
  with pytest.raises(errors.UserError, match='cannot hold in a crystal of 2 atoms'):
    constraints.allowed_for_request('dng', [np.ones(2, int)], 'Ba,Ti,O', 3, seen=seen)
  with pytest.raises(errors.UserError, match='need --elements'):
    ask('', 2)
  with pytest.raises(errors.UserError, match=r'fixes the atom types \(a csp model\)'):
    constraints.allowed_for_request('csp', comps, 'Ba,O')
  with pytest.raises(errors.UserError, match='--formula or --compositions_from'):
    constraints.allowed_for_request('dng', comps, 'Ba,O', de_novo=False)
  assert ask('') is None
  sets = ask('Ba,Ti,O')
  assert len(sets) == 3 and all(list(s) == [8, 22, 56] for s in sets)


@pytest.mark.parametrize('group, multiplicities', [
    (221, {1, 3, 6, 8, 12, 24, 48}),  # Pm-3m: 1a 1b 3c 3d 6e 6f 8g 12h-j 24k-m 48n
    (194, {2, 4, 6, 12, 24}),  # P6_3/mmc
    (230, {8, 12, 16, 24, 48}),  # Ia-3d, conventional / 2
    (1, {1})])
def test_orbit_sizes_are_the_tables_wyckoff_multiplicities(group, multiplicities):
  assert set(constraints.orbit_sizes(group)) == multiplicities


def test_space_groups_that_cannot_hold_the_atom_counts_are_refused():
  assert constraints.atom_count_fits(221, 5) and constraints.atom_count_fits(230, 8)
  assert not constraints.atom_count_fits(230, 2)
  assert [n for n in range(1, 9) if constraints.atom_count_fits(194, n)] == [2, 4, 6, 8]
  constraints.check_space_group(221, [np.ones(5, int)])
  with pytest.raises(errors.UserError, match=r'--space_group=194: no crystal of 3 atoms '
                     r'has this group \(its orbits in the primitive cell hold 2, 4, 6'):
    constraints.check_space_group(194, [np.ones(4, int), np.ones(3, int)])
  for bad in (0, 231):
    with pytest.raises(errors.UserError, match='international number 1..230'):
      constraints.check_space_group(bad, [np.ones(5, int)])


def test_space_group_is_a_derived_property_and_a_checked_request():
  from ase.build import bulk
  from jaxcrystal.data import properties
  values = properties.property_values(
      [bulk('Cu', 'fcc', a=3.6), bulk('Fe', 'bcc', a=2.87, cubic=True)], ('space_group',))
  np.testing.assert_array_equal(values['space_group'], [225, 229])
  config = model_lib.ModelConfig(task='dng_flow').with_condition(
      'space_group', 'categorical', num_classes=231)
  config = dataclasses.replace(config, condition_dropout=0.1)
  asked = request.request_conditions(config, {'space_group': 221}, 2)
  assert asked == {'space_group': [221.0, 221.0]}
  with pytest.raises(errors.UserError, match=r'space_group=300: space_group takes '
                     r'integers in \[0, 231\)'):
    request.request_conditions(config, {'space_group': 300}, 2)
