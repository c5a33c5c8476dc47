"""Timing helpers behind `experiments/benchmark*.py` (not used by the library)."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk
from ase.neighborlist import neighbor_list

from jaxcrystal import errors
from jaxcrystal.geometry import neighbors


def best_time(fn, repeats: int) -> float:
  """Best wall time of `repeats` calls of `fn()` (seconds)."""
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def benchmark_neighbor_lists(repeats_per_side, cutoff: float, repeats: int):
  """Time cell-list graphs of fcc Cu supercells against ASE (and vesin)."""
  try:
    import vesin
  except ImportError:
    vesin = None
  graph = jax.jit(neighbors.cell_list_graph, static_argnums=2)
  rows = []
  for n in repeats_per_side:
    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (n, n, n)
    atoms.rattle(0.01, seed=0)
    atoms.wrap()
    frac = jnp.asarray(atoms.get_scaled_positions(), jnp.float32)
    lat = jnp.asarray(atoms.cell[:], jnp.float32)
    spec = neighbors.allocate_cell_list(np.asarray(frac), atoms.cell[:], cutoff)
    t0 = time.perf_counter()
    out = graph(frac, lat, spec)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    if out.did_overflow():
      raise RuntimeError(f'cell list overflowed at N={len(atoms)}')
    ours = best_time(lambda: jax.block_until_ready(graph(frac, lat, spec)), repeats)
    ase_s = best_time(lambda: neighbor_list('ijS', atoms, cutoff), max(1, repeats - 1))
    row = dict(n_atoms=len(atoms), edges=int(out.num_edges()),
               jaxcrystal_s=ours, first_call_s=compile_s, ase_s=ase_s,
               speedup_vs_ase=ase_s / ours)
    if vesin is not None:
      nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
      pts, box = atoms.positions, atoms.cell[:]
      row['vesin_s'] = best_time(
          lambda: nl.compute(points=pts, box=box, periodic=True, quantities='ijS'),
          repeats)
    rows.append(row)
    print(row, flush=True)
  return rows


def neighbor_table_markdown(rows) -> str:
  has_vesin = 'vesin_s' in rows[0]
  head = '| atoms | edges | jaxcrystal (ms) | us/atom | ASE (ms) | speed-up vs ASE |'
  sep = '|---|---|---|---|---|---|'
  if has_vesin:
    head += ' vesin (ms) |'
    sep += '---|'
  lines = [head, sep]
  for r in rows:
    line = (f"| {r['n_atoms']} | {r['edges']} | {r['jaxcrystal_s'] * 1e3:.1f} | "
            f"{r['jaxcrystal_s'] / r['n_atoms'] * 1e6:.2f} | {r['ase_s'] * 1e3:.1f} | "
            f"{r['speedup_vs_ase']:.1f}x |")
    if has_vesin:
      line += f" {r['vesin_s'] * 1e3:.1f} |"
    lines.append(line)
  return '\n'.join(lines)


def benchmark_csp_model(structures, hidden: int, num_layers: int, num_freqs: int,
                        batch_size: int, num_steps: int, train_repeats: int = 5,
                        sample: bool = True) -> dict:
  """Training and sampling throughput of a CSP model on given crystals.

  Training: structures/s of the jitted train step at `batch_size` (best of
  `train_repeats` timed steps after compilation). Sampling: one batch of
  `batch_size` compositions through `num_steps` predictor-corrector steps
  (2 network calls each), compile time reported separately.
  """
  from jaxcrystal.data import batch as batch_lib
  from jaxcrystal.generative import generate
  from jaxcrystal.generative import losses
  from jaxcrystal.generative import model as model_lib
  from jaxcrystal.generative import train
  from jaxcrystal.training import state as state_lib
  config = model_lib.ModelConfig(task='csp', num_steps=num_steps).with_network(
      hidden=hidden, num_layers=num_layers, num_freqs=num_freqs)
  model = model_lib.build(config)
  structures = list(structures)[:batch_size]
  host = batch_lib.batch_from_atoms(structures)
  batch = batch_lib.to_device(host)
  opt = state_lib.make_optimizer(state_lib.OptimConfig(), 1000)
  state = train.create_train_state(jax.random.PRNGKey(0), model, host, opt)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  step = jax.jit(state_lib.make_train_step(losses.get_loss_fn(model), opt, 0.999),
                 donate_argnums=0)
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  train_compile = time.perf_counter() - t0
  holder = {'state': state}

  def one():
    holder['state'], metrics = step(holder['state'], batch)
    jax.block_until_ready(metrics)
  step_s = best_time(one, train_repeats)
  row = dict(hidden=hidden, num_layers=num_layers, num_freqs=num_freqs,
             params=int(n_params), batch=len(structures),
             atoms=int(sum(len(s) for s in structures)),
             train_compile_s=train_compile, train_step_s=step_s,
             train_structures_per_s=len(structures) / step_s)
  if sample:
    comps = [s.numbers for s in structures]
    _, timing = generate.sample_structures(model, holder['state'].ema_params, comps,
                                           batch_size=len(comps), progress=False)
    row.update(sample_steps=num_steps, sample_compile_s=timing['compile_s'],
               sample_s=timing['sample_s'],
               sample_structures_per_s=len(comps) / timing['sample_s'])
  print(row, flush=True)
  return row


def benchmark_healing_step(model, params, config, repeats_per_side, repeats: int = 3,
                           sigma: float = 0.05, seed: int = 0) -> list[dict]:
  """Time one healing step (denoiser call and update, cell-list graph built
  beforehand) on damaged supercells of `4 n^3` atoms (fcc); also the graph
  build. Best of `repeats` after a warm-up (compilation excluded)."""
  from jaxcrystal.healing import defects
  from jaxcrystal.healing import denoiser
  from jaxcrystal.healing import heal as healing
  heal_one = jax.jit(denoiser.get_healer(model, num_steps=1, tolerance=0.0))
  rng = np.random.default_rng(seed)
  rows = []
  for n in repeats_per_side:
    atoms = defects.damage(rng, defects.supercell(config.element, config.structure,
                                                  config.lattice_constant, n), sigma)
    cutoff = model.config.cutoff + healing.GRAPH_SKIN
    nbrs = healing.build_graph(atoms, cutoff)
    frac = jnp.asarray(atoms.get_scaled_positions(wrap=True), jnp.float32)
    lattice = jnp.asarray(atoms.cell[:], jnp.float32)
    species = jnp.asarray(atoms.numbers, jnp.int32)
    step = lambda: jax.block_until_ready(heal_one(params, frac, lattice, species, nbrs))
    graph = lambda: jax.block_until_ready(healing.build_graph(atoms, cutoff).senders)
    rows.append(dict(atoms=len(atoms), edges=int(nbrs.num_edges()),
                     step_s=best_time(step, repeats), graph_s=best_time(graph, repeats)))
  return rows


def coord_learning_curve(structures, config, steps: int, max_t: int,
                         batch_size: int = 64, learning_rate: float = 1e-3,
                         num_buckets: int = 4, seed: int = 0,
                         clean: tuple[str, ...] = ()) -> np.ndarray:
  """Per-step coordinate loss of a fresh model trained (Adam, the training
  kit's guarded step) only at small noise, t in {1..max_t}: how quickly a
  variant (`config`, a `model.ModelConfig`; cells as given in `structures`)
  learns local geometry, the part that decides whether samples have sane
  bonds. Trained by the library's loop in a temporary folder. Returns
  `[steps]` normalised-score MSEs (1: nothing learned). `clean`: variables
  given to the network clean (`losses.get_loss_at_times_fn`), e.g.
  ('lattice',) to see how much the lattice's noise hides the atoms'."""
  import optax
  from jaxcrystal.data import pipeline as data_lib
  from jaxcrystal.generative import losses
  from jaxcrystal.generative import model as model_lib
  from jaxcrystal.training import checkpoints
  from jaxcrystal.training import loop as loop_lib
  from jaxcrystal.training import state as state_lib
  if not 1 <= max_t <= config.num_steps:
    raise ValueError(f'max_t must be in 1..{config.num_steps}, got {max_t}')
  model = model_lib.build(config)
  edges = data_lib.default_bucket_edges([len(s) for s in structures], num_buckets)
  dataset = data_lib.BucketedDataset(structures, batch_size, edges)
  loss_at_times = losses.get_loss_at_times_fn(model, clean=clean)

  def loss_fn(rng, params, batch):
    rng_t, rng = jax.random.split(rng)
    t = jax.random.randint(rng_t, (batch.num_graph_slots,), 1, max_t + 1)
    return loss_at_times(rng, params, batch, t)

  optimizer = optax.adam(learning_rate)
  params = model.init_params(jax.random.PRNGKey(seed), dataset.batch_for_step(seed, 0))
  state = state_lib.initial_state(params, optimizer, jax.random.PRNGKey(seed + 1))
  step = jax.jit(state_lib.make_train_step(loss_fn, optimizer, 0.0))
  loop = loop_lib.LoopConfig(train_steps=steps, log_every=1, keep_checkpoints=1,
                             progress=False, curve_keys=('coords',))
  with tempfile.TemporaryDirectory() as workdir:
    loop_lib.run(workdir, loop, state, step,
                 lambda k: dataset.batch_for_step(seed, k), log=lambda *_: None)
    records = checkpoints.read_metrics(Path(workdir) / 'metrics.jsonl')
  return np.asarray([r['coords'] for r in records if r['split'] == 'train'])


def benchmark_training_loop(config, steps: int) -> dict:
  """The real training loop against its own jitted step, same process.

  Loop: `train.train_and_evaluate` on `config` for `steps` steps without
  validation and with one checkpoint at the end; its rate is the steps of
  the log windows (a tenth of the steps each) after the first, which holds
  compilation, over their time. Step: the same jitted train step on the same batches (steps 0 ..
  steps-1), built and placed on the device beforehand, each bucket's shape
  compiled first, run back to back. `first_step_s`: from the call of
  `train_and_evaluate` to the end of the first step (data, init, compile).
  """
  import dataclasses
  from jaxcrystal.generative import train
  from jaxcrystal.training import checkpoints
  config = dataclasses.replace(config, train_steps=steps, val_data='', eval_every=0,
                               checkpoint_every=0, progress=False,
                               log_every=max(1, steps // 10))
  with tempfile.TemporaryDirectory() as tmp:
    summary = train.train_and_evaluate(config, Path(tmp) / 'run', log=lambda *_: None)
    records = [r for r in checkpoints.read_metrics(Path(tmp) / 'run' / 'metrics.jsonl')
               if r['split'] == 'train']
  windows = [(b['step'] - a['step'], b['steps_per_s'])
             for a, b in zip(records, records[1:])]
  loop_rate = sum(n for n, _ in windows) / sum(n / rate for n, rate in windows)
  t = train.build_training(config, log=lambda *_: None)
  batches = [t.batch_for_step(config.seed, s) for s in range(steps)]
  state = t.replicate(t.state)
  seen = set()
  for batch in batches:  # compile each bucket's shape
    if batch.frac.shape not in seen:
      seen.add(batch.frac.shape)
      state, metrics = t.train_step(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for batch in batches:
    state, metrics = t.train_step(state, batch)
  jax.block_until_ready((state, metrics))
  step_rate = steps / (time.perf_counter() - t0)
  network = config.model.network_choice()[1]
  row = dict(hidden=network.hidden, num_layers=network.num_layers,
             batch_size=config.batch_size, steps=steps, buckets=len(seen),
             backend=jax.default_backend(), loop_steps_per_s=loop_rate,
             step_steps_per_s=step_rate, loop_over_step=loop_rate / step_rate,
             first_step_s=summary['first_step_s'])
  print(row, flush=True)
  return row


def peer_python(peer_dir: str) -> str:
  """The peer harness's interpreter: what `PEER_DIR/setup.sh` prints (it
  makes the environment once, then only prints its path)."""
  import subprocess
  setup = Path(peer_dir) / 'setup.sh'
  if not setup.is_file():
    raise errors.UserError(f'{setup}: no setup.sh in the --peer folder')
  res = subprocess.run(['bash', str(setup)], capture_output=True, text=True)
  if res.returncode:
    raise errors.UserError(f'{setup} failed: {res.stderr.strip()[-500:]}')
  return res.stdout.strip().splitlines()[-1]


def run_peer(peer_dir: str, python: str, data: str, hidden: int, num_layers: int,
             num_freqs: int, batch_size: int, sample_steps: int,
             threads: int = 2, device: str = 'cpu') -> dict:
  """DiffCSP's own train step and sampler, timed by `PEER_DIR/bench.py` in
  its own process (a measuring instrument: nothing of it is imported);
  returns its JSON row."""
  import json
  import subprocess
  cmd = [python, str(Path(peer_dir) / 'bench.py'), '--hidden', str(hidden),
         '--layers', str(num_layers), '--num_freqs', str(num_freqs),
         '--batch', str(batch_size), '--sample_steps', str(sample_steps),
         '--threads', str(threads), '--device', device, '--data', data]
  res = subprocess.run(cmd, capture_output=True, text=True)
  rows = [line for line in res.stdout.splitlines() if line.startswith('{')]
  if res.returncode or not rows:
    raise errors.UserError(f'peer benchmark failed ({" ".join(cmd)}): '
                       f'{res.stderr.strip()[-500:]}')
  return json.loads(rows[-1])


def paired_csp_benchmark(structures, data: str, peer_dir: str, python: str,
                         hidden: int, num_layers: int, num_freqs: int,
                         batch_size: int, num_steps: int, sample: bool = True) -> list[dict]:
  """jaxcrystal's CSP train step and sampler (`benchmark_csp_model`) and
  DiffCSP's (`run_peer`), same shapes and data, back to back in both orders
  (jaxcrystal first, then DiffCSP first): one row per pair with both
  figures and the ratios (> 1: jaxcrystal faster). Sampling (`num_steps`
  predictor-corrector steps, 2 network calls each) only if `sample`."""
  rows = []
  for order in (('jaxcrystal', 'diffcsp'), ('diffcsp', 'jaxcrystal')):
    got = {}
    for who in order:
      if who == 'jaxcrystal':
        got[who] = benchmark_csp_model(structures, hidden, num_layers, num_freqs,
                                       batch_size, num_steps, sample=sample)
      else:
        got[who] = run_peer(peer_dir, python, data, hidden, num_layers, num_freqs,
                            batch_size, num_steps if sample else 0, threads=len(os.sched_getaffinity(0)),
                            device='cuda' if jax.default_backend() == 'gpu' else 'cpu')
    ours, peer = got['jaxcrystal'], got['diffcsp']
    row = dict(order=' then '.join(order), hidden=hidden, num_layers=num_layers,
               num_freqs=num_freqs, batch=batch_size, backend=jax.default_backend(),
               jaxcrystal=ours, diffcsp=peer,
               train_ratio=ours['train_structures_per_s'] / peer['train_structures_per_s'])
    if sample:
      row['sample_ratio'] = peer['sample_s'] / ours['sample_s']
    print({k: v for k, v in row.items() if k not in ('jaxcrystal', 'diffcsp')}, flush=True)
    rows.append(row)
  return rows


def chgnet_batch_timing(structures, batch_sizes, repeats: int = 2) -> list[dict]:
  """CHGNet energy, forces and stress (one relaxation step's work) for
  `structures` (ASE atoms) one at a time against batches of each size of
  `batch_sizes`, on the CPU with one torch thread. Per size: seconds per
  structure (best of `repeats`), the ratio to one at a time, and the
  largest difference of the batched energies and forces from the single
  ones (eV/atom, eV/A): batching must not change the numbers."""
  import torch
  from chgnet.model import CHGNet
  from pymatgen.io.ase import AseAtomsAdaptor
  torch.set_num_threads(1)
  model = CHGNet.load(verbose=False)
  graphs = [model.graph_converter(AseAtomsAdaptor.get_structure(a)) for a in structures]
  single = [model.predict_graph(g, task='efs') for g in graphs]
  one = best_time(lambda: [model.predict_graph(g, task='efs') for g in graphs],
                  repeats) / len(graphs)
  rows = [{'batch_size': 1, 'seconds_per_structure': one, 'speedup': 1.0,
           'max_energy_difference': 0.0, 'max_force_difference': 0.0}]
  for size in batch_sizes:
    if size <= 1:
      continue
    chunks = [graphs[i:i + size] for i in range(0, len(graphs), size)]
    def run():  # CHGNet answers a batch of one with a dict, not a list
      outs = [model.predict_graph(c, task='efs', batch_size=size) for c in chunks]
      return [o for out in outs for o in (out if isinstance(out, list) else [out])]
    batched = run()
    seconds = best_time(run, repeats) / len(graphs)
    rows.append({
        'batch_size': size, 'seconds_per_structure': seconds, 'speedup': one / seconds,
        'max_energy_difference': float(max(abs(float(b['e']) - float(s['e']))
                                           for b, s in zip(batched, single))),
        'max_force_difference': float(max(np.abs(b['f'] - s['f']).max()
                                          for b, s in zip(batched, single)))})
  return rows
