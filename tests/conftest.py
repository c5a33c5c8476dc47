"""Shared fixtures: PRNG keys, random triclinic cells, NaN debugging on."""
import os
from pathlib import Path

# One XLA compilation cache for the test workers and the command-line runs
# they start (inherited through the environment): many tests compile the same
# tiny models. It lives in the checkout's ignored .cache/, so a fresh clone
# (CI) starts empty; results do not depend on it, only compile time does.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(
    Path(__file__).resolve().parents[1] / '.cache' / 'jax-compilation'))

# Tests compile hundreds of tiny programs, most of them once, and run each
# for milliseconds: XLA's CPU backend without its LLVM optimisation passes
# compiles them about a third faster (inherited by the command-line runs).
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()

import jax  # noqa: E402  (after the cache location is set)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ase.geometry import cellpar_to_cell  # noqa: E402

jax.config.update('jax_debug_nans', True)
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])

DATASETS = Path(__file__).resolve().parents[1].parent / 'shared' / 'datasets'


@pytest.fixture
def keys():
  """An endless supply of independent PRNG keys."""
  def gen(seed=0):
    key = jax.random.PRNGKey(seed)
    while True:
      key, sub = jax.random.split(key)
      yield sub
  return gen()


def random_cells(rng: np.random.Generator, count: int, min_angle: float = 30.0,
                 lengths=(3.0, 9.0)) -> list[np.ndarray]:
  """Random triclinic cells with angles in [min_angle, 180 - min_angle] and
  a volume at least 10 % of the orthogonal box's (so they are real cells)."""
  cells = []
  while len(cells) < count:
    par = np.r_[rng.uniform(*lengths, 3), rng.uniform(min_angle, 180 - min_angle, 3)]
    try:
      cell = cellpar_to_cell(par)
    except Exception:  # impossible angle triple
      continue
    if np.all(np.isfinite(cell)) and np.linalg.det(cell) > 0.1 * np.prod(par[:3]):
      cells.append(cell)
  return cells


@pytest.fixture
def datasets_dir():
  if not DATASETS.is_dir():
    pytest.skip(f'benchmark datasets not present at {DATASETS}')
  return DATASETS


# The longest tests (tens of seconds each: end-to-end runs of the scripts and
# notebooks) start first, so that the xdist workers finish together instead
# of one of them running a long test alone at the end (CI has two cores).
LONG_TESTS = (
    'tests/test_notebooks.py::',
    'tests/test_train.py::test_train_then_sample_cli_end_to_end',
    'tests/test_quickstart.py::test_run_quickstart_tiny',
    'tests/test_denoiser.py::test_train_and_heal_end_to_end',
    'tests/test_train.py::test_sigkill_and_resume_gives_identical_parameters',
    'tests/test_train.py::test_compiled_programs_loaded_from_the_cache_train_the_same',
    'tests/test_constraints.py::test_untrained_models_sample_within_the_elements',
    'tests/test_fuzz_scripts.py::',
    'tests/test_relaxation.py::test_chgnet_in_worker_processes_from_the_command_line',
)


def pytest_collection_modifyitems(items):
  def rank(item):
    return next((k for k, prefix in enumerate(LONG_TESTS)
                 if item.nodeid.startswith(prefix)), len(LONG_TESTS))
  items.sort(key=rank)  # stable: the order within each group is kept
