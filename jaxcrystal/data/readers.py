"""One reading path for every structure file: CDVAE CSVs, CIF, and anything
ASE reads (extxyz, POSCAR, ...).

Each format yields *records* (a row, CIF data block or frame, with its
identifier and what the file itself says about it); every record then goes
through the same checks (`validation.check_structure`, known elements, the
file's own formula columns) before it is used. A bad record raises
`DataError` naming the file, the row (and id) and the reason, or, with
`skip_bad=True`, is left out and listed in the returned `LoadReport`.

Truncation is caught where a file can show it: a CSV row cut short or ending
inside its quoted CIF, a file that ends without a newline, a CIF whose atoms
disagree with its `_chemical_formula_sum` (pymatgen and ASE write it), a
row whose atoms disagree with the CSV's `formula` column, an extxyz frame
with fewer atom lines than its header. A file cut exactly between two rows
or frames that declares no formula cannot be told from a shorter file.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

import ase
import ase.io
import numpy as np
from tqdm.auto import tqdm

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import cif
from jaxcrystal.data import io as io_lib
from jaxcrystal.data import outputs
from jaxcrystal.data import textfile
from jaxcrystal.evaluation import validation

CACHE_VERSION = 2
MAX_ATOMIC_NUMBER = batch_lib.NUM_ELEMENTS  # the models' type classes: 1..100
MAX_FORMULA_ATOMS = 10_000  # a formula asking for more is refused when parsed


DataError = errors.DataError


@dataclasses.dataclass
class SkippedRow:
  row: int            # 0-based data row (CSV), data block (CIF) or frame index
  identifier: str     # material_id, block name or frame label
  reason: str


@dataclasses.dataclass
class LoadReport:
  """What a loader read and what it left out."""
  path: str
  num_read: int = 0
  skipped: list[SkippedRow] = dataclasses.field(default_factory=list)
  from_cache: bool = False

  def summary(self) -> str:
    text = f'{self.path}: {self.num_read} structures'
    if self.from_cache:
      text += ' (from cache)'
    if self.skipped:
      text += f', {len(self.skipped)} skipped:'
      for s in self.skipped[:20]:
        text += f'\n  row {s.row} ({s.identifier}): {s.reason}'
      if len(self.skipped) > 20:
        text += f'\n  ... and {len(self.skipped) - 20} more'
    return text

  def to_dict(self) -> dict:
    return dict(path=self.path, num_read=self.num_read,
                skipped=[dataclasses.asdict(s) for s in self.skipped])


def skip_reports_json(reports) -> str:
  """The reports of every file a run read, as the JSON text of
  `skipped_rows.json` (written beside a run's outputs, skips or not)."""
  return json.dumps([r.to_dict() for r in reports], indent=2)


# ----------------------------------------------------------------------------
# Elements and formulas


def check_elements(numbers, where: str = '') -> None:
  """Raise `StructureError` unless every atomic number is in 1..100, the
  elements the models represent."""
  numbers = np.asarray(numbers)
  bad = numbers[(numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)]
  if bad.size:
    z = int(bad[0])
    name = ase.data.chemical_symbols[z] if 0 < z < len(ase.data.chemical_symbols) \
        else 'unknown'
    raise validation.StructureError(
        f'{where}element {name} (Z = {z}) is outside Z = 1..{MAX_ATOMIC_NUMBER}, '
        'the elements the models represent')


def parse_formula(formula: str) -> np.ndarray:
  """Atomic numbers of a formula such as 'BaTiO3' or 'C8' (`[N]` int).

  Raises ValueError naming the problem: not a formula, an unknown symbol,
  a zero count, more than `MAX_FORMULA_ATOMS` atoms, or an element outside
  Z = 1..100.
  """
  if not re.fullmatch(r'([A-Z][a-z]?\d*)+', formula or ''):
    raise ValueError(f'{formula!r} is not a chemical formula such as BaTiO3 or C8')
  counts = [int(n) if n else 1 for _, n in re.findall(r'([A-Z][a-z]?)(\d*)', formula)]
  if 0 in counts:
    raise ValueError(f'{formula!r}: an element with a zero count')
  if sum(counts) > MAX_FORMULA_ATOMS:
    raise ValueError(f'{formula!r}: more than {MAX_FORMULA_ATOMS} atoms')
  try:
    numbers = ase.Atoms(formula).numbers
  except (KeyError, ValueError) as err:
    raise ValueError(f'{formula!r} is not a chemical formula ({err})') from None
  try:
    check_elements(numbers)
  except validation.StructureError as err:
    raise ValueError(f'{formula!r}: {err}') from None
  return numbers


def _composition(numbers) -> dict[int, int]:
  values, counts = np.unique(np.asarray(numbers), return_counts=True)
  return {int(z): int(c) for z, c in zip(values, counts)}


def _declared_composition(formula: str) -> dict[int, float]:
  from pymatgen.core import Composition
  comp = Composition(formula)
  return {int(el.Z): float(n) for el, n in comp.items()}


def _check_formulas(atoms: ase.Atoms, declared: dict) -> None:
  """Compare the parsed atoms with what the file declares.

  declared: {'_chemical_formula_sum': (text, Z) -> cell contents, exactly or
  per formula unit times Z; 'formula': text -> the same reduced formula}.
  """
  have = _composition(atoms.numbers)
  if '_chemical_formula_sum' in declared:
    text, z = declared['_chemical_formula_sum']
    try:
      want = _declared_composition(text)
    except Exception:  # an unparseable declaration checks nothing
      want = None
    if want is not None and not any(
        want.keys() == have.keys() and all(
            abs(want[k] * m - have[k]) < 1e-6 for k in have) for m in {1, z}):
      raise validation.StructureError(
          f'{len(atoms)} atoms ({atoms.get_chemical_formula()}) but the CIF '
          f'declares _chemical_formula_sum {text!r}: atoms are missing '
          '(truncated file?) or the CIF is inconsistent')
  if declared.get('formula'):
    text = declared['formula']
    try:
      want = _declared_composition(text)
    except Exception:
      raise validation.StructureError(f'formula column {text!r} is not a formula'
                                      ) from None
    reduce = lambda c: {k: v / min(c.values()) for k, v in c.items()}
    got, expected = reduce(have), reduce(want)
    if got.keys() != expected.keys() or any(
        abs(got[k] - expected[k]) > 1e-6 for k in got):
      raise validation.StructureError(
          f'atoms {atoms.get_chemical_formula()} do not match the formula column '
          f'{text!r} (truncated or edited row?)')


# ----------------------------------------------------------------------------
# Records: one per row, block or frame, before the shared checks


@dataclasses.dataclass
class _Record:
  row: int
  identifier: str
  parse: Callable[[], tuple[ase.Atoms, dict]] | None  # -> (atoms, declared)
  info: dict = dataclasses.field(default_factory=dict)
  problem: str = ''  # set when the record is bad before parsing


def _csv_records(path: Path, min_distance: float) -> list[_Record]:
  csv.field_size_limit(sys.maxsize)
  text = textfile.read_text(path)
  reader = csv.DictReader(text.splitlines(keepends=True), strict=True)
  columns = reader.fieldnames or []
  if 'cif' not in columns:
    raise DataError(f'{path}: no "cif" column (columns: {columns})')
  records = []
  while True:
    k = len(records)
    try:
      row = next(reader)
    except StopIteration:
      break
    except csv.Error as err:
      records.append(_Record(k, str(k), None, problem=(
          f'the file ends inside this row ({err}): truncated file?')))
      break
    ident = str(row.get('material_id') or k)
    if None in row.values():
      have = sum(v is not None for v in row.values())
      problem = f'row has {have} of {len(columns)} columns: cut short (truncated file?)'
    elif None in row:
      problem = f'row has more fields than the {len(columns)} columns of the header'
    else:
      problem = ''

    def parse(text=row['cif'], formula=row.get('formula', '')):
      atoms, declared = cif.parse_block(text, min_distance)
      declared['formula'] = formula
      return atoms, declared
    records.append(_Record(k, ident, parse, _row_info(row, k), problem))
  if records and not text.endswith('\n') and not records[-1].problem:
    records[-1].problem = ('the file ends inside this row (no final newline): '
                           'truncated file?')
  return records


def _row_info(row: dict, k: int) -> dict:
  info = {'row': k}
  for key, value in row.items():
    if key in ('cif', '', None):
      continue
    try:
      info[key] = float(value)
    except (TypeError, ValueError):
      info[key] = value
  info['material_id'] = str(row.get('material_id') or k)
  return info


def _cif_records(path: Path, min_distance: float) -> Iterator[_Record]:
  text = textfile.read_text(path)
  blocks = cif.split_blocks(text)
  if not blocks:
    raise DataError(f'{path}: no CIF data block (no line starts with data_)')
  for k, (name, block) in enumerate(blocks):
    yield _Record(k, name, lambda block=block: cif.parse_block(block, min_distance),
                  {'row': k, 'material_id': name})


def _ase_source(path: Path, format: str | None):
  """(file or path, format) for ASE: text formats go through `read_text`
  (gzip, encodings, line endings), binary ones are read as they are."""
  from ase.io import formats
  name = path.with_suffix('') if textfile.is_gzip(path) else path
  if format is None:
    try:
      format = formats.filetype(str(name), read=False)
    except Exception:  # ASE raises several types for unknown names
      format = None
  spec = formats.ioformats.get(format) if format else None
  if spec is None and not textfile.is_gzip(path):
    return path, format
  if spec is not None and spec.isbinary:
    if textfile.is_gzip(path):
      raise DataError(f'{path}: a gzipped {format} file; unzip it first')
    return path, format
  if spec is None:
    raise DataError(f'{path}: cannot tell the format of the gzipped file; '
                    'name it .extxyz.gz, .cif.gz, .csv.gz, ...')
  return io.StringIO(textfile.read_text(path)), format


def _ase_records(path: Path, index, format) -> Iterator[_Record]:
  count = 0
  source, format = _ase_source(path, format)
  try:
    for atoms in ase.io.iread(source, index=index, format=format):
      ident = str(atoms.info.get('material_id', count))
      yield _Record(count, ident, lambda atoms=atoms: (atoms, {}), {'row': count})
      count += 1
  except Exception as err:  # ASE raises many types on corrupt files
    if isinstance(err, KeyError):  # ASE's symbol table: not an element
      yield _Record(count, str(count), None, problem=(
          f'unknown element symbol {err} (not in the periodic table); frames after '
          'it cannot be read either'))
      return
    if not count:
      raise DataError(f'{path}: cannot be read ({type(err).__name__}: '
                      f'{err})') from None
    yield _Record(count, str(count), None, problem=(
        f'cannot be read ({type(err).__name__}: {err}): truncated file?'))


# ----------------------------------------------------------------------------
# The shared path


def _standardize(atoms: ase.Atoms, niggli: bool, primitive: bool) -> ase.Atoms:
  if primitive:
    from pymatgen.io.ase import AseAtomsAdaptor
    s = AseAtomsAdaptor.get_structure(atoms).get_primitive_structure()
    info = dict(atoms.info)
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.info.update(info)
  if niggli:
    from ase.build import niggli_reduce
    atoms = atoms.copy()
    niggli_reduce(atoms)
  atoms.wrap()
  return atoms


def read_structures(path: str | os.PathLike, *, index=':', format: str | None = None,
                    skip_bad: bool = False, validate: bool = True,
                    max_atoms: int | None = None,
                    min_distance: float = validation.DEFAULT_MIN_DISTANCE,
                    niggli: bool = False, primitive: bool = False,
                    cache_dir: str | os.PathLike | None = None,
                    progress: bool = False) -> tuple[list[ase.Atoms], LoadReport]:
  """Read every structure of a file: a CDVAE CSV (one CIF per row in column
  `cif`), a CIF, or any format ASE reads.

  Each returned `Atoms` carries `info['row']` (0-based data row, CIF block or
  frame) and `info['material_id']`; CSV rows also their other columns
  (numbers parsed as floats).

  Args:
    skip_bad: leave bad records out and list them in the report, instead of
      raising on the first.
    validate: run the checks (cell, NaN, overlap, elements, declared
      formulas). False reads generated samples as they are: only records
      that cannot be parsed at all are bad.
    max_atoms: reject (or skip) structures with more atoms.
    min_distance: overlap threshold in Angstrom.
    niggli, primitive: standardise cells on load (primitive first).
    cache_dir: if given, parsed structures are cached there as `.npz`, keyed
      on the file's path, size, mtime and these options.
    progress: show a progress bar.

  Raises:
    DataError: a missing, unreadable, incomplete or empty file (no records
      at all), a missing `cif` column, or (without `skip_bad`) the first
      bad record.
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(f'{path}: no such file')
  outputs.check_complete(path)
  options = dict(niggli=niggli, primitive=primitive, max_atoms=max_atoms,
                 min_distance=min_distance, skip_bad=skip_bad, validate=validate,
                 index=str(index), format=format)
  cache = _cache_file(path, cache_dir, options) if cache_dir else None
  if cache is not None and cache.is_file():
    try:
      return _read_cache(cache, path)
    except Exception:  # a damaged cache file is rebuilt from the data file
      pass
  suffix = (path.with_suffix('') if textfile.is_gzip(path) else path).suffix.lower()
  check_distance = min_distance if validate else 0.0
  if format is None and suffix == '.csv':
    records = _csv_records(path, check_distance)
  elif format is None and suffix == '.cif' or format == 'cif':
    records = _cif_records(path, check_distance)
  else:
    records = _ase_records(path, index, format)
  report = LoadReport(str(path))
  structures = []
  for record in tqdm(records, desc=f'reading {path.name}', disable=not progress,
                     leave=False):
    try:
      if record.problem:
        raise validation.StructureError(record.problem)
      atoms, declared = record.parse()
      if validate:
        validation.check_structure(atoms, min_distance, max_atoms,
                                   validation.MAX_CELL_EDGE)
        check_elements(atoms.numbers)
        _check_formulas(atoms, declared)
      atoms = _standardize(atoms, niggli, primitive) if validate else atoms
    except validation.StructureError as err:
      if not skip_bad:
        raise DataError(f'{path}, row {record.row} ({record.identifier}): {err}'
                        ) from None
      report.skipped.append(SkippedRow(record.row, record.identifier, str(err)))
      continue
    atoms.info.update(record.info)
    atoms.info.setdefault('material_id', record.identifier)
    structures.append(atoms)
  report.num_read = len(structures)
  if not structures and not report.skipped:
    raise DataError(f'{path}: holds no structures (an empty file, or not a '
                    'structure file?)')
  if cache is not None:
    _write_cache(cache, structures, report)
  return structures, report


def _cache_file(path: Path, cache_dir: str | os.PathLike, options: dict) -> Path:
  stat = path.stat()
  key = json.dumps([CACHE_VERSION, str(path.resolve()), stat.st_size,
                    stat.st_mtime_ns, options], sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:24]
  return Path(cache_dir) / f'{path.stem}-{digest}.npz'


def _write_cache(cache: Path, structures, report: LoadReport) -> None:
  arrays = io_lib.atoms_to_arrays(structures)
  infos = json.dumps([a.info for a in structures], default=str)
  skipped = json.dumps([dataclasses.asdict(s) for s in report.skipped])
  with io_lib.atomic_path(cache) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, infos=np.array(infos), skipped=np.array(skipped), **arrays)


def _read_cache(cache: Path, path: Path):
  with np.load(cache) as data:
    structures = io_lib.arrays_to_atoms(data)
    infos = json.loads(str(data['infos']))
    skipped = [SkippedRow(**s) for s in json.loads(str(data['skipped']))]
  for atoms, info in zip(structures, infos):
    atoms.info.update(info)
  return structures, LoadReport(str(path), len(structures), skipped, True)


def check_npz_arrays(arrays: dict, where: str) -> None:
  """Raise `DataError` (naming `where`) unless structure arrays agree:
  `num_atoms [S]` non-negative integers whose sum is the length of
  `frac_coords [T, 3]` and `atom_types [T]` (integers in 0..118, ASE's
  atomic numbers),
  `lattices [S, 3, 3]`, and `source_row [S]` where present."""
  missing = [k for k in ('num_atoms', 'lattices', 'frac_coords', 'atom_types')
             if k not in arrays]
  if missing:
    raise DataError(f'{where}: not a structures .npz (no {", ".join(missing)})')
  n, types = np.asarray(arrays['num_atoms']), np.asarray(arrays['atom_types'])
  frac, lattices = np.asarray(arrays['frac_coords']), np.asarray(arrays['lattices'])
  problems = []
  if n.ndim != 1 or not np.issubdtype(n.dtype, np.integer) or (n < 0).any():
    problems.append('num_atoms is not a list of non-negative integers')
  elif int(n.sum()) != len(types) or int(n.sum()) != len(frac):
    problems.append(f'num_atoms adds up to {int(n.sum())} atoms but there are '
                    f'{len(types)} atom_types and {len(frac)} frac_coords rows')
  if frac.ndim != 2 or frac.shape[-1] != 3:
    problems.append(f'frac_coords has shape {frac.shape}, not [T, 3]')
  if lattices.shape != (len(n), 3, 3):
    problems.append(f'lattices has shape {lattices.shape}, not [{len(n)}, 3, 3]')
  if (not np.issubdtype(types.dtype, np.integer) or (types < 0).any()
      or (types >= len(ase.data.chemical_symbols)).any()):
    problems.append('atom_types are not atomic numbers')
  if 'source_row' in arrays and np.shape(arrays['source_row']) != (len(n),):
    problems.append(f'source_row has {np.size(arrays["source_row"])} entries for '
                    f'{len(n)} structures')
  if problems:
    raise DataError(f'{where}: inconsistent arrays: {"; ".join(problems)}')


def read_npz(path) -> list[ase.Atoms]:
  """Structures from a `write_npz` file (or DiffCSP's eval `.npz` layout);
  `info['source_row']` from its `source_row` array where it has one. An
  unreadable (truncated) file or arrays that disagree (`check_npz_arrays`)
  are a `DataError` naming the file."""
  path = Path(path)
  outputs.check_complete(path)
  try:
    with np.load(path) as data:
      arrays = {k: data[k] for k in data.files
                if k in ('num_atoms', 'lattices', 'frac_coords', 'atom_types',
                         'source_row')}
  except Exception as err:  # zipfile, zlib and numpy raise many types
    raise DataError(f'{path}: not a readable structures .npz ({type(err).__name__}: '
                    f'{err}; truncated file?)') from None
  check_npz_arrays(arrays, str(path))
  structures = io_lib.arrays_to_atoms(arrays)
  rows = arrays.get('source_row')
  if rows is not None:
    for atoms, row in zip(structures, rows):
      atoms.info['source_row'] = int(row)
  return structures
