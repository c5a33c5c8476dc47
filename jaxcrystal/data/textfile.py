"""Bytes to text for every reader: gzip read transparently, byte-order
marks honoured, encodings and binary files refused in one line naming the
file, all line endings read as '\\n'."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from jaxcrystal.errors import DataError


_BOMS = ((b'\xef\xbb\xbf', 'utf-8'), (b'\xff\xfe\x00\x00', 'utf-32-le'),
         (b'\x00\x00\xfe\xff', 'utf-32-be'), (b'\xff\xfe', 'utf-16-le'),
         (b'\xfe\xff', 'utf-16-be'))


def is_gzip(path: Path) -> bool:
  """Whether `path` names a gzip file (`.gz`)."""
  return path.suffix.lower() == '.gz'


def read_bytes(path: Path) -> bytes:
  """The file's bytes, gunzipped for `.gz` (a damaged or truncated gzip
  stream is a `DataError` naming the file)."""
  data = path.read_bytes()
  if not is_gzip(path):
    return data
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as err:
    raise DataError(f'{path}: not a readable gzip file ({type(err).__name__}: '
                    f'{err}): truncated download?') from None


def read_text(path: Path) -> str:
  """A text file's contents as str with '\\n' line endings: gzip read
  transparently, a byte-order mark (UTF-8, -16 or -32) honoured and dropped,
  CR-only and CRLF line endings read. A binary file or one that is not
  UTF-8 is a `DataError` naming the file and what to do."""
  data = read_bytes(path)
  encoding = 'utf-8'
  for bom, name in _BOMS:
    if data.startswith(bom):
      data, encoding = data[len(bom):], name
      break
  try:
    text = data.decode(encoding)
  except UnicodeDecodeError as err:
    if b'\x00' in data[:4096]:
      raise DataError(f'{path}: a binary file, not UTF-8 text (a compressed '
                      'file must end in .gz; UTF-16 needs its byte-order mark)'
                      ) from None
    raise DataError(f'{path}: not UTF-8 text (byte {err.start}: '
                    f'{data[err.start:err.start + 1]!r}); save it as UTF-8') from None
  if '\x00' in text:
    raise DataError(f'{path}: a binary file, not text (it holds NUL bytes)')
  return text.replace('\r\n', '\n').replace('\r', '\n')
