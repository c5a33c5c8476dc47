"""Symmetrized samples and space-group reports (issue 35): refined cells
regain the group they were displaced from, within the tolerance only;
the shares and the table add up; broken structures are kept, not lost."""

import json

import ase
import numpy as np
import pytest
from ase.build import bulk

from jaxcrystal.evaluation import symmetry
from jaxcrystal.evaluation import validation


def _perovskite(rattle, seed=0):
  atoms = ase.Atoms('BaTiO3', cell=np.eye(3) * 4.0, pbc=True,
                scaled_positions=[[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5],
                                  [0, .5, .5]])
  atoms.positions += np.random.default_rng(seed).normal(0, rattle, (5, 3))
  return atoms


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_a_displaced_crystal_is_refined_back_to_its_group_within_the_tolerance(seed):
  displaced = _perovskite(0.01, seed)
  assert validation.space_group(displaced, 1e-3)[0] == 1  # P1 as generated
  refined, number = symmetry.symmetrize(displaced, 0.1)
  assert number == 221 and len(refined) == 5
  # idealised: the refined cell has the group at a tight tolerance too
  assert validation.space_group(refined, 1e-4)[0] == 221
  np.testing.assert_allclose(refined.cell.cellpar()[3:], 90, atol=1e-6)
  assert sorted(refined.get_chemical_symbols()) == sorted(displaced.get_chemical_symbols())
  # a tolerance below the displacement keeps what spglib sees there
  _, loose = symmetry.symmetrize(displaced, 1e-3)
  assert loose == 1


def test_a_conventional_cell_becomes_its_primitive_cell():
  refined, number = symmetry.symmetrize(bulk('Cu', 'fcc', a=3.6, cubic=True), 0.1)
  assert number == 225 and len(refined) == 1
  np.testing.assert_allclose(refined.get_volume(), 3.6 ** 3 / 4, rtol=1e-6)


def test_broken_structures_are_kept_and_marked():
  overlap = _perovskite(0.0)
  overlap.positions[1] = overlap.positions[0]
  needle = _perovskite(0.0)
  needle.cell = np.diag([1e6, 1e-6, 1.0])
  good = _perovskite(0.01)
  out, arrays = symmetry.symmetrize_all([good, needle, overlap], 0.1, progress=False)
  assert len(out) == 3
  assert arrays['symmetrized'][0] and not arrays['symmetrized'][1]
  assert arrays['space_group'][0] == 221 and arrays['space_group'][1] == 0
  # what could not be refined is the raw structure, unchanged
  np.testing.assert_array_equal(out[1].positions, needle.positions)
  assert out[1].info['symmetrized'] is False and out[0].info['space_group'] == 221


def test_shares_table_and_report(tmp_path):
  raw = [1, 1, 221, 0, 99]
  train = [221, 221, 99, 123]
  assert symmetry.space_group_shares(raw) == {1: 0.4, 0: 0.2, 99: 0.2, 221: 0.2}
  assert symmetry.non_p1_share(raw) == pytest.approx(0.4)  # none found counts as P1
  assert symmetry.non_p1_share(train) == 1.0
  rows = symmetry.space_group_table({'raw': raw, 'train': train}, top=3)
  assert [r['space_group'] for r in rows[:3]] == [221, 99, 1]  # by pooled share
  assert rows[0]['symbol'] == 'Pm-3m' and rows[-1]['symbol'] == 'other'
  for label in ('raw', 'train'):
    assert sum(r[label] for r in rows) == pytest.approx(1.0)
  report = symmetry.write_space_group_report(tmp_path, {'raw': raw, 'train': train}, 0.1)
  assert json.loads((tmp_path / 'space_groups.json').read_text()) == report
  table = (tmp_path / 'space_groups.md').read_text()
  assert '| Pm-3m (221) | 20.0 % | 50.0 % |' in table
  assert (tmp_path / 'space_groups.png').stat().st_size > 1000
