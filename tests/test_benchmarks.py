"""The paired benchmark (`experiments/benchmark.py --peer`), driven with a
stand-in peer harness that records what it was asked and reports fixed
figures: both orders run, the peer gets jaxcrystal's shapes and data, and the
ratios are jaxcrystal's figures over the peer's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest

from jaxcrystal.data import datasets

ROOT = Path(__file__).resolve().parents[1]

FAKE_BENCH = '''
import json, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with open(__file__ + '.calls', 'a') as f:
  f.write(json.dumps(args) + '\\n')
if args['--hidden'] == '13':
  sys.exit('out of memory')
print('# warming up')
print(json.dumps({'train_structures_per_s': 100.0, 'sample_s': 50.0,
                  'hidden': int(args['--hidden'])}))
'''


def _run(args, peer):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, 'experiments/benchmark.py', *args,
                         f'--peer={peer}', f'--peer_python={sys.executable}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def peer(tmp_path):
  folder = tmp_path / 'peer'
  folder.mkdir()
  (folder / 'bench.py').write_text(FAKE_BENCH)
  return folder


@pytest.fixture
def data(tmp_path):
  path = tmp_path / 'crystals.extxyz'
  ase.io.write(path, datasets.builtin_structures(), format='extxyz')
  return path


def test_paired_benchmark_runs_both_orders_with_the_same_shapes(tmp_path, peer, data):
  out = tmp_path / 'paired.json'
  res = _run([f'--data={data}', '--sizes=8x1', '--sample_sizes=8x1', '--num_steps=4',
              '--batch_size=3', '--num_freqs=2', f'--out={out}'], peer)
  assert res.returncode == 0, res.stderr[-2000:]
  rows = json.loads(out.read_text())
  assert [r['order'] for r in rows] == ['jaxcrystal then diffcsp', 'diffcsp then jaxcrystal']
  calls = [json.loads(line) for line in (peer / 'bench.py.calls').read_text().splitlines()]
  assert len(calls) == 2
  for call in calls:
    assert (call['--hidden'], call['--layers'], call['--batch'], call['--num_freqs'],
            call['--sample_steps']) == ('8', '1', '3', '2', '4')
    assert Path(call['--data']) == data
  for row in rows:
    ours = row['jaxcrystal']
    assert row['train_ratio'] == pytest.approx(ours['train_structures_per_s'] / 100.0)
    assert row['sample_ratio'] == pytest.approx(50.0 / ours['sample_s'])


def test_a_failing_peer_is_one_line(tmp_path, peer, data):
  res = _run([f'--data={data}', '--sizes=13x1', '--sample_sizes=', '--num_steps=4',
              '--batch_size=3', '--num_freqs=2'], peer)
  assert res.returncode == 2, res.stderr[-2000:]
  assert res.stderr.strip().startswith('error: peer benchmark failed')
  assert 'out of memory' in res.stderr and 'Traceback' not in res.stderr
  res = _run([f'--data={data}', '--sizes=8x1'], tmp_path)  # no bench.py there
  assert res.returncode == 2 and 'Traceback' not in res.stderr
  assert '--peer must be a peer harness folder' in res.stderr
