"""Both notebooks execute end to end at tiny scale (parameters cell replaced)."""
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / 'notebooks'


def _run(name: str, parameters: str, cwd: Path):
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  tagged = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, f'{name} needs exactly one parameters cell'
  tagged[0].source = parameters
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(cwd)}}).execute()
  return nb


def _outputs(nb, kind):
  return [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
          if o.output_type == kind or kind in o.get('data', {})]


@pytest.mark.slow
def test_quickstart_then_analysis_notebooks(tmp_path):
  nb = _run('quickstart.ipynb', (
      "WORKDIR = 'qs'\nTRAIN_STEPS = 10\nHIDDEN, LAYERS, FREQS, TIME_DIM = 16, 1, 4, 8\n"
      "NUM_STEPS = 10\nNUM_BUCKETS = 1\nSAMPLES_PER_STRUCTURE = 1\nSEED = 0"), tmp_path)
  assert not _outputs(nb, 'error')
  assert len(_outputs(nb, 'image/png')) >= 5  # curve, batch, schedule, forward, reverse
  samples = np.load(tmp_path / 'qs' / 'samples' / 'samples.npz')
  assert samples['num_atoms'].shape == (21,) and np.any(samples['frac_coords'] != 0)
  nb = _run('analysis.ipynb', (
      "SAMPLES = 'qs/samples/samples.npz'\nTEST = 'builtin'\nDATASET = 'perov_5'\n"
      "OUT = 'analysis'\nMAX_TEST = 10"), tmp_path)
  assert not _outputs(nb, 'error')
  assert len(_outputs(nb, 'image/png')) == 2
  assert (tmp_path / 'analysis' / 'metrics.md').read_text().count('|') > 10
