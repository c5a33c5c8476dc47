"""The property predictor (issue 34): a regressor invariant to the crystal's
frame, trained through the library's loop, that learns a property from the
structure and scores samples; bad requests are one line."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import io as io_lib
from jaxcrystal.evaluation import evaluate as evaluation
from jaxcrystal.prediction import regressors
from jaxcrystal.prediction import train as property_train
from jaxcrystal.recipes import guidance
from jaxcrystal.testing import assert_transform_consistent
from jaxcrystal.testing import random_orthogonal
from jaxcrystal.training import state as state_lib


def _crystals():
  out = [bulk('NaCl', 'rocksalt', a=5.6), bulk('Si', 'diamond', a=5.43).repeat((1, 1, 2)),
         bulk('Cu', 'fcc', a=3.6, orthorhombic=True)]
  out[1].rattle(0.05, seed=1)
  return out


@pytest.mark.parametrize('reflect', [False, True])
def test_regressor_is_invariant_to_frame_origin_and_atom_order(reflect):
  module = regressors.entry('cspnet_regressor').build(
      regressors.CSPRegressorSettings(hidden=16, num_layers=2, num_freqs=4,
                                      distance_basis=8))
  batch = batch_lib.to_device(batch_lib.batch_from_atoms(_crystals()))
  graph = property_train._graph
  params = module.init(jax.random.PRNGKey(0), batch, graph(batch))
  fn = jax.jit(lambda b: module.apply(params, b, graph(b)))
  rot = jnp.asarray(random_orthogonal(np.random.default_rng(3), reflect), jnp.float32)
  assert_transform_consistent(fn, batch, lambda b: b.replace(lattice=b.lattice @ rot.T),
                              lambda y: y)
  shift = jnp.array([0.37, -0.21, 0.58])
  assert_transform_consistent(fn, batch, lambda b: b.replace(
      frac=jnp.where(b.atom_mask[:, None], (b.frac + shift) % 1.0, b.frac)), lambda y: y)
  # Reversing the atoms of each crystal.
  shuffled = [c[::-1] for c in _crystals()]
  np.testing.assert_allclose(
      fn(batch_lib.to_device(batch_lib.batch_from_atoms(shuffled))), fn(batch),
      atol=1e-4)


def test_predictor_learns_a_property_of_the_structure(tmp_path):
  """Al cells of edges 3.6 to 4.6 A, the edge as a column: the predictor
  must beat predicting the mean by 2x on held-out edges, and score samples
  against the value they were asked for."""
  def cells(edges):
    out = []
    for a in edges:
      atoms = bulk('Al', 'fcc', a=float(a), cubic=True)
      atoms.info['edge'] = float(a)
      out.append(atoms)
    return out
  io_lib.write_extxyz(tmp_path / 'train.extxyz', cells(np.linspace(3.6, 4.6, 24)))
  io_lib.write_extxyz(tmp_path / 'val.extxyz', cells(np.linspace(3.65, 4.55, 7)))
  config = property_train.PropertyConfig(
      property='edge', train_data=str(tmp_path / 'train.extxyz'),
      val_data=str(tmp_path / 'val.extxyz'), batch_size=8, train_steps=150,
      eval_every=150, checkpoint_every=150, log_every=50, progress=False,
      optim=state_lib.OptimConfig(learning_rate=3e-3, warmup_steps=10, ema_decay=0.9)
  ).with_regressor(hidden=32, num_layers=1, num_freqs=4, distance_basis=8)
  result = property_train.train_property(config, tmp_path / 'run', log=lambda *_: None)
  assert result['num_val'] == 7 and result['ratio'] > 2.0, result
  predictor = property_train.load_predictor(tmp_path / 'run')
  assert predictor.config.mean == pytest.approx(4.1, abs=1e-5)
  broken = bulk('Al', 'fcc', a=4.0, cubic=True)
  broken.positions[0, 0] = np.nan
  samples = cells([3.7, 4.5]) + [broken]
  predicted = property_train.predict(predictor, samples, progress=False)
  assert np.isnan(predicted[2]) and abs(predicted[0] - 3.7) < 0.25
  assert abs(predicted[1] - 4.5) < 0.25
  scores = evaluation.property_scores(predicted, [True, True, False], target=3.7)
  assert scores['property_count'] == 2
  assert scores['property_mae_to_target'] == pytest.approx(
      np.mean(np.abs(predicted[:2] - 3.7)))


def test_predictor_refusals_are_one_line(tmp_path):
  atoms = bulk('Al', 'fcc', a=4.0, cubic=True)
  io_lib.write_extxyz(tmp_path / 'al.extxyz', [atoms] * 4)
  config = property_train.PropertyConfig(
      property='band_gap', train_data=str(tmp_path / 'al.extxyz'),
      val_data=str(tmp_path / 'al.extxyz'), progress=False)
  with pytest.raises(errors.DataError, match=r"al\.extxyz: no row has a number in "
                     r"column 'band_gap'$"):
    property_train.train_property(config, tmp_path / 'run', log=lambda *_: None)
  with pytest.raises(errors.ConfigError, match='name the column to predict'):
    property_train.PropertyConfig(train_data='a', val_data='b').validate()
  with pytest.raises(errors.ConfigError, match=r"regressor 'cspnet_regressor': "
                     r"unknown setting"):
    config.with_regressor(width=3)
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'config.json').write_text('{"model": {}}')
  with pytest.raises(errors.NotARunError, match='not that of a property run'):
    property_train.load_predictor(tmp_path / 'other')


def test_guidance_sweep_table_and_figure(tmp_path):
  rng = np.random.default_rng(0)
  def row(target, weight, centre):
    predicted = list(rng.normal(centre, 0.3, 50))
    r = dict(target=target, weight=weight, struct_validity=0.9, comp_validity=0.95,
             cov_recall=0.8, cov_precision=0.5, property_mean=float(np.mean(predicted)),
             property_std=float(np.std(predicted)), predicted=predicted)
    if target is not None:
      r.update(property_mae_to_target=float(np.mean(np.abs(np.subtract(predicted, target)))),
               unconditional_mae_to_target=1.0)
    return r
  rows = [row(None, 0.0, 1.3)] + [row(t, w, 1.3 + (t - 1.3) * w / 4)
                                  for t in (0.5, 2.5) for w in (0.0, 2.0, 4.0)]
  table = guidance.markdown_table(rows, 'heat_ref')
  assert len(table.splitlines()) == 2 + 7 and '| unconditional | 0 |' in table
  assert '| 2.5 | 4 | 90.0 | 95.0 | 80.0 | 50.0 |' in table
  path = guidance.plot_guidance(rows, 'heat_ref', tmp_path / 'g.png', title='t')
  assert path.stat().st_size > 10_000


def test_a_sweep_over_classes_is_judged_by_the_share_at_the_target(tmp_path):
  """Space groups need no predictor (spglib gives them) and a class is hit
  or missed: the table and figure show the share at the target."""
  score = guidance.derived_scorer('space_group')
  np.testing.assert_array_equal(score([bulk('Cu', 'fcc', a=3.6), bulk('Po', 'sc', a=3.3)]),
                                [225, 221])
  with pytest.raises(errors.UserError, match="'heat_ref' is not a number computed"):
    guidance.derived_scorer('heat_ref')
  base = dict(struct_validity=0.9, comp_validity=0.95, cov_recall=0.8, cov_precision=0.5)
  groups = {None: [221] * 2 + [99] * 8, 221: [221] * 6 + [99] * 4}
  rows = []
  for target, predicted in groups.items():
    scores = evaluation.property_scores(np.array(predicted, float), np.ones(10, bool), target)
    rows.append(dict(base, target=target, weight=0.0 if target is None else 1.0,
                     predicted=[float(v) for v in predicted], **scores))
  rows[1].update(unconditional_hit_rate=0.2, unconditional_mae_to_target=0.0)
  assert rows[1]['property_hit_rate'] == pytest.approx(0.6)
  assert guidance.categorical(rows)
  table = guidance.markdown_table(rows, 'space_group')
  assert 'valid samples at target %' in table
  assert table.splitlines()[-1].endswith('| 60.0 | 20.0 |')
  assert guidance.plot_guidance(rows, 'space_group', tmp_path / 'g.png').stat().st_size > 10_000
