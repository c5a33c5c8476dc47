"""The structure demo run by the README's main command (before training exists).

Loads the built-in dataset, pads it into one batch, builds periodic graphs under
jit, measures coordination and RDFs, and writes the standard outputs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxcrystal import batch as batch_lib
from jaxcrystal import datasets
from jaxcrystal import descriptors
from jaxcrystal import io as io_lib
from jaxcrystal import neighbors
from jaxcrystal import plots
from jaxcrystal import validation


def run_structure_demo(workdir: str | Path, cutoff: float = 6.0) -> dict:
  """Write extxyz, npz, CIFs, a LAMMPS dump, an RDF plot and a summary JSON."""
  workdir = Path(workdir)
  structures = datasets.builtin_structures()
  batch = batch_lib.to_device(batch_lib.batch_from_atoms(structures))
  max_image = neighbors.estimate_max_image(batch.lattice, cutoff)
  capacity = neighbors.estimate_capacity(batch, cutoff, max_image)
  graph_fn = jax.jit(neighbors.radius_graph, static_argnums=(1, 2, 3))
  t0 = time.perf_counter()
  nbrs = jax.block_until_ready(graph_fn(batch, cutoff, max_image, capacity))
  graph_s = time.perf_counter() - t0
  if nbrs.did_overflow():
    raise RuntimeError('radius graph overflowed; raise its capacity')
  r, g = descriptors.radial_distribution(batch, nbrs, cutoff, 120)
  g = np.asarray(g)
  summaries = [validation.structure_summary(s) for s in structures]
  io_lib.write_extxyz(workdir / 'builtin.extxyz', structures)
  io_lib.write_npz(workdir / 'builtin.npz', structures)
  io_lib.write_cifs(workdir / 'cifs', structures)
  io_lib.write_lammps_dump(workdir / 'builtin.dump', structures[:7])
  curves = {s.info['material_id']: g[k] for k, s in enumerate(structures)
            if s.info['variant'] == 'ideal'}
  plots.plot_rdf(np.asarray(r), curves, workdir / 'rdf.png',
                 title='Built-in dataset: ideal prototypes')
  plots.plot_histograms(
      {'density (g/cm^3)': [s.density for s in summaries],
       'min distance (A)': [s.min_distance for s in summaries],
       'coordination': [s.mean_coordination for s in summaries]},
      workdir / 'builtin_histograms.png', title='Built-in dataset')
  result = {
      'structures': len(structures),
      'valid': int(sum(s.valid for s in summaries)),
      'edges': int(nbrs.num_edges()),
      'graph_seconds_including_compile': graph_s,
      'coordination': {s.info['material_id']: summ.mean_coordination
                       for s, summ in zip(structures, summaries)},
  }
  io_lib.write_json_atomic(workdir / 'summary.json', result)
  return result


def format_summary(result: dict) -> str:
  return json.dumps({k: v for k, v in result.items() if k != 'coordination'},
                    indent=2)
