"""The portable model file (`generative/model_file.py`, `export_model.py`):
an exported run samples exactly what the run samples, records what
sampling needs without the training file, and a damaged, edited or foreign
file is refused in one line naming the file."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jaxcrystal.data import datasets
from jaxcrystal.generative import generate
from jaxcrystal.generative import model_file

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / 'tests' / 'fixtures' / 'legacy_run_csp'


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  out = tmp_path_factory.mktemp('model') / 'legacy'
  path, meta = generate.export_run(RUN, out)
  return path, meta


def test_an_exported_run_samples_exactly_what_the_run_samples(exported):
  path, meta = exported
  assert path.suffix == '.jcm' and meta['step'] > 0
  model, params, config, step = generate.load_run(RUN)
  model_f, params_f, config_f, step_f = generate.load_run(path.with_suffix(''))
  assert (config_f, step_f) == (config, step)
  numbers = [np.array([13] * 4), np.array([6] * 8)] * 3
  a, _ = generate.sample_structures(model, params, numbers, seed=3, progress=False)
  b, _ = generate.sample_structures(model_f, params_f, numbers, seed=3, progress=False)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.cell[:], y.cell[:])
    np.testing.assert_array_equal(x.get_scaled_positions(wrap=False),
                                  y.get_scaled_positions(wrap=False))
  # another seed gives other structures: the comparison can fail
  c, _ = generate.sample_structures(model_f, params_f, numbers, seed=4, progress=False)
  assert np.abs(c[0].cell[:] - b[0].cell[:]).max() > 1e-3


def test_the_file_records_what_sampling_needs(exported):
  path, meta = exported
  sizes = sorted(len(s) for s in datasets.builtin_structures())
  assert generate.recorded_atom_counts(path) == sizes
  assert generate.size_budget(path, None) == max(sizes)
  assert meta['config']['sampling'] == generate.load_run(RUN)[2].sampling.to_dict()
  with pytest.raises(Exception, match='one checkpoint'):
    generate.load_run(path, which='latest')


def _write_variant(src: Path, dst: Path, edit) -> Path:
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
    for item in zin.infolist():
      zout.writestr(item, edit(item.filename, zin.read(item.filename)))
  return dst


def _meta_edit(change):
  def edit(name, data):
    if name != 'meta.npy':
      return data
    import io
    meta = json.loads(str(np.load(io.BytesIO(data))))
    change(meta)
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(meta)))
    return buf.getvalue()
  return edit


def _flip_last_param_byte(name, data):
  if name == 'p0.npy':
    return data[:-1] + bytes([data[-1] ^ 0x01])
  return data


@pytest.mark.parametrize('damage, message', [
    ('truncated', r'not a jaxcrystal model file \(not a zip archive'),
    ('text', r'not a jaxcrystal model file \(not a zip archive'),
    ('foreign_npz', r'not a jaxcrystal model file \(no meta record'),
    ('edited_params', r'the parameters do not match their recorded sha256'),
    ('other_version', r'model file version 99; this jaxcrystal reads version 1'),
    ('other_format', r"not a jaxcrystal model file \(format 'something-else'\)"),
])
def test_a_damaged_or_foreign_file_is_refused_naming_it(exported, tmp_path, damage,
                                                        message):
  path, _ = exported
  bad = tmp_path / 'bad.jcm'
  if damage == 'truncated':
    bad.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  elif damage == 'text':
    bad.write_text('hello\n')
  elif damage == 'foreign_npz':
    with open(bad, 'wb') as f:
      np.savez(f, weights=np.zeros(3))
  elif damage == 'edited_params':
    _write_variant(path, bad, _flip_last_param_byte)
  elif damage == 'other_version':
    _write_variant(path, bad, _meta_edit(lambda m: m.update(version=99)))
  else:
    _write_variant(path, bad, _meta_edit(lambda m: m.update(format='something-else')))
  with pytest.raises(model_file.ModelFileError, match=f'^{bad}: {message}'):
    generate.load_run(bad)


def test_the_scripts_take_a_model_file_and_refuse_a_bad_one_in_one_line(exported,
                                                                         tmp_path):
  path, _ = exported
  run = lambda *args: subprocess.run([sys.executable, *args], capture_output=True,
                                     text=True, timeout=300, cwd=ROOT)
  bad = tmp_path / 'cut.jcm'
  bad.write_bytes(path.read_bytes()[:1000])
  res = run('experiments/sample.py', f'--checkpoint={bad}', '--formula=Al4',
            '--num_samples=2', f'--out={tmp_path / "s"}', '--noprogress')
  lines = [line for line in res.stderr.splitlines() if line.strip()]
  assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
  assert lines[0].startswith(f'error: {bad}: not a jaxcrystal model file')
  res = run('experiments/export_model.py', f'--run={RUN}', f'--out={path}')
  assert res.returncode == 2 and 'exists; --overwrite replaces it' in res.stderr
  res = run('experiments/export_model.py', f'--run={RUN}', f'--out={tmp_path / "m"}',
            '--which=999')
  assert res.returncode == 2 and 'no checkpoint at step 999' in res.stderr


def test_mixed_sizes_sample_by_size_class_in_request_order():
  """`sample_structures` pads each size class only to its own largest
  crystal (one compile per class) and returns the request's order; a
  request of one size is exactly the single padded batch it always was."""
  from jaxcrystal.data import batch as batch_lib
  from jaxcrystal.generative import samplers
  from jaxcrystal.generative import sampling
  import jax
  model, params, config, _ = generate.load_run(RUN)
  comps = [np.array([13] * 4), np.array([6] * 16), np.array([26] * 2),
           np.array([6] * 8), np.array([13] * 4)]
  samples, timing = generate.sample_structures(model, params, comps, seed=0,
                                               progress=False)
  assert [list(s.numbers) for s in samples] == [list(c) for c in comps]
  assert (timing['size_classes'], timing['batches']) == (3, 3)
  # one size: the single batch padded to the request's largest crystal
  same = [np.array([6] * 8)] * 3
  got, _ = generate.sample_structures(model, params, same, seed=5, progress=False)
  budget = batch_lib.Budget(4, 32, 8)
  template = batch_lib.to_device(sampling.template_from_compositions(same, budget))
  want, _, _ = jax.jit(samplers.get_sampler(model, samplers.SamplerConfig()))(
      jax.random.fold_in(jax.random.PRNGKey(5), 0), params, template)
  for atoms, ref in zip(got, batch_lib.batch_to_atoms(jax.device_get(want))):
    np.testing.assert_array_equal(atoms.cell[:], ref.cell[:])
    np.testing.assert_array_equal(atoms.positions, ref.positions)
