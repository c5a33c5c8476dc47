"""The healing denoiser: symmetries, a perfect lattice staying put, graph
paths agreeing, and training plus healing end to end at small scale."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcrystal.testing import assert_transform_consistent, random_orthogonal
from jaxcrystal.healing import defects
from jaxcrystal.healing import denoiser
from jaxcrystal.healing import heal as healing

CONFIG = denoiser.DenoiserConfig(hidden=32, num_basis=8)


@pytest.fixture(scope='module')
def model_and_params():
  model = denoiser.LocalDenoiser(CONFIG)
  from jaxcrystal.data import batch as batch_lib
  example = batch_lib.to_device(batch_lib.batch_from_atoms(
      [defects.supercell('Pt', 'fcc', 3.924, 1)]))
  params = denoiser.init_params(model, jax.random.PRNGKey(0), example)
  # Random init weighs every neighbour alike; perturb so weights vary with r.
  params = jax.tree_util.tree_map(
      lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  return model, params


def _displacement(model, params, atoms):
  nbrs = healing.build_graph(atoms, CONFIG.cutoff + healing.GRAPH_SKIN)
  out = model.apply(params, jnp.asarray(atoms.get_scaled_positions(), jnp.float32),
                    jnp.asarray(atoms.cell[:], jnp.float32),
                    jnp.asarray(atoms.numbers), nbrs)
  return np.asarray(out)


@pytest.fixture(scope='module')
def damaged():
  ideal, _ = defects.remove_atom(defects.supercell('Pt', 'fcc', 3.924, 2), 5)
  return defects.damage(np.random.default_rng(0), ideal, 0.08)


def test_rotation_reflection_and_translation(model_and_params, damaged):
  model, params = model_and_params
  from ase import Atoms

  def fn(x):  # x = (positions [N, 3], cell [3, 3]) in Angstrom
    return _displacement(model, params, Atoms(damaged.numbers, positions=x[0],
                                              cell=x[1], pbc=True))
  inputs = (damaged.positions, np.asarray(damaged.cell[:]))
  for reflect in (False, True):
    rot = random_orthogonal(np.random.default_rng(int(reflect)), reflect)
    assert_transform_consistent(fn, inputs, lambda x, rot=rot: (x[0] @ rot.T, x[1] @ rot.T),
                                lambda d, rot=rot: d @ rot.T, atol=2e-4)
  shift = np.array([1.3, -0.7, 2.9])
  assert_transform_consistent(fn, inputs, lambda x: (x[0] + shift, x[1]), lambda d: d,
                              atol=2e-4)


def test_permutation_and_the_perfect_lattice_stays_put(model_and_params, damaged):
  model, params = model_and_params
  perm = np.random.default_rng(3).permutation(len(damaged))
  np.testing.assert_allclose(_displacement(model, params, damaged[perm]),
                             _displacement(model, params, damaged)[perm], atol=2e-4)
  moved = np.abs(_displacement(model, params, damaged)).max()
  still = np.abs(_displacement(model, params, defects.supercell('Pt', 'fcc', 3.924, 2)))
  assert moved > 1e-2 and still.max() < 1e-3


def test_cell_list_and_radius_graph_paths_agree(model_and_params):
  model, params = model_and_params
  # 4x4x4 Pt (15.7 A) is three 4 A bins wide: the cell list applies at 4 A.
  big = defects.damage(np.random.default_rng(1), defects.supercell('Pt', 'fcc', 3.924, 4),
                       0.05)
  cutoff = 4.0
  frac = jnp.asarray(big.get_scaled_positions(), jnp.float32)
  lattice = jnp.asarray(big.cell[:], jnp.float32)
  via_cells = healing.build_graph(big, cutoff)
  from jaxcrystal.data import batch as batch_lib
  from jaxcrystal.geometry import neighbors
  assert via_cells.dense_block is None and via_cells.capacity < 64 * len(big)  # cell list
  b = batch_lib.to_device(batch_lib.batch_from_atoms([big]))
  max_image, capacity = denoiser.graph_capacity(b, cutoff)
  via_images = neighbors.radius_graph(b, cutoff, max_image, capacity)
  assert int(via_cells.num_edges()) == int(via_images.num_edges()) > 0
  apply = lambda nbrs, f, l, z: np.asarray(model.apply(params, f, l, z, nbrs))
  got = apply(via_cells, frac, lattice, jnp.asarray(big.numbers))
  want = apply(via_images, b.frac, b.atom_lattice(), b.species)[:len(big)]
  np.testing.assert_allclose(got, want, atol=2e-4)
  assert np.abs(got).max() > 1e-3


def test_healing_report_measures_what_it_says():
  ideal, site = defects.remove_atom(defects.supercell('Pt', 'fcc', 3.924, 3), 0)
  report = defects.healing_report(ideal, ideal, ideal, site, steps=0)
  assert report.rmsd_after == 0 and report.vacancy_empty
  assert report.vacancy_neighbor_coordination == [11] * 12  # one neighbour missing
  filled = ideal.copy()
  filled.positions[0] = site + 0.2
  assert not defects.healing_report(ideal, filled, ideal, site, 0).vacancy_empty


def test_train_and_heal_end_to_end(tmp_path):
  config = healing.HealingTrainConfig(
      model=denoiser.DenoiserConfig(hidden=32, num_basis=12), repeats=(2,),
      num_structures=4, batch_size=2, train_steps=300, checkpoint_every=300,
      log_every=50, progress=False)
  healing.train_denoiser(config, tmp_path / 'run', log=lambda *a: None)
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').open()]
  assert rows[-1]['loss'] < 0.6 * rows[0]['loss']
  with pytest.raises(FileExistsError):
    healing.train_denoiser(config, tmp_path / 'run', log=lambda *a: None)
  model, params, loaded = healing.load_denoiser(tmp_path / 'run')
  assert loaded == config
  report = healing.vacancy_experiment(model, params, loaded, repeat=3, trials=2,
                                      num_steps=30, outdir=tmp_path / 'heal',
                                      progress=False, physics_check=True)
  show = report['showcase']
  assert show['rmsd_after'] < 0.5 * show['rmsd_before']
  # healed nearer than damaged to the damaged supercell relaxed by EMT
  physics = report['physical_relaxation']
  assert physics['converged'] and not physics['failure']
  assert physics['rmsd_healed_to_relaxed'] < 0.5 * physics['rmsd_damaged_to_relaxed']
  assert report['trials']['vacancy_empty'] == 2
  assert report['perfect_lattice_max_move'] < 1e-3
  for name in ('healing.lammpstrj', 'healing.extxyz', 'report.json', 'rmsd_per_step.png'):
    assert (tmp_path / 'heal' / name).stat().st_size > 100
