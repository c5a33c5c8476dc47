"""Driver of the command-line fuzz test (`test_fuzz_scripts.py`).

  python tests/fuzz_scripts.py SPEC.json

Runs one experiment script's `main` in this process on command lines that
hypothesis draws from a small grammar: the script's own good base command
with one or two of its flags set to a bad value (numbers out of range, NaN,
non-numbers, empty strings, malformed formulas and lists, and paths to
missing, damaged, binary, mis-encoded, truncated or wrong-kind files and
folders). Each run must end with exit code 0 or with exit code 2 and one
`error: ...` line on stderr; any other ending (a traceback) is a failure.

Besides the drawn examples, every file and folder of the bank is tried in
every path flag of the base command (a sweep: drawn at random, each would
be tried too rarely).

A command line that passes every check reaches the work itself: the first
compiled program (`jax.jit`) or metric computation is replaced by a stub
that ends the run there, so each example costs milliseconds to a second.
The work itself is covered by the other tests.

Prints one JSON object: {'examples': N, 'outcomes': {...}, 'failures': [...]}.
"""
import contextlib
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / 'experiments'


class ReachedWork(BaseException):
  """The command line passed every check; the stub stops it here."""


def _stub(*args, **kwargs):
  raise ReachedWork()


def bad_values(flag, bank: dict) -> list[str]:
  """The grammar: values to try for one absl flag, by its type."""
  from absl import flags
  text = ['', ' ', 'nan', 'abc', '-1', '0', 'H0', 'Xx2', 'C100000', 'BaTiO3',
          'a,b', ',,', '../..', '.']
  if isinstance(flag, flags.BooleanFlag):
    return ['maybe', '2', '']
  if isinstance(flag, flags.EnumFlag):
    return ['', 'bogus', 'CSP']
  if flag.flag_type() == 'int':
    return ['-1', '0', '1', '99999999999999999999999', '1.5', 'abc', '', '1e9']
  if flag.flag_type() == 'float':
    return ['nan', 'inf', '-inf', '-1', '0', '1e400', '1e-300', 'abc', '', '1e30']
  if isinstance(flag, flags.MultiFlag) or 'list' in flag.flag_type():
    return ['', ',,', '-1', 'abc', '0,0', 'nan', '1e400,2', '999999']
  return text + list(bank.values())


def run_one(main, argv: list[str]) -> tuple[str, str]:
  """(outcome, detail) of one command line: 'ok', 'refused', 'work' or
  'failure' with the traceback or the stderr text."""
  from absl import flags
  from jaxcrystal import cli
  flags.FLAGS.unparse_flags()
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      cli.run(main, argv)
    code = 0
  except SystemExit as exit_:
    code = exit_.code
  except ReachedWork:
    return 'work', ''
  except BaseException:  # a traceback: what this test exists to find
    return 'failure', traceback.format_exc(limit=-6)
  lines = [line for line in err.getvalue().splitlines() if line.strip()]
  if code in (0, None):
    return 'ok', ''
  errors = [line for line in lines if line.startswith('error: ')]
  if code == 2 and len(errors) == 1:
    return 'refused', errors[0]
  return 'failure', f'exit code {code}, stderr: {lines[-5:]}'


def main() -> None:
  spec = json.loads(Path(sys.argv[1]).read_text())
  os.chdir(spec['cwd'])
  sys.path.insert(0, str(SCRIPTS))
  script = str(SCRIPTS / spec['script'])
  sys.argv = [script]
  namespace = runpy.run_path(script, run_name='fuzzed_script')
  import jax
  from absl import flags
  from hypothesis import HealthCheck, given, settings, strategies as st
  from jaxcrystal.evaluation import evaluate as evaluation
  from jaxcrystal.generators import dataset_factory
  from jaxcrystal import healing
  from jaxcrystal.evaluation import relaxation
  jax.jit = _stub
  relaxation.relax_all = _stub
  evaluation.evaluate_csp = evaluation.evaluate_dng = _stub
  dataset_factory.generate = _stub
  healing.vacancy_experiment = _stub
  by_module = flags.FLAGS.flags_by_module_dict()
  own = {f.name: f for module in ('fuzzed_script', 'train_flags', 'sampler_flags')
         for f in by_module.get(module, [])}
  names = sorted(own)
  bank = spec['bank']
  counter = {'n': 0}
  outcomes, failures = {}, []

  def command(mutations) -> list[str]:
    counter['n'] += 1
    out = str(Path(spec['cwd']) / f'out{counter["n"]}')
    base = [a.replace('{out}', out) for a in spec['base']]
    extra = []
    for name, value in mutations:
      if isinstance(own[name], flags.BooleanFlag) and value in ('on', 'off'):
        extra.append(f'--{name}' if value == 'on' else f'--no{name}')
      else:
        extra.append(f'--{name}={value}')
    return [script] + base + extra

  mutation = st.sampled_from(names).flatmap(lambda n: st.tuples(
      st.just(n), st.sampled_from(bad_values(own[n], bank)
                                  + (['on', 'off'] if isinstance(own[n], flags.BooleanFlag)
                                     else []))))

  @settings(max_examples=spec['examples'], derandomize=True, deadline=None,
            database=None, suppress_health_check=list(HealthCheck))
  @given(st.lists(mutation, min_size=1, max_size=2))
  def check(mutations):
    record(mutations)

  def record(mutations):
    argv = command(mutations)
    outcome, detail = run_one(namespace['main'], argv)
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if outcome == 'failure' and len(failures) < 5:
      failures.append({'argv': argv[1:], 'detail': detail})

  base_outcome = run_one(namespace['main'], command([]))
  # Every file and folder of the bank in every path flag of the base command.
  path_flags = [a[2:].split('=', 1)[0] for a in spec['base']
                if '=' in a and (a.split('=', 1)[1] in bank.values() or '{out}' in a)]
  for name in path_flags:
    for value in bank.values():
      record([(name, value)])
  check()
  print(json.dumps({'examples': counter['n'], 'base': base_outcome,
                    'outcomes': outcomes, 'failures': failures}))


if __name__ == '__main__':
  main()
