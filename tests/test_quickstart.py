"""The quickstart pipeline end to end at tiny scale, and its physical check."""
import json

import numpy as np
from ase.build import bulk

from jaxcrystal.generative import model as model_lib
from jaxcrystal.recipes import quickstart
from jaxcrystal.generative import train


def test_prototype_check_accepts_prototypes_and_rejects_others():
  assert quickstart.prototype_check(bulk('Al', 'fcc', a=4.05, cubic=True)) == (True, '')
  assert quickstart.prototype_check(bulk('Fe', 'bcc', a=2.87, cubic=True))[0]
  assert quickstart.prototype_check(bulk('C', 'diamond', a=3.57, cubic=True))[0]
  ok, why = quickstart.prototype_check(bulk('Al', 'bcc', a=3.2, cubic=True))
  assert not ok and '!= 12' in why
  squeezed = bulk('Fe', 'bcc', a=2.87, cubic=True)
  squeezed.positions[1] = squeezed.positions[0] + [0.3, 0, 0]
  ok, why = quickstart.prototype_check(squeezed)
  assert not ok and 'overlap' in why
  assert not quickstart.prototype_check(bulk('Cu', 'fcc', a=3.6))[0]


def test_run_quickstart_tiny(tmp_path):
  config = train.TrainConfig(
      model=model_lib.ModelConfig(num_steps=10).with_network(
          hidden=16, num_layers=1, num_freqs=4, time_dim=8),
      batch_size=21, num_buckets=1, train_steps=10, eval_every=10, checkpoint_every=10,
      val_data='builtin', progress=False)
  summary = quickstart.run_quickstart(config, tmp_path, samples_per_structure=1,
                                      log=lambda *a: None)
  assert summary['num_samples'] == 21
  assert 0.0 <= summary['prototype_match_fraction'] <= 1.0
  on_disk = json.loads((tmp_path / 'samples' / 'summary.json').read_text())
  assert on_disk['num_samples'] == 21 and on_disk['checkpoint_step'] == 10
  arrays = np.load(tmp_path / 'samples' / 'samples.npz')
  assert arrays['reason'].shape == (21,)
  assert int((arrays['reason'] == '').sum()) == int(arrays['valid'].sum())
  for name in ('rdf_real_vs_generated.png', 'batch_histograms.png'):
    assert (tmp_path / 'samples' / name).stat().st_size > 1000
  assert (tmp_path / 'training_curve.png').stat().st_size > 1000
