"""Small shared test helpers."""
import csv

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcrystal.training import loop as loop_lib
from jaxcrystal.training import state as state_lib


def rattled(structures, sigma, seed=0):
  """Copies of `structures` with Gaussian noise of `sigma` A on every position."""
  rng = np.random.default_rng(seed)
  out = []
  for a in structures:
    b = a.copy()
    b.positions += rng.normal(0.0, sigma, b.positions.shape)
    out.append(b)
  return out


def cif_text(atoms, tmp_path):
  """`atoms` written as CIF text by ASE (through a scratch file in tmp_path)."""
  path = tmp_path / 'one.cif'
  ase.io.write(path, atoms, format='cif')
  return path.read_text()


def write_cdvae_csv(path, rows):
  """A CSV in the CDVAE layout from (material_id, cif text[, formula]) rows;
  the formula column is left empty (unchecked) where none is given."""
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['', 'material_id', 'cif', 'formula'])
    for k, (mid, cif, *formula) in enumerate(rows):
      w.writerow([k, mid, cif, formula[0] if formula else ''])


def quadratic_run(workdir, lr, steps=6, resume=False, config=None, size=3,
                  target=lambda step: 2.0, loop_kwargs=None, **run_kwargs):
  """A `size`-parameter model fitted by the real loop to `target(step)`
  (fast: no network); returns (summary, logged messages)."""
  optimizer = optax.sgd(lr)
  params = {'w': jnp.ones(size)}
  state = state_lib.initial_state(params, optimizer, jax.random.PRNGKey(0))

  def loss_with_aux(rng, p, batch):
    loss = jnp.sum((p['w'] - batch) ** 2)
    return loss, {'loss': loss}
  step = jax.jit(state_lib.make_train_step(loss_with_aux, optimizer, 0.9))
  loop = loop_lib.LoopConfig(train_steps=steps, log_every=1, checkpoint_every=2,
                             progress=False, curve_keys=('loss',), **(loop_kwargs or {}))
  messages = []
  _, summary = loop_lib.run(workdir, loop, state, step, lambda k: jnp.full(size, target(k)),
                            config_dict=config or {'lr': lr, 'train_steps': steps},
                            resume=resume, log=messages.append, **run_kwargs)
  return summary, messages
