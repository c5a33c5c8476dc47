import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import datasets
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import processes
from jaxcrystal.generative import updates
from jaxcrystal.generative import sampling
from jaxcrystal.generative import score_steps
from jaxcrystal.generative import schedules

TINY_NETWORK = dict(hidden=16, num_layers=1, num_freqs=4, time_dim=8)


def _setup(task, **kw):
  config = model_lib.ModelConfig(task=task, num_steps=20, **kw)
  names = {f.name for f in dataclasses.fields(config.network_choice()[1])}
  config = config.with_network(**{k: v for k, v in TINY_NETWORK.items() if k in names})
  spec = model_lib.build(config)
  structures = datasets.builtin_structures()[::3]
  template = batch_lib.to_device(sampling.template_from_compositions(
      [s.numbers for s in structures],
      lattices=[s.cell[:] for s in structures] if task == 'cartesian' else None))
  params = spec.init_params(jax.random.PRNGKey(0), template)
  return spec, params, template


def test_ddpm_predictor_inverts_forward_mean_when_eps_known():
  sched = schedules.make_beta_schedule('cosine', 100)
  x0 = jnp.ones((4, 3))
  eps = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  t = jnp.full((4,), 1)
  ab = sched.alpha_bars[1]
  x1 = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
  _, mean = updates.ddpm_predictor(jax.random.PRNGKey(1), x1, eps, t, sched)
  np.testing.assert_allclose(mean, x0, atol=1e-4)  # at t = 1 the step is exact


def test_ve_predictor_and_corrector_follow_score():
  x = jnp.zeros((1000, 3))
  score = jnp.ones((1000, 3))
  out, mean = updates.ve_predictor(jax.random.PRNGKey(0), x, score, 0.5, 0.3)
  np.testing.assert_allclose(mean, 0.25 - 0.09, rtol=1e-5)
  np.testing.assert_allclose(np.std(np.asarray(out - mean)),
                             np.sqrt(0.09 * 0.16 / 0.25), rtol=0.05)
  out, mean = updates.langevin_corrector(jax.random.PRNGKey(0), x, score, 0.5, 0.005,
                                          1e-5, 0.0)
  np.testing.assert_allclose(out, mean)
  np.testing.assert_allclose(mean, 1e-5 * 100**2, rtol=1e-5)


@pytest.mark.parametrize('task', ['csp', 'dng'])
def test_sampler_reproducible_and_masks_padding(task):
  spec, params, template = _setup(task)
  sample = jax.jit(sampling.get_pc_sampler(spec, step_lr=1e-5))
  a, _, overflow = sample(jax.random.PRNGKey(3), params, template)
  b, _, _ = sample(jax.random.PRNGKey(3), params, template)
  c, _, _ = sample(jax.random.PRNGKey(4), params, template)
  chex.assert_trees_all_equal(a, b)
  assert not np.any(np.asarray(overflow))
  assert not np.allclose(a.frac[a.atom_mask], c.frac[c.atom_mask])
  chex.assert_tree_all_finite(a)
  assert float(a.frac.min()) >= 0 and float(a.frac.max()) < 1
  real = np.asarray(a.graph_mask)
  assert np.all(np.linalg.det(np.asarray(a.lattice)[real]) > 0)  # right-handed
  np.testing.assert_array_equal(a.n_atoms, template.n_atoms)
  if task == 'csp':
    np.testing.assert_array_equal(a.species, template.species)
  else:
    sp = np.asarray(a.species)[np.asarray(a.atom_mask)]
    assert sp.min() >= 1 and sp.max() <= 100
  np.testing.assert_array_equal(np.asarray(a.frac)[~np.asarray(a.atom_mask)],
                                np.asarray(template.frac)[~np.asarray(template.atom_mask)])


@pytest.mark.parametrize('corrector_steps', [0, 2])
def test_corrector_steps_change_the_sample(corrector_steps):
  spec, params, template = _setup('csp')
  base, _, _ = jax.jit(sampling.get_pc_sampler(spec))(jax.random.PRNGKey(0), params, template)
  other, _, _ = jax.jit(sampling.get_pc_sampler(spec, corrector_steps=corrector_steps))(
      jax.random.PRNGKey(0), params, template)
  chex.assert_tree_all_finite(other)
  assert not np.allclose(base.frac[base.atom_mask], other.frac[other.atom_mask])
  with pytest.raises(ValueError, match='corrector_steps'):
    sampling.get_pc_sampler(spec, corrector_steps=-1)


def test_trajectory_every_k_steps():
  spec, params, template = _setup('csp')
  sample = jax.jit(sampling.get_pc_sampler(spec, trajectory_every=5))
  final, traj, _ = sample(jax.random.PRNGKey(0), params, template)
  lat, frac = traj['lattice'], traj['coords']
  chex.assert_shape(lat, (4, template.num_graph_slots, 3, 3))
  chex.assert_shape(frac, (4, template.num_atom_slots, 3))
  # the last snapshot is the final state (before the handedness fix)
  real = np.asarray(final.graph_mask)
  np.testing.assert_allclose(np.abs(np.linalg.det(lat[-1]))[real],
                             np.abs(np.linalg.det(final.lattice))[real], rtol=1e-4)
  assert not np.allclose(lat[0], lat[-1])
  with pytest.raises(ValueError, match='divisible'):
    sampling.get_pc_sampler(spec, trajectory_every=7)


def test_cartesian_sampler_keeps_cell():
  spec, params, template = _setup('cartesian', graph='radius', cutoff=4.0, processes=(
      ('coords', 'cart_minimum_image', processes.SigmaSettings(0.01, 0.5)),))
  out, _, overflow = jax.jit(sampling.get_pc_sampler(spec))(jax.random.PRNGKey(0), params, template)
  np.testing.assert_array_equal(out.lattice, template.lattice)
  assert not np.any(np.asarray(overflow))
  assert float(out.frac.min()) >= 0 and float(out.frac.max()) < 1
  assert not np.allclose(out.frac, template.frac)


def test_make_right_handed_keeps_structure():
  from jaxcrystal.geometry import lattice as lattice_lib
  s = datasets.builtin_structures()[5]
  b = batch_lib.batch_from_atoms([s])
  mirrored = b.replace(lattice=b.lattice[:, [1, 0, 2]], frac=b.frac[:, [1, 0, 2]])
  assert np.linalg.det(mirrored.lattice[0]) < 0
  lat, frac = lattice_lib.make_right_handed(jnp.asarray(mirrored.lattice),
                                            jnp.asarray(mirrored.frac),
                                            jnp.asarray(mirrored.graph_index))
  assert np.linalg.det(lat[0]) > 0
  np.testing.assert_allclose(np.asarray(frac[:4]) @ np.asarray(lat[0]), s.positions,
                             atol=1e-4)


def test_a_sampler_written_against_the_score_interface_needs_no_process_code():
  """A predictor-only sampler built from `score_steps` (the processes'
  declared interface) in the test file gives exactly the predictor-corrector
  sampler's structures with no corrector steps."""
  spec, params, template = _setup('dng')

  def step(params, template, state, tt):
    t, t_prev = tt
    keys, key = model_lib.stream_keys(state.rng, 5, sampling.STEP_SLOTS)
    out, lost = sampling.network_outputs(spec, params, template, state.xs, t)
    xs = {n: score_steps.predict(p, key(p.stream), state.xs[n], out[n], t, t_prev,
                                 template) for n, p in spec.processes.items()}
    return sampling.SamplerState(keys[0], xs, jnp.maximum(state.overflow, lost))
  mine = sampling.make_sample(spec, step, spec.time.reverse_grid())
  rng = jax.random.PRNGKey(3)
  got, _, _ = jax.jit(mine)(rng, params, template)
  want, _, _ = jax.jit(sampling.get_pc_sampler(spec, corrector_steps=0))(rng, params, template)
  for field in ('lattice', 'frac', 'species'):
    np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
  corrected, _, _ = jax.jit(sampling.get_pc_sampler(spec))(rng, params, template)
  assert not np.array_equal(corrected.frac, want.frac)  # the corrector moves it


def test_score_samplers_refuse_processes_without_the_interface():
  """`score_steps.check`: a flow process, or a 've' process with no score,
  is refused by both score samplers, naming the variable."""
  from jaxcrystal.generative import ddim
  spec, _, _ = _setup('csp')
  flow_model = model_lib.build(model_lib.ModelConfig(task='csp_flow', num_steps=20)
                               .with_network(**TINY_NETWORK))
  for make in (sampling.get_pc_sampler, ddim.get_ddim_sampler):
    with pytest.raises(ValueError, match="score samplers run score processes.*'lattice'"):
      make(flow_model)

  class NoScore(processes.ScoreProcess):
    family = 've'
  broken = dataclasses.replace(spec, processes={**spec.processes, 'coords': NoScore()})
  for make in (sampling.get_pc_sampler, ddim.get_ddim_sampler):
    with pytest.raises(ValueError, match=r"'coords' \(NoScore\) is a ve process without"):
      make(broken)
  sampling.get_pc_sampler(spec)  # the real processes pass
