"""The network registry: every score network behind one call signature.

  net = get_network(name, settings, variables, cutoff, conditions=())
  params = net.init(rng, batch, times, graph, noisy)
  outputs = net.apply(params, batch, times, graph, noisy)

  batch: `CrystalBatch` with the noisy variables written in (lattice, frac).
  times: [G] float time of each crystal in [0, 1] (1: prior, 0: data).
  graph: `neighbors.NeighborList` built by the model (`Model.graph`).
  noisy: {variable: noisy state}, including variables with no slot in the
    batch (one-hot types).
  conditions: ((property, encoder, settings), ...) the model is conditioned
    on (`conditions.py`); the values ride on the batch
    (`batch.conditions`, `batch.condition_mask`). A network that takes them
    adds `conditions.ConditionEmbedding` to its time embedding; a builder
    without a `conditions` argument takes none.
  outputs: {variable: prediction}, one per variable of the task, each
    shaped like the process's regression target.

`net.nearest_image` says whether the graph must carry minimum-image shifts.
Each network owns its settings (`settings.py`): `CSPNetSettings`,
`EGNNSettings`. `cutoff` (Angstrom) is the model graph's, which distance
features share. A new network is a flax module, an adapter with
`init`/`apply` of that signature, a frozen settings dataclass, and
`register_network(name, builder, defaults)` with
`builder(settings, variables, cutoff) -> adapter`. Check its symmetries
with `jaxcrystal.testing.assert_transform_consistent`.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

from jaxcrystal import errors
from jaxcrystal.generative import cspnet
from jaxcrystal.generative import egnn
from jaxcrystal.generative import settings as settings_lib


def _check_variables(name: str, variables, known) -> tuple[str, ...]:
  unknown = [v for v in variables if v not in known]
  if unknown:
    raise errors.ConfigError(f'network {name!r} has no output for variable(s) '
                             f'{unknown}; it predicts {sorted(known)}')
  return tuple(variables)


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

  def apply(self, params, batch, times, graph, noisy):
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

  def apply(self, params, batch, times, graph, noisy):
    return {'coords': self.module.apply(params, batch, graph, times)}


def _at_least(settings, minimum: int, *names: str) -> None:
  for name in names:
    if getattr(settings, name) < minimum:
      raise ValueError(f'{name} must be >= {minimum}, got {getattr(settings, name)}')


@dataclasses.dataclass(frozen=True)
class CSPNetSettings(settings_lib.Settings):
  """CSPNet's settings (`cspnet.CSPNet` says more).

  Attributes:
    hidden: network width.
    num_layers: message-passing layers.
    num_freqs: Fourier frequencies per axis of the fractional differences.
    time_dim: time-embedding width.
    distance_basis: Gaussian distance features of the edges (0: off).
    edge_score_head: coordinate score from distance-weighted edge directions
      (needs distance_basis >= 1).
  """
  hidden: int = 128
  num_layers: int = 4
  num_freqs: int = 128
  time_dim: int = 256
  distance_basis: int = 0
  edge_score_head: bool = False

  def validate(self):
    _at_least(self, 1, 'hidden', 'num_layers', 'num_freqs', 'time_dim')
    _at_least(self, 0, 'distance_basis')
    if self.edge_score_head and self.distance_basis < 1:
      raise ValueError('edge_score_head needs distance_basis >= 1 (its edge '
                       'weights are functions of the bond length)')


@dataclasses.dataclass(frozen=True)
class EGNNSettings(settings_lib.Settings):
  """CartesianEGNN's settings (`egnn.CartesianEGNN`).

  Attributes:
    hidden: network width.
    num_layers: message-passing layers.
    time_dim: time-embedding width.
    num_basis: radial basis functions of the edge lengths.
  """
  hidden: int = 128
  num_layers: int = 4
  time_dim: int = 256
  num_basis: int = 16

  def validate(self):
    _at_least(self, 1, 'hidden', 'num_layers', 'time_dim', 'num_basis')


def _cspnet(s: CSPNetSettings, variables, cutoff: float, conditions: tuple = ()):
  variables = _check_variables('cspnet', variables, ('lattice', 'coords', 'types'))
  return CSPNetScore(cspnet.CSPNet(
      hidden=s.hidden, num_layers=s.num_layers, num_freqs=s.num_freqs,
      time_dim=s.time_dim, predict_types='types' in variables,
      distance_basis=s.distance_basis, cutoff=cutoff,
      edge_score_head=s.edge_score_head, conditions=tuple(conditions)), variables)


def _cartesian_egnn(s: EGNNSettings, variables, cutoff: float):
  variables = _check_variables('cartesian_egnn', variables, ('coords',))
  return CartesianEGNNScore(egnn.CartesianEGNN(
      hidden=s.hidden, num_layers=s.num_layers, num_basis=s.num_basis,
      cutoff=cutoff, time_dim=s.time_dim), variables)


NETWORKS = settings_lib.Registry('network')
entry = NETWORKS.entry


def register_network(name: str, builder: Callable,
                     defaults: settings_lib.Settings = settings_lib.NONE) -> None:
  """Add a network: `builder(settings, variables, cutoff[, conditions]) ->
  adapter`, `defaults` an instance of its settings class."""
  NETWORKS.register(name, builder, defaults)


def get_network(name: str, settings, variables, cutoff: float, conditions: tuple = ()):
  """Build a registered network with its settings (validated here), told
  `conditions` if any (a network whose builder takes none refuses them)."""
  e = entry(name)
  settings = settings_lib.checked_like(settings, e.defaults, f'network {name!r}')
  if not conditions:
    return e.build(settings, tuple(variables), cutoff)
  if 'conditions' not in inspect.signature(e.build).parameters:
    raise errors.ConfigError(f'network {name!r} takes no conditions; the model asks '
                             f'for {[c[0] for c in conditions]}')
  return e.build(settings, tuple(variables), cutoff, conditions=tuple(conditions))


register_network('cspnet', _cspnet, CSPNetSettings())
register_network('cartesian_egnn', _cartesian_egnn, EGNNSettings())
