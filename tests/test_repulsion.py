"""Soft-repulsion correction (issue 36): the energy against a brute-force
ASE neighbour-list oracle; close atoms end at least the threshold apart,
the others do not move at all; equivariant to translation and atom order;
cells it cannot treat are returned unchanged and counted."""

import ase
import numpy as np
import pytest
from ase.build import bulk
from ase.neighborlist import neighbor_list

from jaxcrystal.healing import repulsion


def _crowded(seed, n=8, edge=4.5):
  """A random triclinic cell with n atoms, some closer than 0.7 A."""
  rng = np.random.default_rng(seed)
  cell = np.diag([edge] * 3) + rng.uniform(-0.6, 0.6, (3, 3))
  atoms = ase.Atoms('C' * n, cell=cell, pbc=True,
                    scaled_positions=rng.uniform(0, 1, (n, 3)))
  atoms.positions[1] = atoms.positions[0] + rng.normal(0, 0.2, 3)
  return atoms


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_energy_matches_a_brute_force_neighbour_list(seed):
  atoms = _crowded(seed, n=10, edge=3.5)
  threshold = 1.2
  d = neighbor_list('d', atoms, threshold)  # both orders of every pair
  expected = 0.25 * np.sum((threshold - d) ** 2)
  width = 12  # padded, as in a batch
  cart = np.zeros((width, 3), np.float32)
  cart[:len(atoms)] = atoms.positions
  mask = np.arange(width) < len(atoms)
  got = repulsion.repulsion_energy(cart, np.asarray(atoms.cell[:], np.float32), mask,
                                   threshold)
  np.testing.assert_allclose(float(got), expected, rtol=2e-4, atol=1e-6)
  assert expected > 0


def test_close_atoms_end_apart_and_the_others_do_not_move():
  structures = [_crowded(s) for s in range(6)]
  out, arrays = repulsion.repel(structures, 0.7)
  for before, after in zip(structures, out):
    assert after.get_chemical_symbols() == before.get_chemical_symbols()
    np.testing.assert_array_equal(after.cell[:], before.cell[:])
    assert min(neighbor_list('d', after, 0.7), default=1.0) > 0.7 - 2e-3
    # atoms with no neighbour under the threshold keep their exact positions
    crowded = np.unique(neighbor_list('i', before, 0.7))
    free = np.setdiff1d(np.arange(len(before)), crowded)
    np.testing.assert_array_equal(after.positions[free], before.positions[free])
  summary = repulsion.summarize(arrays)
  assert summary['moved'] == 6 and summary['valid_to_invalid'] == 0
  assert summary['valid_after'] == 6
  assert summary['invalid_to_valid'] == int((~arrays['valid_before']).sum())
  assert 0 < summary['max_displacement_mean'] < 0.7


def test_the_correction_commutes_with_translation_and_atom_order():
  atoms = _crowded(3)
  shifted = atoms.copy()
  shifted.positions += [0.37, -1.1, 0.52]
  order = np.random.default_rng(0).permutation(len(atoms))
  (a, b, c), _ = repulsion.repel([atoms, shifted, atoms[order]], 0.7)
  np.testing.assert_allclose(b.positions - [0.37, -1.1, 0.52], a.positions, atol=1e-4)
  np.testing.assert_allclose(c.positions, a.positions[order], atol=1e-4)


def test_coincident_atoms_are_separated_and_bad_cells_kept():
  crystal = bulk('Cu', 'fcc', a=3.6, cubic=True)
  coincident = crystal.copy()
  coincident.positions[2] = coincident.positions[0]
  thin = bulk('Cu', 'fcc', a=3.6, cubic=True)
  thin.cell = np.diag([3.6, 3.6, 1.0])  # height 1.0 A < 2 x threshold
  out, arrays = repulsion.repel([crystal, coincident, thin], 0.7)
  assert not arrays['moved'][0]
  np.testing.assert_array_equal(out[0].positions, crystal.positions)
  assert arrays['min_distance_before'][1] == 0 and arrays['min_distance_after'][1] > 0.69
  assert arrays['valid_after'][1] and not arrays['valid_before'][1]
  assert arrays['skipped'].tolist() == [False, False, True]
  np.testing.assert_array_equal(out[2].positions, thin.positions)
