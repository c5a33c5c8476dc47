import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cif_text
from helpers import write_cdvae_csv

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import pipeline as data_lib
from jaxcrystal.data import datasets
from jaxcrystal.generative import losses
from jaxcrystal.generative import model as model_lib
from jaxcrystal.training import state as state_lib
from jaxcrystal.generative import generate
from jaxcrystal.generative import schedules
from jaxcrystal.generative import train

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = model_lib.ModelConfig(num_steps=50).with_network(hidden=16, num_layers=1,
                                                              num_freqs=4, time_dim=8)
TINY_FLAGS = ['--network.hidden=16', '--network.num_layers=1', '--network.num_freqs=4',
              '--network.time_dim=8',
              '--num_steps=50', '--batch_size=7', '--num_buckets=1', '--progress=false']


def _state_and_step(task='csp', lr=3e-3):
  spec = model_lib.build(dataclasses.replace(TINY_MODEL, task=task))
  loss_fn = losses.get_loss_fn(spec)
  opt = state_lib.make_optimizer(state_lib.OptimConfig(learning_rate=lr, warmup_steps=1,
                                               schedule='constant'), 100)
  batch = batch_lib.to_device(batch_lib.batch_from_atoms(datasets.builtin_structures()))
  state = train.create_train_state(jax.random.PRNGKey(0), spec, batch, opt)
  return spec, loss_fn, state, jax.jit(state_lib.make_train_step(loss_fn, opt, 0.9)), batch


@pytest.mark.parametrize('task', ['csp', 'dng'])
def test_training_lowers_the_loss(task):
  spec, loss_fn, state, step, batch = _state_and_step(task)
  keys = [jax.random.PRNGKey(k) for k in range(16)]
  evaluate = jax.jit(lambda p: jnp.mean(jnp.stack(
      [loss_fn(k, p, batch)[0] for k in keys])))
  before = float(evaluate(state.params))
  for _ in range(150):
    state, metrics = step(state, batch)
  after = float(evaluate(state.params))
  assert after < 0.8 * before, (before, after)
  assert int(state.step) == 150 and int(state.skipped) == 0
  assert set(metrics) >= {'loss', 'lattice', 'coords', 'grad_norm'}
  if task == 'dng':
    assert 'types' in metrics
  # EMA moved towards the parameters but is not equal to them
  leaf = lambda t: jax.tree_util.tree_leaves(t)[0]
  assert not np.allclose(leaf(state.ema_params), leaf(state.params))


def test_non_finite_loss_skips_update_and_counts():
  _, _, state, step, batch = _state_and_step()
  with jax.debug_nans(False):
    bad = batch.replace(frac=batch.frac.at[0, 0].set(jnp.nan))
    new, metrics = step(state, bad)
  assert int(new.skipped) == 1 and int(new.step) == 1
  assert not bool(metrics['finite'])
  chex.assert_trees_all_equal(new.params, state.params)
  chex.assert_trees_all_equal(new.opt_state, state.opt_state)
  chex.assert_trees_all_equal(new.ema_params, state.ema_params)
  good, _ = step(*step(new, batch)[:1], batch)  # and training goes on
  assert int(good.skipped) == 1
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
  assert not np.allclose(flat(good.params), flat(state.params))


def test_loss_at_times_is_the_training_loss_at_its_times():
  spec, loss_fn, state, _, batch = _state_and_step('dng')  # all three terms
  loss_at_times = jax.jit(losses.get_loss_at_times_fn(spec))
  rng = jax.random.PRNGKey(3)
  t = schedules.sample_timesteps(jax.random.split(rng, 4)[0], batch.num_graph_slots,
                                spec.config.num_steps)
  expected, expected_aux = jax.jit(loss_fn)(rng, state.params, batch)
  got, aux = loss_at_times(rng, state.params, batch, t)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  chex.assert_trees_all_close(aux, expected_aux, rtol=1e-5)
  # Fixed times give other losses: the noise level is really set by t.
  ones = jnp.ones_like(t)
  low, _ = loss_at_times(rng, state.params, batch, ones)
  high, _ = loss_at_times(rng, state.params, batch, ones * spec.config.num_steps)
  assert float(low) > 0 and float(high) > 0 and abs(float(low) - float(high)) > 1e-3


def test_loss_at_times_can_hand_a_variable_over_clean():
  spec, _, state, _, batch = _state_and_step('csp')
  rng = jax.random.PRNGKey(3)
  t = jnp.full((batch.num_graph_slots,), spec.config.num_steps)  # noisiest lattice
  noised = jax.jit(losses.get_loss_at_times_fn(spec))
  clean = jax.jit(losses.get_loss_at_times_fn(spec, clean=('lattice',)))
  loss, aux = clean(rng, state.params, batch, t)
  _, noised_aux = noised(rng, state.params, batch, t)
  assert 'lattice' not in aux and float(loss) == pytest.approx(float(aux['coords']))
  # same coordinate noise (same keys), other network input: the coords term moves
  assert abs(float(aux['coords']) - float(noised_aux['coords'])) > 1e-4
  with pytest.raises(ValueError, match='unknown variables'):
    losses.get_loss_at_times_fn(spec, clean=('cell',))
  with pytest.raises(ValueError, match='must stay noised'):
    losses.get_loss_at_times_fn(spec, clean=('lattice', 'coords'))


def test_loss_by_noise_level_reads_one_for_an_ignorant_model():
  spec, _, state, _, _ = _state_and_step('csp')
  dataset = data_lib.BucketedDataset(datasets.builtin_structures(), 8)
  steps = [1, 10, spec.config.num_steps]
  # Zero weights predict a zero score: the unit-variance coordinate target
  # then costs 1 at every noise level, what the report's scale says.
  zero = jax.tree_util.tree_map(jnp.zeros_like, state.params)
  ignorant = train.loss_by_noise_level(spec, zero, dataset, steps, progress=False)
  assert ignorant['t'].tolist() == steps
  np.testing.assert_allclose(ignorant['coords'], 1.0, atol=0.3)
  sigmas = ignorant['sigma_frac']
  assert np.all(np.diff(sigmas) > 0) and sigmas[0] == pytest.approx(
      spec.config.process_table()[1][2].sigma_begin, rel=1e-3)
  trained = train.loss_by_noise_level(spec, state.params, dataset, steps,
                                      progress=False)
  assert not np.allclose(trained['coords'], ignorant['coords'])
  assert set(trained) >= {'t', 'sigma_frac', 'coords', 'lattice', 'loss'}
  with pytest.raises(ValueError, match='timesteps must be in 1..50'):
    train.loss_by_noise_level(spec, zero, dataset, [0, 51], progress=False)


def test_niggli_option_reduces_skewed_training_cells(tmp_path):
  from ase.build import bulk
  from ase.neighborlist import neighbor_list
  diamond = bulk('C', 'diamond', a=3.57)
  skewed = diamond.copy()
  # Same lattice, a needlessly skewed basis: a2 + 3 a1, a3 - 2 a2.
  cell = diamond.cell[:].copy()
  cell[1] += 3 * cell[0]
  cell[2] -= 2 * cell[1]
  skewed.set_cell(cell, scale_atoms=False)
  skewed.wrap()
  csv_path = tmp_path / 'skewed.csv'
  write_cdvae_csv(csv_path, [('s', cif_text(skewed, tmp_path))])
  base = train.TrainConfig(train_data=str(csv_path), progress=False)
  kept, _ = train.load_structures(str(csv_path), base)
  reduced, _ = train.load_structures(
      str(csv_path), train.TrainConfig(**{**base.__dict__, 'niggli': True}))
  longest = lambda a: a.cell.lengths().max()
  assert longest(kept[0]) > 2 * longest(diamond)
  np.testing.assert_allclose(sorted(reduced[0].cell.lengths()),
                             sorted(diamond.cell.lengths()), rtol=1e-4)
  # the same crystal: volume and nearest-neighbour distances are unchanged
  assert reduced[0].get_volume() == pytest.approx(kept[0].get_volume(), rel=1e-5)
  bonds = lambda a: np.sort(neighbor_list('d', a, 1.6))
  np.testing.assert_allclose(bonds(reduced[0]), bonds(kept[0]), atol=1e-4)
  # configs written before the option existed still load (niggli off)
  old = base.to_dict()
  del old['niggli']
  assert train.TrainConfig.from_dict(old).niggli is False


def test_coord_learning_curve_is_a_per_step_loss_that_depends_on_the_seed():
  from jaxcrystal.recipes import benchmarks
  structures = datasets.builtin_structures()
  curve = benchmarks.coord_learning_curve(structures, TINY_MODEL, steps=12, max_t=5,
                                          batch_size=8, learning_rate=3e-3, num_buckets=1)
  chex.assert_shape(curve, (12,))
  assert np.all(np.isfinite(curve)) and np.all(curve > 0)
  other = benchmarks.coord_learning_curve(structures, TINY_MODEL, steps=12, max_t=5,
                                          batch_size=8, learning_rate=3e-3, num_buckets=1,
                                          seed=1)
  assert not np.allclose(curve, other)
  with pytest.raises(ValueError, match='max_t must be in 1..50'):
    benchmarks.coord_learning_curve(structures, TINY_MODEL, steps=5, max_t=51)


def _run(args, **kw):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, **kw)


def _final_params(workdir):
  _, params, _, step = generate.load_run(workdir, which='latest', use_ema=False)
  _, ema, _, _ = generate.load_run(workdir, which='latest', use_ema=True)
  return params, ema, step


def test_sigkill_and_resume_gives_identical_parameters(tmp_path):
  args = ['experiments/train_ddpm.py', *TINY_FLAGS, '--train_steps=200',
          '--checkpoint_every=20', '--keep_checkpoints=2', '--optim.schedule=cosine',
          '--optim.warmup_steps=20', '--eval_every=100']
  full = tmp_path / 'full'
  res = _run(args + [f'--workdir={full}'], timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]

  killed = tmp_path / 'killed'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.Popen([sys.executable, *args, f'--workdir={killed}'], cwd=ROOT,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in (killed / 'checkpoints').glob('[0-9]*')
             if p.name.isdigit()] if (killed / 'checkpoints').is_dir() else []
    if steps and max(steps) >= 60:
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'train_summary.json').exists(), 'run finished before the kill'
  # refuses to overwrite a run without --resume
  again = _run(args + [f'--workdir={killed}'], timeout=300)
  assert again.returncode != 0 and '--resume' in again.stderr
  res = _run(args + [f'--workdir={killed}', '--resume'], timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  p_full, ema_full, s_full = _final_params(full)
  p_res, ema_res, s_res = _final_params(killed)
  assert s_full == s_res == 200
  chex.assert_trees_all_close(p_res, p_full, atol=1e-6, rtol=1e-6)
  chex.assert_trees_all_close(ema_res, ema_full, atol=1e-6, rtol=1e-6)
  # metrics read as one run, with the training curve written
  steps = [r['step'] for r in map(json.loads, (killed / 'metrics.jsonl').read_text()
                                  .splitlines()) if r['split'] == 'train']
  assert steps == sorted(set(steps)) and steps[-1] == 200
  assert (killed / 'training_curve.png').stat().st_size > 1000
  assert (killed / 'flags.txt').read_text().count('--network.hidden=16') == 1


def test_bad_flags_and_paths_are_rejected_clearly(tmp_path):
  res = _run(['experiments/train_ddpm.py', f'--workdir={tmp_path}',
              '--train_data=/no/such/file.csv'], timeout=120)
  assert res.returncode != 0 and '--train_data must be "builtin" or an existing' \
      in res.stderr
  res = _run(['experiments/train_ddpm.py', f'--workdir={tmp_path}', '--hiden=3'],
             timeout=120)
  assert res.returncode != 0 and 'hiden' in res.stderr
  res = _run(['experiments/train_ddpm.py', f'--workdir={tmp_path}',
              '--network.edge_score_head'], timeout=120)
  assert res.returncode == 2 and ("error: --network.edge_score_head: network 'cspnet': "
                                 'edge_score_head needs distance_basis >= 1') in res.stderr
  res = _run(['experiments/train_ddpm.py', f'--workdir={tmp_path}', '--batch_size=0'],
             timeout=120)
  assert res.returncode != 0 and 'train: batch_size must be >= 1' in res.stderr


SHARDED_SCRIPT = r'''
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np, chex
from jaxcrystal.data import pipeline as data
from jaxcrystal.data import datasets
from jaxcrystal.generative import losses
from jaxcrystal.generative import model as model_lib
from jaxcrystal.training import state as state_lib
from jaxcrystal.training import sharding
from jaxcrystal.generative import train
assert jax.local_device_count() == 4, jax.devices()
spec = model_lib.build(model_lib.ModelConfig(num_steps=50).with_network(
    hidden=16, num_layers=1, num_freqs=4, time_dim=8))
ds = data.BucketedDataset(datasets.builtin_structures(), 7, (16,), num_devices=4)
host = ds.batch_for_step(0, 0)
opt = state_lib.make_optimizer(state_lib.OptimConfig(warmup_steps=1), 10)
loss_fn = losses.get_loss_fn(spec)
step = jax.jit(state_lib.make_train_step(loss_fn, opt, 0.9))
single_dev = jax.devices()[:1]
state = train.create_train_state(jax.random.PRNGKey(0), spec, host, opt)
s1 = jax.device_put(state, single_dev[0])
b1 = jax.device_put(host, single_dev[0])
for _ in range(3):
  s1, m1 = step(s1, b1)
mesh = sharding.make_mesh()
s4 = sharding.replicate(state, mesh)
b4 = sharding.shard_batch(host, mesh)
assert len(b4.frac.sharding.device_set) == 4
for _ in range(3):
  s4, m4 = step(s4, b4)
chex.assert_trees_all_close(jax.device_get(s4.params), jax.device_get(s1.params),
                            atol=2e-5, rtol=2e-5)
np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-5)
assert float(m1["loss"]) > 0
print("SHARDED_OK", float(m1["loss"]))
'''


def test_sharded_step_matches_single_device():
  res = _run(['-c', SHARDED_SCRIPT], timeout=300)
  assert res.returncode == 0 and 'SHARDED_OK' in res.stdout, res.stderr[-3000:]


def test_train_then_sample_cli_end_to_end(tmp_path):
  run = tmp_path / 'run'
  res = _run(['experiments/train_ddpm.py', *TINY_FLAGS, '--train_steps=20',
              '--checkpoint_every=10', '--val_data=builtin', '--eval_every=10',
              f'--workdir={run}'], timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert (run / 'best').is_dir() and (run / 'config.json').is_file()
  out = tmp_path / 'samples'
  res = _run(['experiments/sample.py', f'--checkpoint={run}', '--formula=Fe2',
              '--num_samples=6', '--batch_size=4', f'--out={out}', '--progress=false',
              '--symmetrize=0.1', '--repel=0.7'], timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['num_samples'] == 6
  parts = ('setup_s', 'compile_s', 'sample_s', 'host_batching_s', 'validation_s',
           'writing_s')
  assert all(summary[k] > 0 for k in parts), {k: summary.get(k) for k in parts}
  assert len(list((out / 'cifs').glob('*.cif'))) == 6
  arrays = np.load(out / 'samples.npz')
  assert arrays['num_atoms'].tolist() == [2] * 6
  assert set(arrays['atom_types'].tolist()) == {26}
  # symmetrized beside the raw samples, with the space-group report
  refined = ase.io.read(out / 'symmetrized' / 'samples.extxyz', ':')
  assert len(refined) == 6 and all(a.info['symprec'] == 0.1 for a in refined)
  report = json.loads((out / 'space_groups.json').read_text())
  assert list(report['non_p1_share']) == ['raw samples', 'symmetrized']
  assert summary['non_p1_share'] == report['non_p1_share']
  assert (out / 'space_groups.png').stat().st_size > 1000
  # and with close atoms pushed apart, counted in the summary
  repelled = ase.io.read(out / 'repelled' / 'samples.extxyz', ':')
  assert len(repelled) == 6 and summary['repulsion']['num_structures'] == 6
  assert summary['repulsion']['valid_after'] >= summary['repulsion']['valid_before']
  # (an occupied --out is one line: tests/test_bad_inputs.py, test_output_safety.py)
  res = _run(['experiments/sample.py', f'--checkpoint={run}', f'--out={tmp_path / "o2"}'],
             timeout=120)
  assert res.returncode != 0 and 'needs --formula or --compositions_from' in res.stderr
  # The benchmark runner on a random 3-row subset of a CDVAE-layout file, K = 2.
  test_csv = tmp_path / 'test.csv'
  write_cdvae_csv(test_csv, [(f'b{i}', cif_text(a, tmp_path))
                             for i, a in enumerate(datasets.builtin_structures())])
  bench = tmp_path / 'bench'
  res = _run(['experiments/run_benchmark.py', '--task=csp', '--dataset=perov_5',
              f'--checkpoint={run}', f'--test_csv={test_csv}', '--num_samples=2',
              '--num_targets=3', '--workers=1', f'--out={bench}', '--progress=false'],
             timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  result = json.loads((bench / 'metrics.json').read_text())
  assert result['num_generated'] == 6 and result['k'] == 2
  assert result['test_rows_evaluated'] == 3 and result['test_rows_in_file'] == 21
  assert 0.0 <= result['match_rate'] <= result['match_rate_k'] <= 1.0
  assert 'random subset of 3 of the 21' in (bench / 'metrics.md').read_text()
  res = _run(['experiments/run_benchmark.py', '--task=csp', '--dataset=perov_5',
              f'--checkpoint={run}', f'--test_csv={test_csv}', '--num_targets=50',
              f'--out={tmp_path / "bench2"}'], timeout=120)
  assert res.returncode != 0 and 'asked for 50 rows' in res.stderr
  noise = tmp_path / 'noise'
  res = _run(['experiments/loss_by_noise_level.py', f'--checkpoint={run}',
              f'--data={test_csv}', '--timesteps=1,50', f'--out={noise}',
              '--progress=false'], timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  report = json.loads((noise / 'loss_by_noise_level.json').read_text())
  assert report['t'] == [1, 50] and report['num_structures'] == 21
  assert all(v > 0 for v in report['coords'])
  assert (noise / 'loss_by_noise_level.png').stat().st_size > 0
  res = _run(['experiments/loss_by_noise_level.py', f'--checkpoint={run}',
              '--timesteps=0,51', f'--out={tmp_path / "noise2"}'], timeout=120)
  assert res.returncode != 0 and 'timesteps must be in 1..50' in res.stderr


def test_prefetch_yields_the_plain_sequence_and_raises_where_due():
  import threading
  from jaxcrystal.training import loop as loop_lib
  calls = []

  def batch_for_step(step):
    calls.append(threading.current_thread().name)
    if step == 7:
      raise ValueError('bad batch 7')
    return step * 10
  with loop_lib.prefetch(batch_for_step, 2, 7, depth=2) as batches:
    assert list(batches) == [20, 30, 40, 50, 60]
  assert set(calls) == {'batch-prefetch'}          # built off the main thread
  got = []
  with pytest.raises(ValueError, match='bad batch 7'):
    with loop_lib.prefetch(batch_for_step, 5, 10, depth=3) as batches:
      for b in batches:
        got.append(b)
  assert got == [50, 60]                           # raised where its batch is due
  with loop_lib.prefetch(batch_for_step, 0, 1000, depth=2) as batches:
    assert next(batches) == 0                      # an early exit stops the thread
  assert not any(t.name == 'batch-prefetch' for t in threading.enumerate())
  with loop_lib.prefetch(lambda s: s, 0, 3, depth=0) as batches:
    assert list(batches) == [0, 1, 2]


def test_no_compilation_after_the_first_epoch(tmp_path):
  """Three epochs across every size bucket, with logging and checkpoints:
  everything compiles in the first epoch (each bucket's step, the first log
  and checkpoint), nothing after. Fails if a per-step recompile creeps in."""
  from jaxcrystal.generative import model as model_lib
  from jaxcrystal.generative import train as train_lib
  from jaxcrystal.training import loop as loop_lib
  config = train_lib.TrainConfig(
      model=model_lib.ModelConfig(num_steps=10).with_network(
          hidden=8, num_layers=1, num_freqs=2, time_dim=4),
      batch_size=4, num_buckets=3, train_steps=1, progress=False)
  t = train_lib.build_training(config, log=lambda *_: None)
  epoch = t.train_set.steps_per_epoch()
  assert len(t.train_set.budgets) == 3
  steps_done, compiled_at = [0], []

  def listen(event, duration, **kwargs):
    if event == '/jax/core/compile/backend_compile_duration':
      compiled_at.append(steps_done[0])
  jax.monitoring.register_event_duration_secs_listener(listen)

  def counted_step(state, batch):
    steps_done[0] += 1
    return t.train_step(state, batch)
  loop = loop_lib.LoopConfig(train_steps=3 * epoch, log_every=3, checkpoint_every=epoch,
                             progress=False)
  loop_lib.run(tmp_path / 'run', loop, t.replicate(t.state), counted_step,
               lambda s: t.batch_for_step(config.seed, s), log=lambda *_: None)
  assert steps_done[0] == 3 * epoch and compiled_at
  assert max(compiled_at) <= epoch + 1, (epoch, compiled_at)


def test_validation_batches_are_built_once_and_reused(tmp_path, monkeypatch):
  """Three validations gather the validation set twice in all (once for the
  edge-capacity check, once for the device copy), and the kept batches give
  the same losses for the same parameters every time."""
  from jaxcrystal.data import pipeline as data_lib
  from jaxcrystal.generative import model as model_lib
  from jaxcrystal.generative import train as train_lib
  calls = []
  original = data_lib.BucketedDataset.all_batches
  monkeypatch.setattr(data_lib.BucketedDataset, 'all_batches',
                      lambda self: calls.append(id(self)) or original(self))
  config = train_lib.TrainConfig(
      model=model_lib.ModelConfig(num_steps=10).with_network(
          hidden=8, num_layers=1, num_freqs=2, time_dim=4),
      batch_size=4, num_buckets=2, train_steps=3, eval_every=1,
      val_data='builtin', progress=False)
  t = train_lib.build_training(config, log=lambda *_: None)
  first = t.val_batches()
  assert t.val_batches() is first and first
  losses_twice = [train_lib.evaluate(t.eval_step, t.state.ema_params, t.val_batches(),
                                     0) for _ in range(2)]
  assert losses_twice[0] == losses_twice[1]
  calls.clear()
  train_lib.train_and_evaluate(config, tmp_path / 'run', log=lambda *_: None)
  records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl')
             .read_text().splitlines()]
  assert sum(r['split'] == 'val' for r in records) == 3
  # per dataset: the edge-capacity check and the one device copy
  assert sorted(calls.count(c) for c in set(calls)) == [1, 2], calls


def test_compiled_programs_loaded_from_the_cache_train_the_same(tmp_path):
  """The persistent compilation cache (`--compilation_cache`): a first run
  compiles and fills it, a second loads everything from it, and both end
  with exactly the same parameters."""
  cache = tmp_path / 'xla'
  args = ['experiments/train_ddpm.py', *TINY_FLAGS, '--train_steps=4',
          '--eval_every=4', '--checkpoint_every=4']
  finals = []
  for name, folder in (('cold', cache), ('warm', cache)):
    env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
    res = subprocess.run([sys.executable, *args, f'--workdir={tmp_path / name}',
                          f'--compilation_cache={folder}'], cwd=ROOT, timeout=300,
                         env=dict(env, JAX_PLATFORMS='cpu'), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    finals.append(_final_params(tmp_path / name))
    if name == 'cold':
      kept = sorted(p.name for p in cache.iterdir())
      assert any('train_step' in k for k in kept), kept
    if name == 'warm':  # everything it needed was there: nothing new kept
      assert sorted(p.name for p in cache.iterdir()) == kept
  for other in finals[1:]:
    chex.assert_trees_all_equal(other[0], finals[0][0])
    chex.assert_trees_all_equal(other[1], finals[0][1])


def test_a_run_stored_in_the_flat_layout_resumes_and_keeps_its_settings(tmp_path):
  """Runs written before issue 31 stored the process settings as flat model
  fields: `--resume` reads them into the process table, continues a run with
  the same settings and refuses one whose settings differ, naming the field."""
  from jaxcrystal import errors
  from jaxcrystal.generative import model as model_lib
  from jaxcrystal.generative import train as train_lib
  config = train_lib.TrainConfig(
      model=model_lib.ModelConfig(num_steps=10).with_network(
          hidden=8, num_layers=1, num_freqs=2, time_dim=4),
      batch_size=7, num_buckets=1, train_steps=2, checkpoint_every=2, progress=False)
  run = tmp_path / 'run'
  train_lib.train_and_evaluate(config, run, log=lambda *_: None)
  path = run / 'config.json'
  stored = json.loads(path.read_text())
  assert [p['process'] for p in stored['model']['processes']] == \
      ['lattice_ddpm', 'frac_wrapped_normal']
  flat = dict(stored, model={k: v for k, v in stored['model'].items() if k != 'processes'})
  flat['model'].update(beta_schedule='cosine', sigma_begin=0.005, sigma_end=0.5,
                       cart_sigma_begin=0.01, cart_sigma_end=1.0)
  path.write_text(json.dumps(flat))
  longer = dataclasses.replace(config, train_steps=4, checkpoint_every=4)
  summary = train_lib.train_and_evaluate(longer, run, resume=True, log=lambda *_: None)
  assert summary['final_step'] == 4
  assert json.loads(path.read_text())['model']['processes'] == stored['model']['processes']
  flat['model']['sigma_end'] = 0.4
  path.write_text(json.dumps(flat))
  with pytest.raises(errors.ConfigChangedError,
                     match=r'model\.processes\.1\.settings\.sigma_end: 0\.4 -> 0\.5'):
    train_lib.train_and_evaluate(dataclasses.replace(longer, train_steps=6), run,
                                 resume=True, log=lambda *_: None)


FLAG_FILES_SCRIPT = r'''
import os, sys, json
sys.path.insert(0, "experiments")
from absl import flags
import train_flags
FLAGS = flags.FLAGS
resolved = {}
for name in sorted(os.listdir("experiments/flags")):
  if not name.endswith(".flags") or name.startswith(("graph_", "healing")):
    continue
  FLAGS(["x", "--flagfile=experiments/flags/" + name, "--workdir=/tmp/none",
         "--train_data=builtin", "--val_data=README.md"])  # any file: nothing is read
  resolved[name] = train_flags.read_config().to_dict()
  for flag in FLAGS:
    FLAGS[flag].unparse()
print(json.dumps(resolved))
'''


def test_every_training_flag_file_composes_into_a_valid_config():
  """The crystal flag files include shared pieces (experiments/flags/base:
  dataset, network size, CPU or GPU schedule) with nested --flagfile: each
  resolves to a valid configuration, and the pieces land where they should."""
  res = _run(['-c', FLAG_FILES_SCRIPT], timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  resolved = json.loads(res.stdout.strip().splitlines()[-1])
  assert len(resolved) >= 18
  flow_cpu = resolved['perov5_csp_flow_cpu.flags']
  assert flow_cpu['model']['network']['settings']['hidden'] == 128
  assert (flow_cpu['max_atoms'], flow_cpu['optim']['schedule'],
          flow_cpu['train_steps'], flow_cpu['sampling']['settings']['anneal_slope']) == \
      (20, 'cosine', 16000, 5.0)
  masked = resolved['perov5_dng_flow_cpu.flags']
  assert [p['process'] for p in masked['model']['processes']] == \
      ['lattice_flow', 'frac_torus_flow', 'types_masked']
  assert (masked['monitor_every'], masked['loss_weights']['types'],
          masked['train_steps']) == (1000, 1.0, 8000)
  assert [p['process'] for p in resolved['perov5_dng_masked_cpu.flags']['model'][
      'processes']] == ['lattice_ddpm', 'frac_wrapped_normal', 'types_masked']
  big = resolved['carbon24_dng.flags']
  assert big['model']['network']['settings']['hidden'] == 512
  assert (big['max_atoms'], big['optim']['schedule'], big['loss_weights']['types']) == \
      (24, 'plateau', 20.0)


def test_init_from_copies_the_source_and_initialises_only_the_new_condition(tmp_path):
  """Fine-tuning (`init_from`): an unconditional run's EMA parameters start
  a model conditioned on chemical_system; every source parameter arrives
  unchanged, the condition's embedding keeps its fresh initialisation, the
  EMA starts equal to the parameters, and a network of another size is
  refused naming a parameter."""
  from jaxcrystal import errors
  from jaxcrystal.generative import model as model_lib
  from jaxcrystal.generative import train as train_lib
  from jaxcrystal.training import warm_start
  tiny = model_lib.ModelConfig(task='dng_flow', num_steps=10).with_network(
      hidden=8, num_layers=1, num_freqs=2, time_dim=4)
  source = train_lib.TrainConfig(model=tiny, batch_size=4, num_buckets=1, train_steps=3,
                                 progress=False)
  train_lib.train_and_evaluate(source, tmp_path / 'a', log=lambda *_: None)
  _, source_params, _, _ = generate.load_run(tmp_path / 'a')
  conditioned = dataclasses.replace(source, model=dataclasses.replace(
      tiny.with_condition('chemical_system', 'element_set'), condition_dropout=0.1))
  t = train_lib.build_training(conditioned, log=lambda *_: None)
  said = []
  state = train_lib.warm_started(t.state, str(tmp_path / 'a'), log=said.append)
  flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v) for k, v in
                       jax.tree_util.tree_flatten_with_path(tree)[0]}
  got, fresh, src = flat(state.params), flat(t.state.params), flat(source_params)
  new = sorted(set(got) - set(src))
  assert new and all('condition' in path for path in new), new
  for path, value in src.items():
    np.testing.assert_array_equal(got[path], value)
  for path in new:
    np.testing.assert_array_equal(got[path], fresh[path])
  assert any(not np.array_equal(fresh[p], src[p]) for p in src)  # the copy did something
  for path, value in flat(state.ema_params).items():
    np.testing.assert_array_equal(value, got[path])
  assert int(state.step) == 0
  assert said and f'{len(src)} parameter arrays copied, {len(new)} new' in said[0]
  # It trains from there, and the run records where it started.
  train_lib.train_and_evaluate(dataclasses.replace(
      conditioned, init_from=str(tmp_path / 'a'), train_steps=2), tmp_path / 'b',
      log=lambda *_: None)
  assert json.loads((tmp_path / 'b' / 'config.json').read_text())['init_from'] == str(
      tmp_path / 'a')
  wider = train_lib.build_training(dataclasses.replace(source, model=tiny.with_network(
      hidden=16, num_layers=1, num_freqs=2, time_dim=4)), log=lambda *_: None)
  with pytest.raises(errors.UserError, match=r"^--init_from .*/a: parameter .* is \[.*\] "
                     r"there and \[.*\] here \(another network size\?\)$"):
    train_lib.warm_started(wider.state, str(tmp_path / 'a'), log=lambda *_: None)
  with pytest.raises(errors.UserError, match=r"has no place in this model"):
    warm_start.transplant({'extra': np.zeros(2)}, {'w': np.zeros(2)}, 'x')
