"""Data for the process figures: forward-noised snapshots of a structure and
frames of a sampling trajectory, as `ase.Atoms` ready to draw.

These run the model's own processes and sampler, so the pictures show
exactly what training and sampling do.
"""
from __future__ import annotations

from typing import Sequence

import ase
import jax
import numpy as np

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import samplers
from jaxcrystal.generative import sampling
from jaxcrystal.generative import times as times_lib

DEFAULT_FRACTIONS = (0.0, 0.1, 0.3, 0.6, 1.0)
# Keys of the pictures: split(key, 2) = [lattice, coordinates]; types fold in.
SNAPSHOT_SLOTS = (0, 1)


def _steps(num_steps: int, fractions: Sequence[float]) -> list[int]:
  return [int(round(f * num_steps)) for f in fractions]


def _describe(process, t: int) -> str:
  """'sigma 0.123' / 'abar 0.50' of a process with a schedule at step t."""
  schedule = getattr(process, 'schedule', None)
  if hasattr(schedule, 'sigmas'):
    unit = ' A' if process.scale_name == 'sigma_angstrom' else ''
    return f'sigma {float(schedule.sigmas[t]):.3f}{unit}'
  if hasattr(schedule, 'alpha_bars'):
    return f'abar {float(schedule.alpha_bars[t]):.2f}'
  return ''


def forward_snapshots(rng: jax.Array, model: model_lib.Model, atoms: ase.Atoms,
                      fractions: Sequence[float] = DEFAULT_FRACTIONS
                      ) -> tuple[list[ase.Atoms], list[str]]:
  """`atoms` noised by every process of the model at t = fraction * T.

  Returns (frames, labels), one per fraction; t = 0 is the clean structure.
  """
  T = model.time.num_steps
  base = batch_lib.to_device(batch_lib.batch_from_atoms([atoms]))
  frames, labels = [], []
  grid = (list(fractions) if isinstance(model.time, times_lib.ContinuousTime)
          else _steps(T, fractions))
  for t, key in zip(grid, jax.random.split(rng, len(fractions))):
    if t == 0:
      frames.append(atoms.copy())
      labels.append('t = 0 (clean)')
      continue
    _, stream_key = model_lib.stream_keys(key, 2, SNAPSHOT_SLOTS)
    xs = {}
    for name, p in model.processes.items():
      rows = model.time.full(t, base.num_graph_slots if p.per == 'graph'
                            else base.num_atom_slots)
      xs[name] = p.noise(stream_key(p.stream), base, rows)[0]
    noisy = model.finalize(base, xs)
    frames.append(batch_lib.batch_to_atoms(jax.device_get(noisy))[0])
    parts = [_describe(p, t) for p in model.processes.values()]
    labels.append(f't = {t} ({", ".join(x for x in parts if x)})')
  return frames, labels


def sampling_trajectory(rng: jax.Array, model: model_lib.Model, params,
                        composition: Sequence[int], num_frames: int = 5,
                        sampler: samplers.SamplerConfig = samplers.SamplerConfig()
                        ) -> tuple[list[ase.Atoms], list[str]]:
  """Sample one crystal of `composition` (atomic numbers) and return
  `num_frames` evenly spaced states of its trajectory, ending at the sample.
  Tasks that do not generate the cell need one and are not supported here."""
  if not model.task.generates_lattice:
    raise ValueError(f'sampling_trajectory needs a model that generates the cell '
                     f'({model.config.task!r} does not)')
  sampler = sampler.resolve(model)
  T = sampler.num_steps
  every = _trajectory_stride(T, num_frames)
  template = batch_lib.to_device(
      sampling.template_from_compositions([list(composition)]))
  sample = jax.jit(samplers.get_sampler(model, sampler, trajectory_every=every))
  _, traj, _ = sample(rng, params, template)
  chunks = next(iter(traj.values())).shape[0]
  picks = np.unique(np.linspace(0, chunks - 1, num_frames).round().astype(int))
  frames, labels = [], []
  for k in picks:
    state = model.finalize(template, {name: x[k] for name, x in traj.items()})
    frames.append(batch_lib.batch_to_atoms(jax.device_get(state))[0])
    labels.append(f'step {(k + 1) * every} of {T} ({sampler.name})')
  return frames, labels


def _trajectory_stride(num_steps: int, num_frames: int) -> int:
  """Largest divisor of T giving at least `num_frames` stored states."""
  for every in range(max(num_steps // num_frames, 1), 0, -1):
    if num_steps % every == 0:
      return every
  return 1
