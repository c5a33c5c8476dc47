"""Data for the process figures: forward-noised snapshots of a structure and
frames of a sampling trajectory, as `ase.Atoms` ready to draw.

These run the library's own forward processes and sampler, so the pictures
show exactly what training and sampling do.
"""
from __future__ import annotations

from typing import Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np

from jaxcrystal.data import batch as batch_lib
from jaxcrystal.generative import model as diffusion
from jaxcrystal.generative import sampling

DEFAULT_FRACTIONS = (0.0, 0.1, 0.3, 0.6, 1.0)


def _steps(num_steps: int, fractions: Sequence[float]) -> list[int]:
  return [int(round(f * num_steps)) for f in fractions]


def forward_snapshots(rng: jax.Array, spec: diffusion.DiffusionSpec,
                      atoms: ase.Atoms,
                      fractions: Sequence[float] = DEFAULT_FRACTIONS
                      ) -> tuple[list[ase.Atoms], list[str]]:
  """`atoms` noised by the model's forward processes at t = fraction * T.

  The lattice follows the DDPM process and fractional coordinates the wrapped
  normal (or, for the cartesian task, Cartesian noise in the fixed cell).
  Returns (frames, labels), one per fraction; t = 0 is the clean structure.
  """
  T = spec.config.num_steps
  base = batch_lib.to_device(batch_lib.batch_from_atoms([atoms]))
  frames, labels = [], []
  for t, key in zip(_steps(T, fractions), jax.random.split(rng, len(fractions))):
    if t == 0:
      frames.append(atoms.copy())
      labels.append('t = 0 (clean)')
      continue
    k_l, k_f = jax.random.split(key)
    t_graph = jnp.full((base.num_graph_slots,), t, jnp.int32)
    t_atom = jnp.full((base.num_atom_slots,), t, jnp.int32)
    if spec.config.task == 'cartesian':
      cart = jnp.einsum('ni,nij->nj', base.frac, base.atom_lattice())
      cart_t, _ = spec.cart_process.noise(k_f, cart, t_atom, base.atom_lattice())
      frac_t = jnp.einsum('ni,nij->nj', cart_t, jnp.linalg.inv(base.atom_lattice()))
      noisy = base.replace(frac=frac_t % 1.0)
      sigma = float(spec.cart_process.schedule.sigmas[t])
      label = f't = {t} (sigma {sigma:.2f} A)'
    else:
      lattice_t, _ = spec.lattice_process.noise(k_l, base.lattice, t_graph)
      frac_t, _ = spec.frac_process.noise(k_f, base.frac, t_atom)
      noisy = base.replace(lattice=lattice_t, frac=frac_t)
      sigma = float(spec.frac_process.schedule.sigmas[t])
      ab = float(spec.lattice_process.schedule.alpha_bars[t])
      label = f't = {t} (sigma {sigma:.3f}, abar {ab:.2f})'
    frames.append(batch_lib.batch_to_atoms(jax.device_get(noisy))[0])
    labels.append(label)
  return frames, labels


def sampling_trajectory(rng: jax.Array, spec: diffusion.DiffusionSpec, params,
                        composition: Sequence[int], num_frames: int = 5,
                        step_lr: float = 1e-5) -> tuple[list[ase.Atoms], list[str]]:
  """Sample one crystal of `composition` (atomic numbers) and return
  `num_frames` evenly spaced states of its trajectory, ending at the sample.
  The cartesian task needs a cell and is not supported here."""
  if spec.config.task == 'cartesian':
    raise ValueError('sampling_trajectory needs a csp or dng model')
  T = spec.config.num_steps
  every = _trajectory_stride(T, num_frames)
  template = batch_lib.to_device(
      sampling.template_from_compositions([list(composition)]))
  sampler = jax.jit(sampling.get_sampler(spec, step_lr, trajectory_every=every))
  final, (lattices, fracs, types) = sampler(rng, params, template)
  lattices, fracs, types = jax.device_get((lattices, fracs, types))
  chunks = lattices.shape[0]
  picks = np.unique(np.linspace(0, chunks - 1, num_frames).round().astype(int))
  frames, labels = [], []
  host_template = jax.device_get(template)
  for k in picks:
    species = host_template.species
    if spec.config.task == 'dng':
      species = np.where(host_template.atom_mask, np.argmax(types[k], -1) + 1, 0)
    state = host_template.replace(lattice=lattices[k], frac=fracs[k],
                                  species=species.astype(np.int32))
    frames.append(batch_lib.batch_to_atoms(state)[0])
    labels.append(f'step {(k + 1) * every} of {T} (t = {T - (k + 1) * every})')
  return frames, labels


def _trajectory_stride(num_steps: int, num_frames: int) -> int:
  """Largest divisor of T giving at least `num_frames` stored states."""
  for every in range(max(num_steps // num_frames, 1), 0, -1):
    if num_steps % every == 0:
      return every
  return 1
