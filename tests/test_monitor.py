"""The sample-quality monitor (issue 33): the loop keeps the best-by-quality
checkpoint, stops early on patience (also across a resume), and the crystal
monitor scores real samples with the field's metrics without recompiling."""

import json

import jax
import numpy as np
import pytest

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import datasets
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import monitor as monitor_lib
from jaxcrystal.generative import samplers
from jaxcrystal.training import checkpoints

from helpers import quadratic_run

# quality reported at steps 2, 4, 6, ...: best at step 4
QUALITY = {2: 0.1, 4: 0.5, 6: 0.3, 8: 0.2, 10: 0.9, 12: 0.95}


def _monitor(params, step):
  return {'quality': QUALITY[step], 'w0': float(params['w'][0])}


def _monitor_rows(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()
          if json.loads(line)['split'] == 'monitor']


def test_best_quality_checkpoint_and_early_stop(tmp_path):
  summary, messages = quadratic_run(
      tmp_path, 0.1, steps=12, monitor=_monitor,
      loop_kwargs=dict(monitor_every=2, monitor_patience=2))
  # checks at 2..8; 6 and 8 do not beat step 4's 0.5: stop at 8, not 12
  assert summary['stopped_early_at'] == 8 and summary['final_step'] == 8
  assert summary['best_quality'] == 0.5
  assert [r['step'] for r in _monitor_rows(tmp_path)] == [2, 4, 6, 8]
  assert any('stopping early at step 8' in m for m in messages)
  params, step = checkpoints.restore_params(tmp_path, 'best_quality')
  assert step == 4
  # the best-quality checkpoint holds the EMA parameters the monitor saw at 4
  w0 = [r['w0'] for r in _monitor_rows(tmp_path) if r['step'] == 4][0]
  np.testing.assert_allclose(float(params['w'][0]), w0, rtol=1e-6)
  assert 8 in checkpoints._kept_steps(tmp_path)['periodic']  # the stop is saved
  assert (tmp_path / 'quality_curve.png').is_file()


def test_patience_counts_across_a_resume(tmp_path):
  kw = dict(monitor=_monitor, loop_kwargs=dict(monitor_every=2, monitor_patience=2))
  first, _ = quadratic_run(tmp_path, 0.1, steps=6, **kw)
  assert first['stopped_early_at'] is None  # 6 is one check without a better one
  summary, _ = quadratic_run(tmp_path, 0.1, steps=12, resume=True,
                             config={'lr': 0.1, 'train_steps': 6}, **kw)
  assert summary['stopped_early_at'] == 8  # the check at 6 still counts
  assert summary['best_quality'] == 0.5


def test_without_a_monitor_there_is_no_best_quality(tmp_path):
  quadratic_run(tmp_path, 0.1, steps=4)
  assert not (tmp_path / 'best_quality').exists()
  with pytest.raises(errors.NotARunError, match='monitor'):
    checkpoints.restore_params(tmp_path, 'best_quality')


TINY_NETWORK = dict(hidden=16, num_layers=1, num_freqs=4, time_dim=8)


@pytest.mark.parametrize('task', ['dng_flow', 'csp_flow+condition'])
def test_crystal_monitor_scores_samples_and_compiles_once(keys, task):
  """(A conditioned model is told the reference crystals' values.)"""
  structures = datasets.builtin_structures()
  task, conditioned = task.split('+')[0], '+' in task
  config = model_lib.ModelConfig(task=task, num_steps=5).with_network(**TINY_NETWORK)
  if conditioned:
    config = config.with_condition('num_elements', 'scalar', mean=1.0, std=1.0)
  if task == 'dng_flow':
    config = config.with_process('types', 'types_masked')
  model = model_lib.build(config)
  params = model.init_params(next(keys), batch_lib.to_device(
      batch_lib.batch_from_atoms(structures[:2], properties=config.properties)))
  monitor = monitor_lib.make_quality_monitor(
      model, samplers.SamplerConfig('euler', num_steps=5), structures[:8],
      [len(s) for s in structures], num_samples=8, seed=3)
  first = monitor(params, 1)
  assert 0.0 <= first['quality'] <= 1.0
  if task == 'dng_flow':
    assert first['num_generated'] == 8
    for key in ('struct_validity', 'comp_validity', 'cov_recall', 'cov_precision',
                'wdist_num_atoms'):
      assert key in first
    assert first['quality'] == pytest.approx(
        0.5 * (first['cov_recall'] + first['cov_precision']))
  else:
    assert set(first) >= {'match_rate', 'rmse', 'valid_fraction'}
    assert first['quality'] == first['match_rate']
  # the same parameters give the same samples (fixed seed) and nothing compiles
  compiles, counting = [], [True]
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **kw: compiles.append(event) if counting[0] and
      event == '/jax/core/compile/backend_compile_duration' else None)
  again = monitor(params, 2)
  counting[0] = False
  assert not compiles
  for key in first:
    if key not in ('sample_s', 'monitor_s'):
      assert again[key] == pytest.approx(first[key], nan_ok=True), key
  # other parameters give other samples
  other = jax.tree.map(lambda p: p * 3.0 + 0.1, params)
  moved = monitor(other, 3)
  assert any(moved[k] != first[k] for k in first if k not in ('sample_s', 'monitor_s'))


def test_monitor_settings_are_checked():
  from jaxcrystal.generative import train as train_lib
  with pytest.raises(errors.ConfigError, match='monitor_every needs val_data'):
    train_lib.TrainConfig(monitor_every=100).validate()
  with pytest.raises(errors.ConfigError, match='monitor_patience needs monitor_every'):
    train_lib.TrainConfig(monitor_patience=3).validate()
  with pytest.raises(errors.ConfigError, match='monitor_samples'):
    train_lib.TrainConfig(monitor_samples=0).validate()
