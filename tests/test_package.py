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
