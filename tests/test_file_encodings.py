"""Files as users have them: gzip, byte-order marks, other encodings, CR
line endings, binary files, damaged `.npz` (issue 29). Each is read whole
or refused in one line naming the file; none ends in a traceback or loses
a column silently."""
import csv
import gzip
import io
import re
import zipfile

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from helpers import write_cdvae_csv

from jaxcrystal.data import datasets
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import readers


@pytest.fixture
def csv_text(tmp_path):
  """A CDVAE CSV of three crystals with ids and a formula column, as text."""
  crystals = [bulk('NaCl', 'rocksalt', a=5.64, cubic=True),
              bulk('Cu', 'fcc', a=3.6, cubic=True), bulk('Si', 'diamond', a=5.43)]
  rows = [(f'mp-{k}', str(CifWriter(AseAtomsAdaptor.get_structure(a))),
           a.get_chemical_formula(mode='reduce')) for k, a in enumerate(crystals)]
  write_cdvae_csv(tmp_path / 'plain.csv', rows)
  return (tmp_path / 'plain.csv').read_text()


def _ids(structures):
  return [s.info['material_id'] for s in structures]


def test_gzip_csv_and_extxyz_read_like_the_plain_files(tmp_path, csv_text):
  plain, _ = readers.read_structures(tmp_path / 'plain.csv')
  (tmp_path / 'data.csv.gz').write_bytes(gzip.compress(csv_text.encode()))
  zipped, report = readers.read_structures(tmp_path / 'data.csv.gz')
  assert _ids(zipped) == _ids(plain) == ['mp-0', 'mp-1', 'mp-2'] and not report.skipped
  np.testing.assert_allclose(zipped[2].cell[:], plain[2].cell[:])
  io_lib.write_extxyz(tmp_path / 'f.extxyz', plain)
  (tmp_path / 'f.extxyz.gz').write_bytes(gzip.compress((tmp_path / 'f.extxyz').read_bytes()))
  frames, _ = readers.read_structures(tmp_path / 'f.extxyz.gz')
  assert [len(a) for a in frames] == [len(a) for a in plain]
  damaged = tmp_path / 'cut.csv.gz'
  damaged.write_bytes(gzip.compress(csv_text.encode())[:-40])
  with pytest.raises(readers.DataError, match=rf'^{re.escape(str(damaged))}: not a '
                     r'readable gzip file .*truncated download'):
    readers.read_structures(damaged)


@pytest.mark.parametrize('encoding', ['utf-8-sig', 'utf-16', 'utf-32'])
def test_a_byte_order_mark_keeps_every_column(tmp_path, csv_text, encoding):
  """A BOM used to become part of the first column's name: material_id and
  the formula check were silently lost."""
  rows = list(csv.reader(io.StringIO(csv_text)))
  out = io.StringIO()
  csv.writer(out, lineterminator='\n').writerows(r[1:] for r in rows)
  csv_text = out.getvalue()                 # material_id is the first column
  path = tmp_path / 'bom.csv'
  path.write_bytes(csv_text.encode(encoding))
  structures, _ = readers.read_structures(path)
  assert _ids(structures) == ['mp-0', 'mp-1', 'mp-2']
  broken = re.sub(r',(NaCl)+\n', ',NaCl2\n', csv_text)  # the formula check runs
  path.write_bytes(broken.encode(encoding))
  with pytest.raises(readers.DataError, match=r"row 0 \(mp-0\): atoms .* do not match "
                     r"the formula column 'NaCl2'"):
    readers.read_structures(path)


def test_cr_line_endings_are_read_whole(tmp_path, csv_text):
  for name, newline in (('cr.csv', '\r'), ('crlf.csv', '\r\n')):
    path = tmp_path / name
    path.write_bytes(csv_text.replace('\n', newline).encode())
    structures, report = readers.read_structures(path)
    assert _ids(structures) == ['mp-0', 'mp-1', 'mp-2'] and not report.skipped


def test_other_encodings_and_binary_files_are_one_line(tmp_path, csv_text):
  latin = tmp_path / 'latin.csv'
  latin.write_bytes(csv_text.replace('mp-1', 'mp-\u00e91').encode('latin-1'))
  with pytest.raises(readers.DataError, match=rf'^{re.escape(str(latin))}: not UTF-8 '
                     r"text \(byte \d+: b'\\xe9'\); save it as UTF-8$"):
    readers.read_structures(latin)
  binary = tmp_path / 'model.csv'
  binary.write_bytes(bytes(range(256)) * 4)
  with pytest.raises(readers.DataError, match=r'a binary file, not UTF-8 text'):
    readers.read_structures(binary)
  cif = tmp_path / 'x.cif'
  cif.write_bytes(b'\x00\x01data_x\n')
  with pytest.raises(readers.DataError, match='binary file'):
    readers.read_structures(cif)


def test_npz_whose_arrays_disagree_or_are_cut_is_refused(tmp_path):
  structures = datasets.builtin_structures()[:3]
  good = tmp_path / 'good.npz'
  io_lib.write_npz(good, structures, source_row=np.arange(3))
  assert len(readers.read_npz(good)) == 3
  with np.load(good) as data:
    arrays = dict(data)
  moved = dict(arrays, num_atoms=arrays['num_atoms'] + np.array([1, -1, 1]))
  np.savez(tmp_path / 'moved.npz', **moved)
  with pytest.raises(readers.DataError, match=r'moved\.npz: inconsistent arrays: '
                     r'num_atoms adds up to \d+ atoms but there are \d+ atom_types'):
    readers.read_npz(tmp_path / 'moved.npz')
  np.savez(tmp_path / 'rows.npz', **dict(arrays, source_row=np.arange(5)))
  with pytest.raises(readers.DataError, match=r'source_row has 5 entries for 3'):
    readers.read_npz(tmp_path / 'rows.npz')
  np.savez(tmp_path / 'types.npz', **dict(arrays, atom_types=arrays['atom_types'] * 0.5))
  with pytest.raises(readers.DataError, match='atom_types are not atomic numbers'):
    readers.read_npz(tmp_path / 'types.npz')
  cut = tmp_path / 'cut.npz'
  cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  with pytest.raises(readers.DataError, match=r'cut\.npz: not a readable structures '
                     r'\.npz .*truncated file'):
    readers.read_npz(cut)
  assert not zipfile.is_zipfile(cut)


def test_empty_files_and_unknown_symbols_in_extxyz_are_named(tmp_path, csv_text):
  header = tmp_path / 'header.csv'
  header.write_text(csv_text.splitlines()[0] + '\n')
  with pytest.raises(readers.DataError, match=r'header\.csv: holds no structures'):
    readers.read_structures(header)
  frames = tmp_path / 'q.extxyz'
  io_lib.write_extxyz(frames, [bulk('Cu', cubic=True)] * 3)
  lines = frames.read_text().splitlines()
  lines[8] = lines[8].replace('Cu', 'Qq', 1)       # frame 1's first atom
  frames.write_text('\n'.join(lines) + '\n')
  kept, report = readers.read_structures(frames, skip_bad=True)
  assert len(kept) == 1 and report.skipped[0].row == 1
  assert "unknown element symbol 'Qq'" in report.skipped[0].reason
  assert 'frames after it cannot be read' in report.skipped[0].reason
