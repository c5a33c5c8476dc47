"""From a trained run to structures on disk: load, sample in batches, write.

Used by `experiments/sample.py` and the quickstart.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Sequence

import ase
import jax
import numpy as np
from tqdm.auto import tqdm

from jaxcrystal import errors
from jaxcrystal.data import batch as batch_lib
from jaxcrystal.data import io as io_lib
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import model_file
from jaxcrystal.generative import request
from jaxcrystal.generative import samplers
from jaxcrystal.generative import sampling
from jaxcrystal.generative import train
from jaxcrystal.geometry import neighbors
from jaxcrystal.training import checkpoints


def load_run(workdir: str | Path, which: str = 'best', use_ema: bool = True):
  """Model, parameters and config of a training run directory or of a
  model file (`model_file.py`: `pretrained/NAME` finds `pretrained/NAME.jcm`).

  Restores only the (EMA) parameters: no optimizer is built. Runs written
  before the package layout changed load as they are (same config.json and
  parameter tree); a checkpoint that does not fit its config stops with a
  message naming the differences. A model file holds one checkpoint, the
  one it was exported from: `which` other than 'best' is refused.
  Returns (model, params, config, step).
  """
  file = model_file.resolve(workdir)
  if file is not None:
    meta, arrays = model_file.read(file)
    if which != 'best' or not use_ema:
      raise errors.UserError(f'{file}: a model file holds one checkpoint (step '
                             f"{meta['step']}, the EMA parameters); --which selects "
                             'checkpoints of run directories')
    try:
      config = train.TrainConfig.from_dict(meta['config'])
    except (errors.UserError, TypeError, KeyError) as err:
      raise model_file.ModelFileError(f'{file}: its config cannot be read ({err})') from None
    model = model_lib.build(config.model)
    like = jax.eval_shape(model.init_params, jax.random.PRNGKey(0), batch_lib.to_device(
        _example_batch(config.model.properties)))
    return model, model_file.params_like(meta, arrays, like, file), config, meta['step']
  workdir = Path(workdir)
  config = checkpoints.read_config(
      workdir, train.TrainConfig.from_dict,
      'a crystal model run (--workdir of train_ddpm.py)')
  model = model_lib.build(config.model)
  example = batch_lib.to_device(_example_batch(config.model.properties))
  like = jax.eval_shape(model.init_params, jax.random.PRNGKey(0), example)
  params, step = checkpoints.restore_params(workdir, which, use_ema, like)
  return model, params, config, step


def recorded_data(workdir: str | Path) -> dict:
  """What a run (directory or model file) recorded of its training data:
  {} if nothing (`train.data_record` says what)."""
  file = model_file.resolve(workdir)
  try:
    if file is not None:
      record = model_file.read_meta(file)['config'].get('data')
    else:
      record = json.loads((Path(workdir) / 'config.json').read_text()).get('data')
  except (OSError, ValueError, AttributeError):
    record = None
  return record if isinstance(record, dict) else {}


def size_budget(workdir: str | Path, config: train.TrainConfig) -> int:
  """The largest structure (atoms) a run's model may be asked for: the
  largest it was trained on (`recorded_data`), or for runs that did not
  record it, the run's `max_atoms` limit."""
  largest = recorded_data(workdir).get('largest_structure')
  return int(largest) if isinstance(largest, int) and largest > 0 else config.max_atoms


def recorded_atom_counts(workdir: str | Path) -> list[int] | None:
  """Atoms per crystal of the run's training data, one entry per crystal,
  from its recorded histogram (None if it recorded none)."""
  histogram = recorded_data(workdir).get('atom_counts')
  if not isinstance(histogram, dict) or not histogram:
    return None
  return [int(n) for n, count in sorted(histogram.items(), key=lambda kv: int(kv[0]))
          for _ in range(int(count))]


def check_size_budget(compositions: Sequence[Sequence[int]], budget: int,
                      what: str) -> None:
  """Raise `errors.UserError` naming `what` if a composition has more atoms
  than `budget` (`size_budget`, or the --max_atoms flag)."""
  largest = max((len(c) for c in compositions), default=0)
  if largest > budget:
    raise errors.UserError(
        f'{what}: a structure of {largest} atoms, more than this model\'s budget of '
        f'{budget} (set by its training data); --max_atoms={largest} samples it '
        'anyway')


def _example_batch(properties=()):
  """A one-atom crystal with the model's condition properties (unknown):
  parameter shapes do not depend on the data."""
  return batch_lib.batch_from_atoms([ase.Atoms('H', cell=np.eye(3) * 3, pbc=True)],
                                    properties=properties)


# Sampling batches group compositions whose atom counts round up to the same
# multiple of this: one compile per class, padding only within it.
SIZE_CLASS = 4


def sample_structures(model: model_lib.Model, params,
                      compositions: Sequence[Sequence[int]], *,
                      sampler: samplers.SamplerConfig = samplers.SamplerConfig(),
                      batch_size: int = 256, seed: int = 0,
                      lattices: Sequence[np.ndarray] | None = None,
                      conditions: dict | None = None,
                      guidance: float | None = None,
                      allowed_elements: Sequence[Sequence[int]] | None = None,
                      progress: bool = True,
                      compiled: dict | None = None) -> tuple[list[ase.Atoms], dict]:
  """Sample one structure per composition (atomic numbers; for de novo, only
  the count matters) with the configured sampler (`samplers.py`; a run's
  stored defaults are `config.sampling`). Compositions are grouped by size
  class (atoms rounded up to a multiple of `SIZE_CLASS`), each class padded
  only to its own largest structure and sampled in batches of one budget,
  so the sampler compiles once per class and small crystals do not pay for
  the largest (a request of one size is one class: batches in request
  order, as before). Structures come back in request order. Returns
  (structures, timing): timing holds
  compile_s, sample_s (the compiled sampler: the network), host_batching_s
  (building templates, unpacking results) and the resolved sampler settings
  with `network_calls_per_structure`. Raises `neighbors.GraphOverflowError`
  if the model's graph lost edges in any batch, `errors.UserError` if the
  sampler cannot run this model. `conditions`: {property: one value per
  composition} for a conditioned model (see `conditions.py`; those not given
  are unknown, or for chemical_system with `allowed_elements` each sample's
  set, as `request.request_conditions` fills them); `guidance`:
  the classifier-free guidance weight w (`Model.with_guidance`: two network
  calls per step when w > 0); None keeps the model's own (0 unless it came
  from `with_guidance`). `allowed_elements`: per composition the atomic
  numbers a de novo sample may hold (`constraints.py`; types are drawn only
  among them). `compiled`: a
  dict kept by a caller that samples again with the same model and sampler
  (e.g. a training monitor): the compiled samplers by budget, filled here
  and reused, so later calls compile nothing."""
  if not len(compositions):
    raise ValueError('no compositions to sample')
  classes: dict[int, list[int]] = {}
  for i, c in enumerate(compositions):
    classes.setdefault(-(-len(c) // SIZE_CLASS), []).append(i)
  plan = []  # (indices, budget) per batch
  for _, members in sorted(classes.items()):
    max_n = max(len(compositions[i]) for i in members)
    size = min(batch_size, len(members))
    budget = batch_lib.Budget(size + 1, int(np.ceil((size * max_n + 1) / 8) * 8), max_n)
    plan += [(chunk, budget) for chunk in sampling.split_into_batches(members, size)]
  missing = [p for p in model.config.properties if p not in (conditions or {})]
  if missing:  # unknown ("any") where the model learned it, else one line
    filled = request.request_conditions(model.config, {}, len(compositions),
                                        allowed_elements=allowed_elements)
    conditions = dict(conditions or {}, **{p: filled[p] for p in missing})
  if guidance is not None:
    model = model.with_guidance(guidance)
  resolved = sampler.resolve(model)
  sample_fn = jax.jit(samplers.get_sampler(model, resolved))
  out: list = [None] * len(compositions)
  compiled = {} if compiled is None else compiled
  timing = {'compile_s': 0.0, 'sample_s': 0.0, 'host_batching_s': 0.0,
            'sampler': resolved.to_dict(), 'batches': len(plan),
            'size_classes': len(classes),
            'guidance': model.guidance,
            'network_calls_per_structure': resolved.calls_per_structure(model)
            * (2 if model.guidance else 1)}
  for k, (chunk, budget) in enumerate(tqdm(plan, desc='sampling', disable=not progress)):
    t0 = time.perf_counter()
    comps = [compositions[i] for i in chunk]
    lats = [lattices[i] for i in chunk] if lattices is not None else None
    conds = {name: [values[i] for i in chunk] for name, values in (conditions or {}).items()}
    allowed = ([allowed_elements[i] for i in chunk]
               if allowed_elements is not None else None)
    template = batch_lib.to_device(
        sampling.template_from_compositions(comps, budget, lats, conds, allowed))
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), k)
    timing['host_batching_s'] += time.perf_counter() - t0
    t0 = time.perf_counter()
    key = (budget, model.guidance, allowed is not None)
    if key not in compiled:
      compiled[key] = sample_fn.lower(rng, params, template).compile()
      timing['compile_s'] += time.perf_counter() - t0
      t0 = time.perf_counter()
    result, _, overflow = compiled[key](rng, params, template)
    result = jax.block_until_ready(result)
    neighbors.check_overflow(overflow, f'sampling batch {k}')
    timing['sample_s'] += time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, atoms in zip(chunk, batch_lib.batch_to_atoms(jax.device_get(result))):
      out[i] = atoms
    timing['host_batching_s'] += time.perf_counter() - t0
  return out, timing


def set_source_rows(structures: Sequence[ase.Atoms], rows: Sequence[int] | None
                    ) -> None:
  """Record in each sample's `info['source_row']` the row of the
  compositions file it was made for (nothing when `rows` is None), by which
  CSP evaluation pairs samples with test rows."""
  if rows is None:
    return
  if len(rows) != len(structures):
    raise ValueError(f'{len(rows)} source rows for {len(structures)} samples')
  for atoms, row in zip(structures, rows):
    atoms.info['source_row'] = int(row)


def write_samples(outdir: str | Path, structures: Sequence[ase.Atoms],
                  extra_summary: dict | None = None,
                  made_for: str | None = None) -> dict:
  """Write extxyz, a folder of CIFs, `.npz` and a JSON validity summary.
  Samples with `info['source_row']` (`set_source_rows`) keep it in the
  extxyz and as the `.npz` array `source_row [S]`. `made_for`: the file the
  samples were made for (`--compositions_from`); its path and sha256 go into
  `summary.json` and the `.npz` (`made_for_sha256`), which evaluation checks
  (`evaluation.evaluate.check_made_for`). The summary also holds the
  seconds spent validating (`validation_s`) and writing (`writing_s`)."""
  outdir = Path(outdir)
  structures = list(structures)
  extra = {}
  if structures and all('source_row' in a.info for a in structures):
    extra['source_row'] = np.array([a.info['source_row'] for a in structures],
                                   np.int64)
  record = None
  if made_for:
    record = {'path': str(made_for), 'sha256': io_lib.file_sha256(made_for)}
    extra.update(made_for_path=np.array(record['path']),
                 made_for_sha256=np.array(record['sha256']))
  t0 = time.perf_counter()
  arrays = io_lib.npz_arrays(structures, **extra)
  t1 = time.perf_counter()
  io_lib.save_npz(outdir / 'samples.npz', arrays)
  io_lib.write_extxyz(outdir / 'samples.extxyz', structures)
  io_lib.write_cifs(outdir / 'cifs', structures, prefix='sample')
  timing = {'validation_s': t1 - t0, 'writing_s': time.perf_counter() - t1}
  summary = {
      'num_samples': len(structures),
      'valid_fraction': float(np.mean(arrays['valid'])),
      'min_distance_median': _nan_stat(np.nanmedian, arrays['min_distance']),
      'density_mean': _nan_stat(np.nanmean, arrays['density']),
      'mean_coordination_mean': _nan_stat(np.nanmean, arrays['mean_coordination']),
      'symmetry_library_messages': int(arrays['symmetry_messages'].sum()),
  }
  reasons = {}
  for reason in arrays['reason']:
    if reason:  # group by the reason's words, numbers masked
      key = re.sub(r'-?\d[\d.e+-]*', '#', reason)
      reasons[key] = reasons.get(key, 0) + 1
  summary['invalid_reasons'] = reasons
  summary['made_for'] = record
  summary.update(extra_summary or {})
  summary.update(timing)
  io_lib.write_json_atomic(outdir / 'summary.json', summary)
  return summary


def _nan_stat(fn, values) -> float:
  """`fn` over the finite values; NaN (null in JSON) when there are none."""
  values = np.asarray(values, float)
  values = values[np.isfinite(values)]
  return float(fn(values)) if values.size else float('nan')


def export_run(workdir: str | Path, out: str | Path, which: str = 'best',
               overwrite: bool = False) -> tuple[Path, dict]:
  """Write a run's (EMA) parameters of checkpoint `which` with its resolved
  config, data record and sampler defaults as one model file
  (`model_file.py`); `out` gets the `.jcm` suffix if it has none, and an
  existing file is replaced only with `overwrite`. Runs that did not record
  their atoms-per-crystal histogram (before it was recorded) get it from
  their training file, which must then be readable.
  Returns (path written, meta)."""
  if model_file.resolve(workdir) is not None:
    raise errors.UserError(f'{workdir}: already a model file; export takes a run directory')
  out = model_file.with_suffix(out)
  if out.exists() and not overwrite:
    raise errors.OutputExistsError(f'--out: {out} exists; --overwrite replaces it')
  _, params, config, step = load_run(workdir, which)
  record = dict(recorded_data(workdir))
  if not record.get('atom_counts'):
    try:
      structures, _ = train.load_structures(config.train_data, config)
    except (errors.UserError, OSError) as err:
      raise errors.UserError(
          f'{workdir}: the run did not record its atoms-per-crystal histogram and '
          f'its training file {config.train_data!r} cannot be read to make it ({err})'
      ) from None
    record.update(atom_counts=train.atom_count_histogram(structures),
                  largest_structure=max(len(s) for s in structures))
  meta = model_file.write(out, params, dict(config.to_dict(), data=record), step, which,
                          extra=dict(exported_from=Path(workdir).name))
  return out, meta
