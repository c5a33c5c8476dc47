"""The network registry: every score network behind one call signature.

  net = get_network(name, model_config, variables)
  params = net.init(rng, batch, times, graph, noisy)
  outputs = net.apply(params, batch, times, graph, noisy, conditioning=None)

  batch: `CrystalBatch` with the noisy variables written in (lattice, frac).
  times: [G] float time of each crystal in [0, 1] (1: prior, 0: data).
  graph: `neighbors.NeighborList` built by the model (`Model.graph`).
  noisy: {variable: noisy state}, including variables with no slot in the
    batch (one-hot types).
  conditioning: per-crystal conditioning values, or None.
  outputs: {variable: prediction}, one per variable of the task, each
    shaped like the process's regression target.

`net.nearest_image` says whether the graph must carry minimum-image shifts.
A new network is a flax module, an adapter with `init`/`apply` of that
signature, and `register_network(name, builder)` with
`builder(model_config, variables) -> adapter`. Check its symmetries with
`jaxcrystal.testing.assert_transform_consistent`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from jaxcrystal.generative import cspnet
from jaxcrystal.generative import egnn


def _check_variables(name: str, variables, known) -> tuple[str, ...]:
  unknown = [v for v in variables if v not in known]
  if unknown:
    raise ValueError(f'network {name!r} has no output for variable(s) {unknown}; '
                     f'it predicts {sorted(known)}')
  return tuple(variables)


def _no_conditioning(name: str, conditioning) -> None:
  if conditioning is not None:
    raise ValueError(f'network {name!r} takes no conditioning')


@dataclasses.dataclass(frozen=True)
class CSPNetScore:
  """CSPNet: lattice noise, normalised fractional score and type noise."""
  module: cspnet.CSPNet
  variables: tuple[str, ...]

  @property
  def nearest_image(self) -> bool:
    return self.module.distance_basis > 0

  def init(self, rng, batch, times, graph, noisy):
    return self.module.init(rng, batch, times, graph, noisy.get('types'))

  def apply(self, params, batch, times, graph, noisy, conditioning=None):
    _no_conditioning('cspnet', conditioning)
    out = self.module.apply(params, batch, times, graph, noisy.get('types'))
    full = {'lattice': out.lattice_noise, 'coords': out.frac_score,
            'types': out.type_logits}
    return {v: full[v] for v in self.variables}


@dataclasses.dataclass(frozen=True)
class CartesianEGNNScore:
  """CartesianEGNN: Cartesian noise of the positions, in units of sigma."""
  module: egnn.CartesianEGNN
  variables: tuple[str, ...]
  nearest_image: bool = True

  def init(self, rng, batch, times, graph, noisy):
    return self.module.init(rng, batch, graph, times)

  def apply(self, params, batch, times, graph, noisy, conditioning=None):
    _no_conditioning('cartesian_egnn', conditioning)
    return {'coords': self.module.apply(params, batch, graph, times)}


def _cspnet(c, variables):
  variables = _check_variables('cspnet', variables, ('lattice', 'coords', 'types'))
  return CSPNetScore(cspnet.CSPNet(
      hidden=c.hidden, num_layers=c.num_layers, num_freqs=c.num_freqs,
      time_dim=c.time_dim, predict_types='types' in variables,
      distance_basis=c.distance_basis, cutoff=c.cutoff,
      edge_score_head=c.edge_score_head), variables)


def _cartesian_egnn(c, variables):
  variables = _check_variables('cartesian_egnn', variables, ('coords',))
  return CartesianEGNNScore(egnn.CartesianEGNN(
      hidden=c.hidden, num_layers=c.num_layers, num_basis=c.num_basis,
      cutoff=c.cutoff, time_dim=c.time_dim), variables)


NETWORKS: dict[str, Callable] = {'cspnet': _cspnet, 'cartesian_egnn': _cartesian_egnn}


def register_network(name: str, builder: Callable) -> None:
  """Add a network: `builder(model_config, variables) -> adapter`."""
  if name in NETWORKS:
    raise ValueError(f'network {name!r} is already registered')
  NETWORKS[name] = builder


def get_network(name: str, config, variables):
  if name not in NETWORKS:
    raise ValueError(f'unknown network {name!r}; choose from {sorted(NETWORKS)}')
  return NETWORKS[name](config, tuple(variables))
