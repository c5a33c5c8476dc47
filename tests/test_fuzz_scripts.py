"""Fuzz test of every experiment script's flags and input files (issue 29):
hypothesis draws bad values and damaged files (`fuzz_scripts.py` holds the
grammar and the driver); every command line must end in exit code 0, or 2
with one `error: ...` line, never a traceback."""
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcrystal.data import datasets
from jaxcrystal.data import io as io_lib

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'
EXAMPLES = 20

# Each script's good base command ({out}: a fresh output path per example).
BASES = {
    'train_ddpm.py': ['--workdir={out}', '--train_steps=2', '--batch_size=4',
                      '--network.hidden=8', '--network.num_layers=1', '--noprogress'],
    'quickstart.py': ['--workdir={out}', '--train_steps=2', '--noprogress'],
    'sample.py': ['--checkpoint=run', '--formula=Al4', '--num_samples=2',
                  '--out={out}', '--noprogress'],
    'evaluate.py': ['--samples=good.extxyz', '--test_csv=good.extxyz', '--task=csp',
                    '--pair_by_position', '--workers=1', '--out={out}', '--noprogress'],
    'loss_by_noise_level.py': ['--checkpoint=run', '--data=good.extxyz',
                               '--timesteps=1,5', '--out={out}', '--noprogress'],
    'run_benchmark.py': ['--checkpoint=run', '--test_csv=good.extxyz', '--task=csp',
                         '--dataset=perov_5', '--workers=1', '--out={out}',
                         '--noprogress'],
    'benchmark_sampling_steps.py': ['--checkpoint=run', '--test_csv=good.extxyz',
                                    '--calls=2', '--workers=1', '--out={out}',
                                    '--noprogress'],
    'heal_vacancy.py': ['--denoiser=run', '--out={out}', '--noprogress'],
    'train_denoiser.py': ['--workdir={out}', '--train_steps=2', '--num_structures=4',
                          '--noprogress'],
    'train_graph_diffusion.py': ['--workdir={out}', '--train_steps=2',
                                 '--num_train=8', '--batch_size=4', '--noprogress'],
    'train_property.py': ['--workdir={out}', '--property=num_elements',
                          '--train_data=good.extxyz', '--val_data=good.extxyz',
                          '--train_steps=2', '--regressor.hidden=8',
                          '--regressor.num_layers=1', '--noprogress'],
    'generate_structures.py': ['--out={out}', '--num_samples=3', '--workers=1',
                               '--noprogress'],
    'relax.py': ['--samples=good.extxyz', '--reference=good.extxyz', '--workers=1',
                 '--max_steps=5', '--out={out}', '--noprogress'],
}


def _bank(folder: Path) -> dict[str, str]:
  """Damaged and wrong-kind files and folders, by name -> path (relative
  to `folder`, the scripts' working directory)."""
  good = datasets.builtin_structures()[:3]
  io_lib.write_extxyz(folder / 'good.extxyz', good)
  shutil.copytree(FIXTURES / 'legacy_run_csp', folder / 'run')
  damaged = folder / 'damaged_run'
  shutil.copytree(FIXTURES / 'legacy_run_csp', damaged)
  for data in damaged.rglob('ocdbt.process_0/d/*'):
    data.write_bytes(data.read_bytes()[:20])
  shutil.copytree(FIXTURES / 'legacy_run_csp', folder / 'run_without_config')
  (folder / 'run_without_config' / 'config.json').unlink()
  (folder / 'empty_dir').mkdir()
  (folder / 'empty.csv').write_bytes(b'')
  (folder / 'binary.csv').write_bytes(bytes(range(256)) * 8)
  (folder / 'latin1.csv').write_bytes('material_id,cif\n\xe9,x\n'.encode('latin-1'))
  (folder / 'utf16.csv').write_bytes('material_id,cif\n1,x\n'.encode('utf-16-le'))
  text = (folder / 'good.extxyz').read_bytes()
  (folder / 'cut.extxyz').write_bytes(text[: len(text) // 2])
  (folder / 'cut.extxyz.gz').write_bytes(gzip.compress(text)[:-30])
  (folder / 'garbage.extxyz').write_text('hello\nworld\n')
  io_lib.write_npz(folder / 'good.npz', good)
  (folder / 'cut.npz').write_bytes((folder / 'good.npz').read_bytes()[:300])
  with np.load(folder / 'good.npz') as data:
    arrays = dict(data)
  arrays['num_atoms'] = arrays['num_atoms'] + 1
  np.savez(folder / 'moved.npz', **arrays)
  (folder / 'header_only.csv').write_text(',material_id,cif,formula\n')
  (folder / 'notes.md').write_text('not a structure file\n')
  names = ['good.extxyz', 'run', 'damaged_run', 'run_without_config', 'empty_dir',
           'empty.csv', 'binary.csv', 'latin1.csv', 'utf16.csv', 'cut.extxyz',
           'cut.extxyz.gz', 'garbage.extxyz', 'good.npz', 'cut.npz', 'moved.npz',
           'header_only.csv', 'notes.md', 'missing.csv', 'missing_dir/x',
           'good.extxyz/inside', 'run/checkpoints']
  return {name: name for name in names}


@pytest.mark.parametrize('script', sorted(BASES))
def test_no_command_line_ends_in_a_traceback(script, tmp_path):
  work = tmp_path / 'work'
  work.mkdir()
  spec = {'script': script, 'base': BASES[script], 'cwd': str(work),
          'bank': _bank(work), 'examples': EXAMPLES}
  (tmp_path / 'spec.json').write_text(json.dumps(spec))
  done = subprocess.run([sys.executable, str(ROOT / 'tests' / 'fuzz_scripts.py'),
                         str(tmp_path / 'spec.json')], capture_output=True, text=True,
                        timeout=600, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result['base'][0] != 'failure', result['base']
  assert not result['failures'], '\n\n'.join(
      ' '.join(f['argv']) + '\n' + '\n'.join(f['detail'].splitlines()[-4:])
      for f in result['failures'])
  assert result['examples'] >= EXAMPLES
  # The grammar reaches past the checks too, not only refusals.
  assert set(result['outcomes']) <= {'ok', 'refused', 'work'}
