"""jaxcrystal: generative models of periodic crystals in JAX/Flax.

The public API, one import away (loaded on first use, so `import
jaxcrystal` stays cheap and importing never loads what a script does not
touch):

  import jaxcrystal as jc
  structures, report = jc.read_structures('val.csv', skip_bad=True)
  batch = jc.to_device(jc.batch_from_atoms(structures[:64]))
  graph = jc.fully_connected_graph(batch)
  config = jc.TrainConfig(model=jc.ModelConfig(task='csp_flow').with_network(hidden=64))
  jc.train_and_evaluate(config, 'runs/mine')
  model, params, _, _ = jc.load_run('runs/mine')
  samples, timing = jc.sample_structures(model, params, [s.numbers for s in structures])

Sub-packages (`jc.data`, `jc.geometry`, `jc.generative`, `jc.training`,
`jc.evaluation`, `jc.plotting`, `jc.healing`, `jc.graph_diffusion`,
`jc.generators`, `jc.nn`) hold the rest; `docs/architecture.md` is the map.
"""
from __future__ import annotations

import importlib

# public name -> (module, attribute)
_API = {
    # data
    'CrystalBatch': ('jaxcrystal.data.batch', 'CrystalBatch'),
    'Budget': ('jaxcrystal.data.batch', 'Budget'),
    'batch_from_atoms': ('jaxcrystal.data.batch', 'batch_from_atoms'),
    'batch_to_atoms': ('jaxcrystal.data.batch', 'batch_to_atoms'),
    'to_device': ('jaxcrystal.data.batch', 'to_device'),
    'read_structures': ('jaxcrystal.data.readers', 'read_structures'),
    'builtin_structures': ('jaxcrystal.data.datasets', 'builtin_structures'),
    # geometry
    'fully_connected_graph': ('jaxcrystal.geometry.neighbors', 'fully_connected_graph'),
    'radius_graph': ('jaxcrystal.geometry.neighbors', 'radius_graph'),
    'cell_list_graph': ('jaxcrystal.geometry.neighbors', 'cell_list_graph'),
    # models, training, sampling
    'ModelConfig': ('jaxcrystal.generative.model', 'ModelConfig'),
    'build_model': ('jaxcrystal.generative.model', 'build'),
    'TrainConfig': ('jaxcrystal.generative.train', 'TrainConfig'),
    'train_and_evaluate': ('jaxcrystal.generative.train', 'train_and_evaluate'),
    'SamplerConfig': ('jaxcrystal.generative.samplers', 'SamplerConfig'),
    'load_run': ('jaxcrystal.generative.generate', 'load_run'),
    'sample_structures': ('jaxcrystal.generative.generate', 'sample_structures'),
    # extending
    'register_process': ('jaxcrystal.generative.processes', 'register_process'),
    'register_network': ('jaxcrystal.generative.networks', 'register_network'),
    'register_sampler': ('jaxcrystal.generative.samplers', 'register_sampler'),
    'register_condition': ('jaxcrystal.generative.conditions', 'register_condition'),
    'register_task': ('jaxcrystal.generative.tasks', 'register_task'),
    'Settings': ('jaxcrystal.generative.settings', 'Settings'),
    'assert_transform_consistent': ('jaxcrystal.testing', 'assert_transform_consistent'),
    # errors
    'UserError': ('jaxcrystal.errors', 'UserError'),
}
_SUBPACKAGES = ('data', 'geometry', 'generative', 'training', 'evaluation', 'plotting',
                'healing', 'graph_diffusion', 'generators', 'nn', 'errors', 'testing')

__all__ = sorted(_API) + list(_SUBPACKAGES)


def __getattr__(name: str):
  if name in _API:
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
  elif name in _SUBPACKAGES:
    value = importlib.import_module(f'jaxcrystal.{name}')
  else:
    raise AttributeError(f"module 'jaxcrystal' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
