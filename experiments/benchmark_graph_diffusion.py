"""Compare a trained graph-diffusion model with baselines on one run.

  python experiments/benchmark_graph_diffusion.py --workdir=runs/graph_grid \
      --num_samples=500 --out=docs/benchmark_graph_diffusion.json

Distribution match: MSE of per-node mean, per-node variance and the node-node
second-moment matrix against held-out reference signals; graph smoothness
(mean |L S|^2, reference beside it); seconds per sample (after compilation).
"""
import time

import jax
import numpy as np
from absl import flags
from absl import logging

from jaxcrystal import cli
from jaxcrystal.graph_diffusion import tasks as graph_tasks
from jaxcrystal.data import io as io_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run of train_graph_diffusion.py.')
flags.DEFINE_integer('num_samples', 500, 'Samples per method.')
flags.DEFINE_integer('seed', 123, 'Seed of samples and held-out references.')
flags.DEFINE_string('out', '', 'Optional JSON file.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, gm, params = graph_tasks.load(FLAGS.workdir)
  task = gm.task
  rng = np.random.default_rng(FLAGS.seed)
  train = task.sample(np.random.default_rng(config.seed), config.num_train)
  reference = task.sample(rng, FLAGS.num_samples)  # held out: another seed
  sampler = jax.jit(gm.sampler(config.sample_steps), static_argnums=2)
  key = jax.random.PRNGKey(FLAGS.seed)
  jax.block_until_ready(sampler(key, params, FLAGS.num_samples))  # compile
  start = time.perf_counter()
  generated = np.asarray(jax.block_until_ready(sampler(key, params, FLAGS.num_samples)))
  per_sample = (time.perf_counter() - start) / FLAGS.num_samples
  rows = {'graph diffusion (trained)': dict(
      graph_tasks.compare(generated, reference, task.laplacian), seconds_per_sample=per_sample)}
  for name, fn in graph_tasks.BASELINES.items():
    start = time.perf_counter()
    samples = fn(rng, train, FLAGS.num_samples)
    rows[name] = dict(graph_tasks.compare(samples, reference, task.laplacian),
                      seconds_per_sample=(time.perf_counter() - start) / FLAGS.num_samples)
  rows['held-out reference (floor)'] = dict(
      graph_tasks.compare(task.sample(rng, FLAGS.num_samples), reference, task.laplacian),
      seconds_per_sample=float('nan'))
  print(f'task: {task.name}, {task.num_nodes} nodes, {FLAGS.num_samples} samples each')
  print('| method | mean MSE | variance MSE | covariance MSE | smoothness |L S|^2 '
        '(reference) | s per sample |')
  print('|---|---|---|---|---|---|')
  for name, r in rows.items():
    print(f"| {name} | {r['mean_mse']:.2e} | {r['variance_mse']:.2e} | "
          f"{r['covariance_mse']:.2e} | {r['smoothness']:.4f} "
          f"({r['reference_smoothness']:.4f}) | {r['seconds_per_sample']:.2e} |")
  if FLAGS.out:
    io_lib.write_json_atomic(FLAGS.out, dict(task=task.name, workdir=FLAGS.workdir,
                                             num_samples=FLAGS.num_samples, rows=rows))


if __name__ == '__main__':
  cli.run(main)
