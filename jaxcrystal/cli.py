"""How every experiment script starts and ends: `cli.run(main)`.

User errors end with one line on stderr, `error: ...`, and exit code 2; a
traceback means a bug. User errors are: a flag that fails its validator or
does not parse, any float flag that is NaN or infinite (checked for every
script, at parse time), stray arguments, and any `errors.UserError` (or
`absl.app.UsageError`) raised by `main`. The validators below are what
scripts register; they read no flags themselves.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Callable

from absl import app
from absl import flags

from jaxcrystal import errors

EXIT_USER_ERROR = 2

flags.DEFINE_string(
    'compilation_cache', '~/.cache/jaxcrystal/xla',
    "Folder of XLA's persistent compilation cache: a later run with the same "
    "shapes loads its compiled programs instead of compiling them again "
    "('' = off; the JAX_COMPILATION_CACHE_DIR variable, when set, wins).")


def fail(message: str) -> None:
  """Print `error: message` as one line on stderr and exit with code 2."""
  text = ' '.join(str(message).split())
  print(f'error: {text}', file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    rest = flags.FLAGS(argv)
  except flags.UnrecognizedFlagError as err:
    moved = sorted(n for n in flags.FLAGS if n.endswith('.' + err.flagname))
    fail(f'{err}' + (f' (did you mean --{moved[0]}?)'
                     if moved else ''))
  except flags.Error as err:
    fail(str(err))
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    if isinstance(value, float) and not math.isfinite(value):
      fail(f'flag --{name}={value}: must be a finite number')
  if len(rest) > 1:
    fail(f'unexpected arguments: {" ".join(rest[1:])} (flags are --name=value)')
  return rest


def run(main: Callable[[list[str]], object], argv: list[str] | None = None) -> None:
  """`absl.app.run(main)` with one-line user errors (see the module doc), on
  `argv` (default: `sys.argv`)."""
  def guarded(argv):
    try:
      return main(argv)
    except (errors.UserError, app.UsageError) as err:
      fail(str(err))
  def parse(argv):
    rest = _parse_flags(argv)
    use_compilation_cache(flags.FLAGS.compilation_cache)
    return rest
  app.run(guarded, argv=argv, flags_parser=parse)


def use_compilation_cache(folder: str) -> None:
  """Keep compiled XLA programs in `folder` across processes (JAX's
  persistent cache; programs that compile in under half a second are not
  kept). Must run before the first compilation of the process; '' or a
  set JAX_COMPILATION_CACHE_DIR leaves JAX's own setting alone."""
  if not folder or os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  folder = os.path.expanduser(folder)
  try:
    os.makedirs(folder, exist_ok=True)
    if not os.access(folder, os.W_OK):
      raise PermissionError('not writable')
  except OSError as err:
    print(f'note: compilation cache off, --compilation_cache={folder}: {err}',
          file=sys.stderr, flush=True)
    return
  import jax
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def flag_paths(*names: str) -> dict[str, str]:
  """{'--name': value} of path flags, the inputs a command's output folder
  must never replace (`outputs.check_replaceable`)."""
  return {f'--{name}': flags.FLAGS[name].value for name in names}


# ----------------------------------------------------------------------------
# Validators for scripts to register


def at_least(minimum: int, *names: str) -> None:
  """Each flag must be >= `minimum`."""
  for name in names:
    flags.register_validator(name, lambda v, m=minimum: v is None or v >= m,
                             message=f'--{name} must be >= {minimum}')


def at_most(maximum: int, *names: str) -> None:
  """Each flag must be <= `maximum` (sizes beyond any real use, which would
  otherwise overflow an array index or exhaust memory)."""
  for name in names:
    flags.register_validator(name, lambda v, m=maximum: v is None or v <= m,
                             message=f'--{name} must be <= {maximum}')


def checkpoint_choice(name: str) -> None:
  """'best', 'latest' or a checkpoint's step (digits)."""
  flags.register_validator(
      name, lambda v: v in ('best', 'best_quality', 'latest') or str(v).isdigit(),
      message=f"--{name} must be 'best', 'best_quality', 'latest' or a checkpoint's step")


def positive(*names: str) -> None:
  """Each float flag must be > 0."""
  for name in names:
    flags.register_validator(name, lambda v: v is None or v > 0,
                             message=f'--{name} must be > 0')


def existing_file(*names: str, optional: bool = False) -> None:
  for name in names:
    flags.register_validator(
        name, lambda v: (optional and not v) or v is None or os.path.isfile(v),
        message=f'--{name} must be an existing file')


def existing_dir(name: str, what: str) -> None:
  flags.register_validator(name, lambda v: v is None or os.path.isdir(v),
                           message=f'--{name} must be {what}')


def trained_model(name: str) -> None:
  """A training run directory or a model file (`pretrained/NAME` finds
  `pretrained/NAME.jcm`)."""
  from jaxcrystal.generative import model_file
  flags.register_validator(
      name, lambda v: v is None or os.path.isdir(v) or model_file.resolve(v) is not None,
      message=f'--{name} must be a training workdir or a model file (.jcm)')


def formula(name: str) -> None:
  """A chemical formula whose elements the models know (empty allowed)."""
  from jaxcrystal.data import readers

  def check(value):
    if value:
      try:
        readers.parse_formula(value)
      except ValueError as err:
        raise flags.ValidationError(f'--{name}: {err}') from None
    return True
  flags.register_validator(name, check)


def parse_conditions(specs: list[str], flag: str = 'condition') -> dict:
  """{property: value} of `--condition NAME=VALUE` flags (repeatable): a
  float where VALUE is a number, else the text (e.g. a chemical system
  Li-Fe-O); a malformed one raises `flags.ValidationError` naming it."""
  import math
  out = {}
  for spec in specs or []:
    name, sep, value = spec.partition('=')
    try:
      number = float(value)
    except ValueError:
      number = value.strip()
    if not name or not sep or number == '' or (
        isinstance(number, float) and not math.isfinite(number)):
      raise flags.ValidationError(f'--{flag}={spec}: give NAME=VALUE with a finite '
                                  'number (heat_ref=-0.5) or a set of elements '
                                  '(chemical_system=Li-Fe-O)')
    if name in out:
      raise flags.ValidationError(f'--{flag}: {name} is given twice')
    out[name] = number
  return out


def conditions(name: str) -> None:
  """`--name NAME=VALUE` flags (`parse_conditions`) are checked at parse time."""
  def check(value):
    parse_conditions(value, name)
    return True
  flags.register_validator(name, check)
