"""Flow matching (issue 17): the straight paths and their targets, the ODE
integrators against an oracle velocity, and the few-step samplers of score
models (strided predictor-corrector, DDIM) against exact updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import datasets
from jaxcrystal.generative import flow
from jaxcrystal.generative import losses
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import networks
from jaxcrystal.generative import samplers
from jaxcrystal.generative import sampling
from jaxcrystal.generative import schedules
from jaxcrystal.generative import score_steps
from jaxcrystal.generative import tasks
from jaxcrystal.generative import times
from jaxcrystal.generative import updates

TINY_NETWORK = dict(hidden=16, num_layers=1, num_freqs=4, time_dim=8)


def _batch(num=4):
  return batch_lib.to_device(batch_lib.batch_from_atoms(
      datasets.builtin_structures()[:num]))


def _periodic_close(a, b, atol):
  d = np.asarray(a) - np.asarray(b)
  np.testing.assert_allclose(d - np.round(d), 0.0, atol=atol)


def test_torus_path_ends_target_and_image_invariance(keys):
  batch = _batch()
  proc = flow.FracTorusFlow()
  mask = np.asarray(batch.atom_mask)
  rng = next(keys)
  zero = jnp.zeros(batch.num_atom_slots)
  f0, u = proc.noise(rng, batch, zero)
  _periodic_close(np.asarray(f0)[mask], np.asarray(batch.frac)[mask], 1e-6)
  # one Euler step of the exact velocity from any t lands on the data
  for t in (1.0, 0.63, 0.2):
    ft, u = proc.noise(rng, batch, jnp.full(batch.num_atom_slots, t))
    back = proc.advance(ft, proc.velocity(u, batch), t, 0.0, batch)
    _periodic_close(np.asarray(back)[mask], np.asarray(batch.frac)[mask], 2e-5)
  # the target is mean-free per crystal and at most half a cell per axis
  means = flow.crystal_mean(u, batch)
  np.testing.assert_allclose(np.asarray(means)[mask], 0.0, atol=1e-5)
  assert np.abs(np.asarray(proc.velocity(u, batch))).max() <= 1.0
  # another image of the data (whole cells added) changes nothing
  shifted = batch.replace(frac=batch.frac + 3.0 * batch.atom_mask[:, None])
  ft2, u2 = proc.noise(rng, shifted, jnp.full(batch.num_atom_slots, 0.63))
  _periodic_close(ft2, proc.noise(rng, batch, jnp.full(batch.num_atom_slots, 0.63))[0], 1e-5)
  np.testing.assert_allclose(u2, proc.noise(rng, batch, jnp.full(
      batch.num_atom_slots, 0.63))[1], atol=1e-4)
  # at t = 1 the coordinates are uniform: mean 1/2, variance 1/12
  big = batch_lib.to_device(batch_lib.batch_from_atoms(
      datasets.builtin_structures() * 40))
  f1, _ = proc.noise(next(keys), big, jnp.ones(big.num_atom_slots))
  f1 = np.asarray(f1)[np.asarray(big.atom_mask)]
  assert abs(f1.mean() - 0.5) < 0.02 and abs(f1.var() - 1 / 12) < 0.01


def test_lattice_and_type_paths_are_straight(keys):
  batch = _batch()
  lat = flow.LatticeFlow()
  rng = next(keys)
  t = jnp.array([1.0, 0.5, 0.25, 0.0, 0.7])[:batch.num_graph_slots]
  t = jnp.resize(t, (batch.num_graph_slots,))
  lt, u = lat.noise(rng, batch, t)
  np.testing.assert_allclose(lat.advance(lt, u, t[:, None, None], 0.0, batch), batch.lattice,
                             atol=1e-5)
  # with time_power p the lattice sits at s = t^p on the same straight path
  late = flow.LatticeFlow(time_power=2.0)
  lt2, u2 = late.noise(rng, batch, t)
  s = np.asarray(t)[:, None, None]**2
  np.testing.assert_allclose(lt2, (1 - s) * np.asarray(batch.lattice)
                             + s * (np.asarray(batch.lattice) - np.asarray(u2)), atol=1e-5)
  np.testing.assert_allclose(u2, u, atol=1e-6)  # same prior draw, same target
  np.testing.assert_allclose(late.advance(lt2, u2, t[:, None, None], 0.0, batch),
                             batch.lattice, atol=1e-5)
  # at t = 1 the state is the N(0, 1) prior draw itself
  l1, _ = lat.noise(rng, batch, jnp.ones(batch.num_graph_slots))
  np.testing.assert_allclose(np.asarray(l1), np.asarray(batch.lattice) - np.asarray(u),
                             atol=1e-5)
  typ = flow.TypesFlow()
  x0, ut = typ.noise(next(keys), batch, jnp.zeros(batch.num_atom_slots))
  np.testing.assert_allclose(x0, typ.clean(batch), atol=1e-6)
  done = typ.finalize(batch, typ.clean(batch))
  np.testing.assert_array_equal(done.species, batch.species)


# An oracle network for one crystal: the exact conditional velocity toward
# that crystal, written as the network's regression target.
_ORACLE = {}


class OracleVelocity:
  nearest_image = False

  def __init__(self, settings, variables, cutoff):
    self.variables = variables

  def init(self, rng, batch, times, graph, noisy):
    return {}

  def apply(self, params, batch, times, graph, noisy):
    data = _ORACLE['batch']
    t = jnp.maximum(times, 1e-6)
    s = t**_ORACLE.get('lattice_power', 1.0)  # where the lattice is on its path
    lattice = (data.lattice - noisy['lattice']) / s[:, None, None]
    d = flow.shortest_displacement(data.frac - noisy['coords'])
    d = d - flow.crystal_mean(d, data)
    coords = d / t[data.graph_index][:, None] / flow.UNIFORM_DISPLACEMENT_STD
    return {'lattice': lattice, 'coords': jnp.where(data.atom_mask[:, None], coords, 0.0)}


if 'oracle_velocity' not in networks.NETWORKS:
  networks.register_network('oracle_velocity', OracleVelocity)
  tasks.register_task('oracle_csp_flow', tasks.Task(
      (('lattice', 'lattice_flow'), ('coords', 'frac_torus_flow')),
      'oracle_velocity', time='continuous'))


@pytest.mark.parametrize('method,steps,power', [
    ('euler', 1, 1.0), ('euler', 7, 1.0), ('heun', 3, 1.0), ('midpoint', 4, 1.0),
    ('euler', 7, 2.0), ('heun', 3, 2.0), ('midpoint', 4, 2.0)])
def test_ode_samplers_reach_the_data_under_the_exact_velocity(method, steps, power):
  """A one-crystal data set: its exact velocity carries every prior draw to
  the crystal (up to a shift) with any integrator and step count, also when
  the lattice runs on its own clock (time_power)."""
  batch = _batch(3)
  _ORACLE.update(batch=batch, lattice_power=power)
  model = model_lib.build(model_lib.ModelConfig(task='oracle_csp_flow', num_steps=10)
                          .with_process('lattice', time_power=power))
  assert model.processes['lattice'].time_power == power
  sample = jax.jit(samplers.get_sampler(
      model, samplers.SamplerConfig(name=method, num_steps=steps)))
  out, _, _ = sample(jax.random.PRNGKey(0), {}, batch)
  graphs = np.asarray(batch.graph_mask)
  lattice = np.asarray(out.lattice)[graphs]
  # finalize makes the cell right-handed; data cells already are
  np.testing.assert_allclose(lattice, np.asarray(batch.lattice)[graphs], atol=1e-4)
  mask = np.asarray(batch.atom_mask)
  frac, data = np.asarray(out.frac), np.asarray(batch.frac)
  for g in np.flatnonzero(graphs):
    rows = mask & (np.asarray(batch.graph_index) == g)
    shift = flow.shortest_displacement(frac[rows][0] - data[rows][0])
    _periodic_close(frac[rows] - shift, data[rows], 1e-4)
  # and the prior alone (no steps of the oracle) is far from it
  prior = sampling.initial_state(model, jax.random.PRNGKey(0), batch)
  assert np.abs(np.asarray(prior.xs['lattice'])[graphs] -
                np.asarray(batch.lattice)[graphs]).max() > 1.0


def test_anneal_slope_scales_only_coordinates():
  batch = _batch(2)
  _ORACLE['batch'] = batch
  model = model_lib.build(model_lib.ModelConfig(task='oracle_csp_flow', num_steps=10))
  run = lambda slope: jax.jit(samplers.get_sampler(model, samplers.SamplerConfig(
      name='euler', num_steps=2).with_settings(anneal_slope=slope)))(
          jax.random.PRNGKey(0), {}, batch)[0]
  plain, annealed = run(0.0), run(3.0)
  np.testing.assert_allclose(plain.lattice, annealed.lattice, atol=1e-5)
  assert np.abs(np.asarray(plain.frac - annealed.frac)).max() > 1e-3


def test_flow_loss_is_masked_and_depends_on_the_data(keys):
  model = model_lib.build(model_lib.ModelConfig(task='csp_flow', num_steps=20).with_network(
      **TINY_NETWORK))
  batch = _batch()
  params = model.init_params(next(keys), batch)
  loss_fn = jax.jit(losses.get_loss_fn(model))
  rng = next(keys)
  loss, aux = loss_fn(rng, params, batch)
  assert np.isfinite(loss) and set(aux) >= {'lattice', 'coords'}
  # padding does not count: garbage in padded slots leaves the loss unchanged
  pad = ~batch.atom_mask
  junk = batch.replace(frac=jnp.where(pad[:, None], 0.37, batch.frac))
  np.testing.assert_allclose(loss_fn(rng, params, junk)[0], loss, rtol=1e-5)
  moved = batch.replace(lattice=batch.lattice * 1.3)
  assert abs(float(loss_fn(rng, params, moved)[0]) - float(loss)) > 1e-3


# ----------------------------------------------------------------------------
# Few steps for score models.


def test_strided_grid():
  grid = times.DiscreteTime(1000)
  t, prev = map(np.asarray, grid.reverse_grid(7))
  assert t[0] == 1000 and prev[-1] == 0 and len(t) == 7
  np.testing.assert_array_equal(t[1:], prev[:-1])
  assert np.all(np.diff(t) < 0)
  full_t, full_prev = map(np.asarray, grid.reverse_grid())
  np.testing.assert_array_equal(full_t, np.arange(1000, 0, -1))
  with pytest.raises(ValueError, match='num_steps'):
    grid.reverse_grid(1001)
  ct, cprev = map(np.asarray, times.ContinuousTime(50).reverse_grid(4))
  np.testing.assert_allclose(ct, [1, .75, .5, .25]); np.testing.assert_allclose(cprev[-1], 0)


def test_ddim_is_exact_under_the_true_noise_and_ancestral_at_eta_one():
  sched = schedules.make_beta_schedule('cosine', 1000)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (6, 3, 3)) + 4.0
  eps = jax.random.normal(jax.random.PRNGKey(1), (6, 3, 3))
  grid = times.DiscreteTime(1000).reverse_grid(5)
  t0 = int(grid[0][0]) - 100  # from where the noise can still be undone in float32
  ab = sched.alpha_bars[t0]
  x = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
  for t, prev in [(t0, 500), (500, 37), (37, 0)]:
    tt, pp = jnp.full((6,), t), jnp.full((6,), prev)
    true_eps = (x - jnp.sqrt(sched.alpha_bars[t]) * x0) / jnp.sqrt(1 - sched.alpha_bars[t])
    x = updates.ddim_step(None, x, true_eps, tt, pp, sched, 0.0)[0]
  np.testing.assert_allclose(x, x0, atol=2e-3)
  # eta = 1 over one step is DDPM's own ancestral step (same mean and noise)
  t, rng = jnp.full((6,), 300), jax.random.PRNGKey(5)
  a = updates.ddpm_predictor(rng, x, eps, t, sched)
  b = updates.ddim_step(rng, x, eps, t, t - 1, sched, 1.0)
  np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a[0], b[0], rtol=1e-3, atol=1e-4)


def test_ve_ddim_reaches_x0_under_the_exact_score():
  x0 = jnp.array([0.3, -1.2])
  sigmas = [0.5, 0.2, 0.05, 0.0]
  x = x0 + sigmas[0] * jnp.array([1.0, -0.4])
  for s, sp in zip(sigmas[:-1], sigmas[1:]):
    x = updates.ve_ddim_step(x, -(x - x0) / s**2, s, sp)
  np.testing.assert_allclose(x, x0, atol=1e-6)


def test_strided_predictor_over_one_step_is_ddpms(keys):
  """On a stride of one step the strided (DDIM, eta = 1) predictor is DDPM's
  ancestral step (where alpha_bar_t is above the x0 floor, i.e. not at the
  last steps of the schedule); the full grid keeps DDPM's form."""
  model = model_lib.build(model_lib.ModelConfig(task='dng', num_steps=20).with_network(
      **TINY_NETWORK))
  batch = _batch()
  for name in ('lattice', 'types'):
    proc = model.processes[name]
    x = proc.clean(batch) + 0.3
    out = jax.random.normal(next(keys), x.shape)
    rng = next(keys)
    assert proc.schedule.alpha_bars[15] > updates.X0_ALPHA_BAR_FLOOR
    for t in (15, 7, 2):
      got = score_steps.predict(proc, rng, x, out, jnp.int32(t), jnp.int32(t - 1), batch,
                                strided=True)
      want = score_steps.predict(proc, rng, x, out, jnp.int32(t), jnp.int32(t - 1), batch)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name,steps,calls', [('pc', 5, 10), ('ddim', 5, 5),
                                              ('pc', 20, 40)])
def test_score_model_few_step_samplers(name, steps, calls):
  model = model_lib.build(model_lib.ModelConfig(task='csp', num_steps=20).with_network(
      **TINY_NETWORK))
  batch = _batch()
  params = model.init_params(jax.random.PRNGKey(0), batch)
  config = samplers.SamplerConfig(name=name, num_steps=steps)
  assert config.calls_per_structure(model) == calls
  sample = jax.jit(samplers.get_sampler(model, config))
  a, _, overflow = sample(jax.random.PRNGKey(1), params, batch)
  b, _, _ = sample(jax.random.PRNGKey(2), params, batch)
  assert np.isfinite(np.asarray(a.frac)).all() and not np.any(np.asarray(overflow))
  assert np.abs(np.asarray(a.frac - b.frac)).max() > 1e-3  # the key matters
  # the jitted sampler is the sampler
  c, _, _ = samplers.get_sampler(model, config)(jax.random.PRNGKey(1), params, batch)
  np.testing.assert_allclose(a.frac, c.frac, atol=1e-4)


def test_sampler_config_refuses_what_cannot_run():
  flow_model = model_lib.build(model_lib.ModelConfig(task='csp_flow', num_steps=20)
                               .with_network(**TINY_NETWORK))
  score_model = model_lib.build(model_lib.ModelConfig(task='csp', num_steps=20)
                                .with_network(**TINY_NETWORK))
  with pytest.raises(errors.UserError, match="sampler 'pc' runs score models"):
    samplers.SamplerConfig(name='pc').resolve(flow_model)
  with pytest.raises(errors.UserError, match="sampler 'heun' runs flow models"):
    samplers.SamplerConfig(name='heun').resolve(score_model)
  with pytest.raises(errors.UserError, match=r'must be in 1\.\.20'):
    samplers.SamplerConfig(num_steps=21).resolve(score_model)
  assert samplers.SamplerConfig().resolve(flow_model).name == 'euler'
  assert samplers.SamplerConfig().calls_per_structure(score_model) == 40
  assert samplers.SamplerConfig(name='heun', num_steps=50).calls_per_structure(
      flow_model) == 99
  tuned = samplers.SamplerConfig('pc', 20).with_settings(step_lr=5e-6)
  assert samplers.SamplerConfig.from_dict(tuned.to_dict()) == tuned
  # the flat form runs stored before the samplers owned their settings
  assert samplers.SamplerConfig.from_dict(dict(
      name='pc', num_steps=20, step_lr=5e-6, corrector_steps=1, anneal_slope=0.0)) == tuned
  assert tuned.calls_per_structure(score_model) == 40
  assert tuned.with_settings(corrector_steps=0).calls_per_structure(score_model) == 20
  with pytest.raises(errors.ConfigError, match=r"^sampler 'heun': unknown setting"):
    samplers.SamplerConfig('heun').with_settings(step_lr=1e-5).resolve(flow_model)


def test_process_views_of_a_flow_model(keys):
  from jaxcrystal.plotting import process_views
  model = model_lib.build(model_lib.ModelConfig(task='csp_flow', num_steps=20).with_network(
      **TINY_NETWORK))
  diamond = datasets.builtin_structures()[14]
  params = model.init_params(next(keys), batch_lib.to_device(
      batch_lib.batch_from_atoms([diamond])))
  frames, labels = process_views.forward_snapshots(next(keys), model, diamond)
  np.testing.assert_allclose(frames[0].positions, diamond.positions)
  assert not np.allclose(frames[-1].cell[:], diamond.cell[:])
  frames, labels = process_views.sampling_trajectory(
      next(keys), model, params, diamond.numbers,
      sampler=samplers.SamplerConfig(name='heun', num_steps=10))
  assert len(frames) == 5 and labels[-1] == 'step 10 of 10 (heun)'


def test_a_periodic_checkpoint_loads_by_its_step():
  """`--which=STEP` of benchmark_sampling_steps.py: a kept step loads, with
  the run's stored sampler defaults (none in a run older than them); a step
  that was not kept is named with the ones that were."""
  from pathlib import Path
  from jaxcrystal.generative import generate
  run = Path(__file__).parent / 'fixtures' / 'legacy_run_csp'
  _, _, config, step = generate.load_run(run, '20')
  assert step == 20 and config.sampling == samplers.SamplerConfig()
  assert generate.load_run(run, 'latest')[3] == 30
  with pytest.raises(errors.NotARunError, match=r'no checkpoint at step 25 \(kept: \[20, 30\]\)'):
    generate.load_run(run, '25')
