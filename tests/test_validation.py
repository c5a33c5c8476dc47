"""Per-structure physics validation: space groups and batched summaries."""
import numpy as np
from ase import Atoms
from ase.build import bulk

from jaxcrystal.evaluation import validation
from jaxcrystal.geometry import spacegroup


def test_space_groups_of_prototypes_and_absurd_cells():
  assert validation.space_group(bulk('Al', 'fcc', a=4.05)) == (225, 'Fm-3m')
  assert validation.space_group(bulk('Fe', 'bcc', a=2.87, cubic=True)) == (229, 'Im-3m')
  assert validation.space_group(bulk('C', 'diamond', a=3.57)) == (227, 'Fd-3m')
  rattled = bulk('Al', 'fcc', a=4.05, cubic=True)
  rattled.rattle(0.3, seed=0)
  assert validation.space_group(rattled) == (1, 'P1')
  assert validation.space_group(rattled, symprec=1.0)[0] > 1  # tolerance matters
  # An untrained model's needle cell: no crash, no space group.
  needle = Atoms('Fe2', cell=[[1.6e5, 0, 0], [-1.2e5, 1e3, 0], [0, 0, 1.1e5]],
                 scaled_positions=[[0.1, 0.5, 0.1], [0.7, 0.9, 0.4]], pbc=True)
  assert validation.space_group(needle) == (0, '')


def test_absurd_cell_flags_only_cells_no_crystal_has():
  assert not spacegroup.absurd_cell(bulk('Al', 'fcc', a=4.05).cell[:])
  assert not spacegroup.absurd_cell(np.diag([3.0, 3.0, 900.0]))  # a slab's vacuum
  assert spacegroup.absurd_cell(np.diag([3.0, 3.0, 1500.0]))
  flat = np.array([[5.0, 0, 0], [0, 5.0, 0], [5.0, 5.0, 1e-4]])
  assert spacegroup.absurd_cell(flat)
  assert spacegroup.absurd_cell(np.full((3, 3), np.nan))


def test_summary_arrays_of_a_batch():
  good = bulk('Cu', 'fcc', a=3.6, cubic=True)
  bad = good.copy()
  bad.positions[1] = bad.positions[0] + [0.2, 0, 0]
  arrays = validation.summary_arrays([good, bad])
  assert arrays['valid'].tolist() == [True, False]
  assert arrays['reason'][0] == '' and 'overlap' in arrays['reason'][1]
  assert arrays['space_group'].tolist() == [225, 0]
  np.testing.assert_allclose(arrays['volume'], [3.6**3, 3.6**3])
  np.testing.assert_allclose(arrays['volume_per_atom'][0], 3.6**3 / 4)
  np.testing.assert_allclose(arrays['density'][0], 4 * 63.546 / 3.6**3 * 1.66054,
                             rtol=1e-4)  # g/cm^3 of 4 Cu atoms in the cube
  assert arrays['mean_coordination'][0] == 12 and np.isnan(arrays['mean_coordination'][1])
  np.testing.assert_allclose(arrays['min_distance'][0], 3.6 / np.sqrt(2))


def test_shell_coordination_matches_an_ase_neighbour_list_oracle():
  """The numpy image grid counts what ASE's neighbour list finds within each
  atom's shell, in any cell (skewed, positions outside the cell), and the
  prototypes' textbook numbers."""
  from ase.neighborlist import neighbor_list
  rng = np.random.default_rng(0)
  cases = [bulk('Cu', 'fcc', a=3.6), bulk('Fe', 'bcc', a=2.87, cubic=True),
           bulk('C', 'diamond', a=3.57), bulk('Mg', 'hcp', a=3.2)]
  np.testing.assert_array_equal(
      [validation.coordination_by_nearest_shell(a).mean() for a in cases], [12, 8, 4, 12])
  for _ in range(25):
    n = int(rng.integers(1, 10))
    cell = np.diag(rng.uniform(2, 9, 3)) + rng.uniform(-1.5, 1.5, (3, 3))
    cases.append(Atoms('C' * n, cell=cell, pbc=True,
                       scaled_positions=rng.uniform(-0.5, 1.5, (n, 3))))
  for atoms in cases:
    cut = validation.nearest_neighbor_distances(atoms) * 1.1
    i, d = neighbor_list('id', atoms, float(cut.max()) + 1e-6)
    expected = np.bincount(i[d <= cut[i]], minlength=len(atoms))
    np.testing.assert_array_equal(validation.coordination_by_nearest_shell(atoms), expected)
