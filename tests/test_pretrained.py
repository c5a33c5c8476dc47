"""The models shipped in pretrained/ (listed in pretrained/manifest.json):
each file is the one the manifest describes, loads, and samples 8 physical
structures in CI time (finite, positive volume, no pair under 0.5 A in as
many of the 8 as the model's val rate makes near certain, 7 unless the
manifest says otherwise; a CSP model keeps the requested composition)."""
import json
from pathlib import Path

import numpy as np
import pytest

from jaxcrystal.data import io as io_lib
from jaxcrystal.data import readers
from jaxcrystal.generative import generate
from jaxcrystal.generative import request

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / 'pretrained' / 'manifest.json').read_text())
MODELS = MANIFEST['models']


def test_the_manifest_lists_shipped_files_under_5_mb():
  assert MODELS, 'pretrained/manifest.json lists no model'
  for entry in MODELS:
    path = ROOT / 'pretrained' / entry['file']
    assert path.is_file(), path
    assert path.stat().st_size < 5e6
    assert io_lib.file_sha256(path) == entry['sha256'], entry['name']


@pytest.mark.parametrize('entry', MODELS, ids=[m['name'] for m in MODELS])
def test_a_shipped_model_samples_physical_structures(entry):
  model, params, config, step = generate.load_run(ROOT / 'pretrained' / entry['name'])
  assert step == entry['step'] and config.model.task == entry['task']
  if model.task.generates_types:
    counts = generate.recorded_atom_counts(ROOT / 'pretrained' / entry['name'])
    compositions, _, _, _ = request.compositions_for_request(
        config, num_samples=8, seed=0, atom_counts=counts)
  else:
    compositions = ([readers.parse_formula(f) for f in entry['test_formulas']] * 8)[:8]
  samples, _ = generate.sample_structures(model, params, compositions, seed=0,
                                          progress=False)
  assert len(samples) == 8
  closest = []
  for sample, numbers in zip(samples, compositions):
    assert np.all(np.isfinite(sample.positions)) and np.all(np.isfinite(sample.cell[:]))
    assert sample.get_volume() > 0
    distances = sample.get_all_distances(mic=True)[np.triu_indices(len(sample), 1)]
    closest.append(distances.min() if distances.size else np.inf)
    if not model.task.generates_types:
      assert sorted(sample.numbers) == sorted(numbers)
  # Another CPU's rounding can change which 8 come out, so the bar is what
  # the model's val rate of structures without overlaps makes near certain
  # (the manifest's `min_without_overlap_of_8`, with its reason): 7 for
  # the Perov-5 CSP model (about 98 % on val).
  need = entry.get('min_without_overlap_of_8', 7)
  assert sum(d >= 0.5 for d in closest) >= need, (entry['name'], closest)


def test_the_chemical_system_model_told_a_set_fills_it():
  """`perov5_dng_flow_chemical_system` asked for Sr-Ti-O (the mask and the
  model told the set): every sample within the set, and most hold all
  three elements (93.9 % on 1,000; the unconditional model under the mask
  alone 43.6 %, docs/benchmarks.md issue 35): at least 5 of 8 here, which
  fewer than 0.1 % of draws at 93.9 % would miss."""
  name = 'perov5_dng_flow_chemical_system'
  model, params, config, _ = generate.load_run(ROOT / 'pretrained' / name)
  counts = generate.recorded_atom_counts(ROOT / 'pretrained' / name)
  compositions, _, _, _ = request.compositions_for_request(config, num_samples=8, seed=0,
                                                           atom_counts=counts)
  allowed = [[8, 22, 38]] * 8
  samples, _ = generate.sample_structures(model, params, compositions, seed=0,
                                          allowed_elements=allowed, progress=False)
  held = [set(int(z) for z in s.numbers) for s in samples]
  assert all(h <= {8, 22, 38} for h in held), held
  assert sum(h == {8, 22, 38} for h in held) >= 5, held
