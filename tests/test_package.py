"""Promises of the package layout (issue 15)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_ALL = '''
import importlib, pkgutil, sys
import matplotlib
matplotlib.use("svg")  # what a notebook or script chose
import jaxcrystal
core = [m.name for m in pkgutil.walk_packages(jaxcrystal.__path__, "jaxcrystal.")
        if not m.name.startswith("jaxcrystal.recipes")]
for name in core:
    importlib.import_module(name)
print(matplotlib.get_backend())
# walk_packages imports packages (recipes/__init__ too) but no module in them
print(len(core), any(m.startswith("jaxcrystal.recipes.") for m in sys.modules))
'''


def test_importing_the_library_keeps_the_backend_and_never_loads_recipes():
  done = subprocess.run([sys.executable, '-c', IMPORT_ALL], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  backend, counts = done.stdout.split('\n')[-3:-1]
  assert backend == 'svg'
  count, recipes_loaded = counts.split()
  assert int(count) > 30 and recipes_loaded == 'False'


API_TOUR = '''
import sys
import jaxcrystal as jc
heavy = [m for m in ("jax", "flax", "pymatgen", "matplotlib") if m in sys.modules]
print("eager", heavy)
missing = [name for name in jc.__all__ if not hasattr(jc, name)]
print("missing", missing)
structures = jc.builtin_structures()
batch = jc.to_device(jc.batch_from_atoms(structures[:4]))
graph = jc.fully_connected_graph(batch)
config = jc.ModelConfig(task="csp_flow", num_steps=4).with_network(
    hidden=8, num_layers=1, num_freqs=2, time_dim=4)
model = jc.build_model(config)
import jax
params = model.init_params(jax.random.PRNGKey(0), batch)
samples, _ = jc.sample_structures(model, params, [s.numbers for s in structures[:2]],
                                  progress=False)
print("sampled", len(samples), type(batch).__name__ == "CrystalBatch")
'''


def test_the_public_api_is_one_import_away_and_loads_on_use():
  """`import jaxcrystal as jc` loads nothing heavy; every exported name
  resolves; the module docstring's tour runs (tiny model)."""
  done = subprocess.run([sys.executable, '-c', API_TOUR], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.splitlines()
  assert 'eager []' in lines and 'missing []' in lines, lines
  assert 'sampled 2 True' in lines, lines
