import os

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from helpers import cif_text as _cif_text
from helpers import write_cdvae_csv as _write_csv

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import datasets
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import readers



@pytest.fixture
def csv_with_bad_rows(tmp_path):
  good = datasets.builtin_structures()
  overlap = bulk('Cu', 'fcc', a=3.6)
  overlap = overlap + overlap[:1]
  overlap.positions[1] += 0.2
  flat = _cif_text(good[0], tmp_path).replace('_cell_length_c       4.0495',
                                              '_cell_length_c       0')
  rows = [('good-0', _cif_text(good[0], tmp_path)),
          ('corrupt', 'data_broken\n_cell_length_a 3\nthis is not a cif'),
          ('good-7', _cif_text(good[7], tmp_path)),
          ('overlap', _cif_text(overlap, tmp_path)),
          ('flat', flat),
          ('good-14', _cif_text(good[14], tmp_path))]
  path = tmp_path / 'data.csv'
  _write_csv(path, rows)
  return path, [good[0], good[7], good[14]]


def test_csv_bad_row_raises_naming_file_and_row(csv_with_bad_rows):
  path, _ = csv_with_bad_rows
  with pytest.raises(readers.DataError, match=r'data\.csv, row 1 \(corrupt\): CIF has no'):
    readers.read_structures(path, progress=False)


def test_csv_skip_bad_reports_each_reason(csv_with_bad_rows, tmp_path):
  path, expected = csv_with_bad_rows
  structures, report = readers.read_structures(path, skip_bad=True, progress=False)
  assert [s.info['material_id'] for s in structures] == ['good-0', 'good-7', 'good-14']
  reasons = {s.identifier: s.reason for s in report.skipped}
  assert set(reasons) == {'corrupt', 'overlap', 'flat'}
  assert 'overlap' in reasons['overlap'] and '_cell_length_b' in reasons['corrupt']
  assert 'zero-length cell edge' in reasons['flat']
  assert 'row 3 (overlap)' in report.summary()
  for got, ref in zip(structures, expected):
    np.testing.assert_allclose(got.cell.cellpar(), ref.cell.cellpar(), atol=1e-4)
    assert got.get_chemical_formula() == ref.get_chemical_formula()
  # the budget check: too many atoms is a named error
  small, report = readers.read_structures(path, skip_bad=True, max_atoms=4,
                                        progress=False)
  assert len(small) == 2
  assert 'exceed the budget of 4' in {s.identifier: s.reason
                                      for s in report.skipped}['good-14']
  print(reasons)


def test_csv_cache_second_load_identical(csv_with_bad_rows, tmp_path):
  path, _ = csv_with_bad_rows
  cache = tmp_path / 'cache'
  first, r1 = readers.read_structures(path, skip_bad=True, cache_dir=cache, progress=False)
  second, r2 = readers.read_structures(path, skip_bad=True, cache_dir=cache, progress=False)
  assert not r1.from_cache and r2.from_cache
  assert len(list(cache.iterdir())) == 1
  assert [s.reason for s in r2.skipped] == [s.reason for s in r1.skipped]
  for a, b in zip(first, second):
    np.testing.assert_allclose(a.positions, b.positions)
    assert a.info == b.info


def test_missing_file_and_nan_frames(tmp_path):
  with pytest.raises(readers.DataError, match='no such file'):
    readers.read_structures(tmp_path / 'nope.csv')
  a = bulk('Cu', 'fcc', a=3.6) * (2, 1, 1)
  b = a.copy()
  b.positions[0, 0] = np.nan
  path = tmp_path / 'frames.extxyz'
  ase.io.write(path, [a, b, a], format='extxyz')
  with pytest.raises(readers.DataError, match=r'frames\.extxyz, row 1 .*NaN'):
    readers.read_structures(path)
  good, report = readers.read_structures(path, skip_bad=True)
  assert len(good) == 2 and report.skipped[0].row == 1


def test_real_datasets_load(datasets_dir, tmp_path):
  for name, expected_max in (('perov_5', 5), ('carbon_24', 24)):
    for split in ('train', 'val'):
      structures, report = readers.read_structures(
          datasets_dir / name / f'{split}.csv', skip_bad=True, progress=False)
      assert report.num_read == len(structures) > 100
      assert max(len(s) for s in structures) <= expected_max
      print(report.summary())
  batch = batch_lib.batch_from_atoms(structures[:64])
  assert batch.atom_mask.sum() == sum(len(s) for s in structures[:64])


def test_writers_round_trip(tmp_path):
  structures = datasets.builtin_structures()
  for s in structures:
    s.info['energy_per_atom'] = float(len(s))
  io_lib.write_extxyz(tmp_path / 'all.extxyz', structures)
  back = ase.io.read(tmp_path / 'all.extxyz', index=':')
  assert [b.info['material_id'] for b in back] == [s.info['material_id'] for s in structures]
  for a, b in zip(structures, back):
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
  paths = io_lib.write_cifs(tmp_path / 'cifs', structures[:3])
  for p, a in zip(paths, structures[:3]):
    b = ase.io.read(p)
    np.testing.assert_allclose(b.cell.cellpar(), a.cell.cellpar(), atol=1e-4)
  arrays = io_lib.write_npz(tmp_path / 's.npz', structures)
  np.testing.assert_array_equal(arrays['mean_coordination'],
                                [12.0] * 7 + [8.0] * 7 + [4.0] * 7)
  assert np.all(arrays['valid'])
  np.testing.assert_allclose(arrays['density'][0], 2.70, atol=0.02)  # Al
  back = readers.read_npz(tmp_path / 's.npz')
  for a, b in zip(structures, back):
    np.testing.assert_allclose(a.get_all_distances(mic=True),
                               b.get_all_distances(mic=True), atol=1e-6)


def test_lammps_dump_read_by_ase(tmp_path):
  frames = datasets.builtin_structures()[4:7]  # includes the rotated cell
  io_lib.write_lammps_dump(tmp_path / 'traj.dump', frames, timesteps=[0, 10, 20])
  back = ase.io.read(tmp_path / 'traj.dump', index=':', format='lammps-dump-text')
  assert len(back) == 3
  for a, b in zip(frames, back):
    np.testing.assert_allclose(b.cell.cellpar(), a.cell.cellpar(), atol=1e-6)
    np.testing.assert_allclose(b.get_all_distances(mic=True),
                               a.get_all_distances(mic=True), atol=1e-6)
    assert b.get_chemical_symbols() == a.get_chemical_symbols()


def test_atomic_write_leaves_no_partial_file(tmp_path):
  target = tmp_path / 'out.txt'
  target.write_text('old')
  with pytest.raises(RuntimeError):
    with io_lib.atomic_path(target) as tmp:
      tmp.write_text('half')
      raise RuntimeError('crash')
  assert target.read_text() == 'old'
  assert os.listdir(tmp_path) == ['out.txt']
  io_lib.write_text_atomic(target, 'new')
  assert target.read_text() == 'new'


def test_check_structure_rejects_degenerate_inputs():
  from jaxcrystal.evaluation import validation
  a = bulk('Cu', 'fcc', a=3.6) * (2, 1, 1)
  flat = a.copy()
  flat.cell[2] = flat.cell[0] + flat.cell[1]
  with pytest.raises(validation.StructureError, match='volume'):
    validation.check_structure(flat)
  nan = a.copy()
  nan.positions[1, 2] = np.nan
  with pytest.raises(validation.StructureError, match='NaN'):
    validation.check_structure(nan)
  validation.check_structure(a)  # and a good one passes
