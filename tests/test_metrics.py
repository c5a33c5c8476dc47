"""The field's metrics against their definitions, with sanity checks."""
import math

import numpy as np
import pytest
from helpers import rattled
from ase import Atoms
from ase.build import bulk

from jaxcrystal.data import datasets
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import readers
from jaxcrystal.evaluation import metrics


@pytest.fixture(scope='module')
def builtin():
  return datasets.builtin_structures()


def test_validity_definitions():
  assert metrics.structural_validity(bulk('Al', 'fcc', a=4.05))
  close = Atoms('Al2', positions=[[0, 0, 0], [0.4, 0, 0]], cell=np.eye(3) * 5, pbc=True)
  assert not metrics.structural_validity(close)
  # Close only through the periodic boundary: the minimum image must see it.
  wrapped = Atoms('Al2', positions=[[0.1, 0, 0], [4.8, 0, 0]], cell=np.eye(3) * 5,
                  pbc=True)
  assert not metrics.structural_validity(wrapped)
  flat = Atoms('Al', cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0.01]], pbc=True)
  assert not metrics.structural_validity(flat)
  assert metrics.compositional_validity(bulk('NaCl', 'rocksalt', a=5.6))
  assert metrics.compositional_validity(bulk('C', 'diamond', a=3.57))  # one element
  assert metrics.compositional_validity(Atoms('CuZn', cell=np.eye(3) * 3, pbc=True,
                                              scaled_positions=[[0] * 3, [0.5] * 3]))
  assert not metrics.compositional_validity(Atoms('NaCl2', cell=np.eye(3) * 5,
                                                  pbc=True, positions=np.eye(3)))
  assert not metrics.compositional_validity(Atoms('KF2', cell=np.eye(3) * 5, pbc=True,
                                                  positions=np.eye(3) * 2))


def test_self_match_is_perfect_and_noise_lowers_matching(builtin):
  result = metrics.csp_match(builtin, builtin, progress=False)
  assert result['match_rate'] == 1.0 and result['rmse'] < 1e-6
  rates, rmses = [], []
  for sigma in (0.02, 0.1, 0.4):
    r = metrics.csp_match(rattled(builtin, sigma), builtin, progress=False)
    rates.append(r['match_rate'])
    rmses.append(r['rmse'])
  assert rmses[0] > 1e-3  # noise is seen
  assert rmses[0] < rmses[1]  # and grows with its size
  assert rates[0] == 1.0 and rates[-1] < 0.9  # until matches are lost


def test_invalid_prediction_is_a_miss_and_best_of_k_takes_the_best(builtin):
  target = builtin[0]
  broken = target.copy()
  broken.positions[1] = broken.positions[0] + [0.1, 0, 0]
  assert metrics.csp_match([broken], [target], progress=False)['match_rate'] == 0.0
  slightly = rattled([target], 0.05, seed=1)[0]
  a_lot = rattled([target], 0.15, seed=2)[0]
  best = metrics.csp_match([[broken, a_lot, slightly]], [target], progress=False)
  alone = metrics.csp_match([slightly], [target], progress=False)
  assert best['k'] == 3 and best['match_rate'] == 1.0
  assert math.isclose(best['rmse'], alone['rmse'])
  # A failed sample's needle cell is a miss, decided without pymatgen (whose
  # Niggli reduction can take minutes on one).
  needle = target.copy()
  needle.set_cell(np.diag([1.6e5, 1.2e5, 1.1e5]) + [[0, 0, 0], [-1.2e5, 0, 0], [0, 0, 0]],
                  scale_atoms=True)
  assert metrics.csp_match([[needle, slightly]], [target], progress=False)[
      'match_rate'] == 1.0
  assert metrics.csp_match([needle], [target], progress=False)['match_rate'] == 0.0
  with pytest.raises(ValueError, match='prediction i must belong'):
    metrics.csp_match([target], [target, target], progress=False)


def test_composition_aware_rate_is_robust_to_order(builtin):
  shuffled = [builtin[i] for i in np.random.default_rng(0).permutation(len(builtin))]
  paired = metrics.csp_match(shuffled, builtin, progress=False)
  aware = metrics.composition_aware_match(shuffled, builtin, progress=False)
  assert paired['match_rate'] < 0.6
  assert aware['match_rate'] == 1.0 and aware['rmse'] < 1e-6
  # A composition with no prediction is a miss.
  only_al = [s for s in shuffled if s.get_chemical_symbols()[0] == 'Al']
  assert metrics.composition_aware_match(only_al, builtin, progress=False)[
      'match_rate'] == pytest.approx(7 / 21)


def test_coverage_of_a_set_against_itself_is_complete(builtin):
  fps = [metrics.fingerprints(a) for a in builtin]
  struct_fp, comp_fp = fps[0]
  assert struct_fp.shape == (61,) and comp_fp.shape == (132,)
  assert np.any(struct_fp != 0) and np.any(fps[0][0] != fps[14][0])  # fcc vs diamond
  cov = metrics.coverage(fps, fps, *metrics.COV_CUTOFFS['perov_5'])
  assert cov == {'cov_recall': 1.0, 'cov_precision': 1.0,
                 'struct_dist_recall': 0.0, 'struct_dist_precision': 0.0}
  # Generating only aluminium covers a third of the reference and all of itself.
  al = fps[:7]
  cov = metrics.coverage(al, fps, *metrics.COV_CUTOFFS['perov_5'])
  assert cov['cov_recall'] == pytest.approx(7 / 21) and cov['cov_precision'] == 1.0
  # The other two thirds lie away from every aluminium fingerprint: the
  # median reference crystal's nearest sample is the brute-force one.
  nearest = [min(np.linalg.norm(r[0] - g[0]) for g in al) for r in fps]
  assert cov['struct_dist_recall'] == pytest.approx(np.median(nearest))
  assert cov['struct_dist_recall'] > 0 and cov['struct_dist_precision'] == 0.0
  # Failed fingerprints count against precision.
  cov = metrics.coverage(al + [(None, None)], fps, *metrics.COV_CUTOFFS['perov_5'])
  assert cov['cov_precision'] == pytest.approx(7 / 8)


def test_dng_metrics_on_known_sets(builtin):
  broken = builtin[0].copy()
  broken.positions[1] = broken.positions[0]
  result = metrics.dng_metrics(builtin + [broken], builtin, train=builtin[:7],
                               progress=False)
  assert result['struct_validity'] == pytest.approx(21 / 22)
  assert result['comp_validity'] == 1.0
  assert result['wdist_density'] == pytest.approx(0.0, abs=1e-9)
  assert result['wdist_num_elements'] == 0.0
  assert result['cov_recall'] == 1.0
  assert result['cov_precision'] == pytest.approx(21 / 22)
  # 21 crystals but fewer distinct structures: the strained and rotated
  # variants of one base match it under StructureMatcher's tolerances.
  assert 0.1 < result['uniqueness'] < 1.0
  assert 0.0 < result['novelty'] < 1.0  # Fe and C are not in the training set
  without = metrics.dng_metrics(builtin, builtin, train=builtin[:7],
                                unique_novel=False, progress=False)
  assert 'uniqueness' not in without and 'novelty' not in without
  assert without['cov_recall'] == 1.0
  expanded = [a.copy() for a in builtin]
  for a in expanded:
    a.set_cell(a.cell[:] * 1.1, scale_atoms=True)
  assert metrics.dng_metrics(expanded, builtin, progress=False)[
      'wdist_density'] > 0.5
  # atoms per crystal: the same set scores 0; doubling every crystal
  # shifts the count distribution by its mean
  assert without['wdist_num_atoms'] == 0.0
  few = builtin[:3]
  doubled = [a.repeat((2, 1, 1)) for a in few]
  got = metrics.dng_metrics(doubled, few, unique_novel=False, progress=False)
  assert got['wdist_num_atoms'] == pytest.approx(np.mean([len(a) for a in few]))


def test_markdown_table_layout():
  table = metrics.markdown_table({'ours': {'match_rate': 0.5, 'rmse': 0.1234567}},
                                 metrics.CSP_COLUMNS)
  lines = table.strip().splitlines()
  assert lines[0] == '| | Match rate (%) | RMSE |'
  assert lines[2] == '| ours | 50.00 | 0.1235 |'


def test_perov5_val_self_match_and_ceiling(datasets_dir):
  structures, _ = readers.read_structures(datasets_dir / 'perov_5' / 'val.csv',
                                        progress=False)
  subset = structures[:60]
  strict = metrics.csp_match(subset, subset, progress=False)
  loose = metrics.csp_match(subset, subset, check_composition=False, progress=False)
  smact_ok = np.mean([metrics.compositional_validity(a) for a in subset])
  assert loose['match_rate'] == 1.0 and loose['rmse'] < 1e-6
  assert strict['match_rate'] == pytest.approx(smact_ok)
