"""Conditions: per-crystal properties a network is told, each turned into a
vector by a registered encoder and added to the time embedding.

Data: a `CrystalBatch` carries `conditions {property: [G] values}` and
`condition_mask {property: [G] bool}` (False: unknown, or dropped on
purpose, e.g. for classifier-free guidance; padding crystals are False).
Training batches gather them from the data file's property columns
(`PackedStructures`, missing values masked); sampling templates take them
as arguments (`sampling.template_from_compositions`).

Model: `ModelConfig.conditions = ((property, encoder, settings), ...)`;
the network builds one encoder per property and adds the sum of their
`[G, dim]` outputs to its time embedding. With no conditions a network is
exactly what it was.

Registered encoders, each with its own settings:
  scalar       a real value (e.g. band gap in eV): standardised with the
               settings' `mean` and `std` (measured on the training data
               when a run starts, unless given), then `num_freqs`
               sine/cosine Fourier features and a dense layer.
  categorical  an integer class in [0, num_classes) (e.g. a space group
               number minus one): an embedding table.
  multi_hot    a set of classes stored as one integer, the sum of 2^k over
               the classes k present (at most 24 classes, exact in float32;
               e.g. which of a list of elements a crystal holds): a dense
               layer of the bits.
  element_set  a `[G, K]` multi-hot over the elements (the derived property
               `chemical_system`: which elements a crystal holds, asked for
               as `--condition chemical_system=Li-Fe-O`): a dense layer.
An unknown (masked) value gets a learned null vector instead.

Settings fit the data: a run calls `settings.fit(values)` with the training
crystals' values of the property (NaN: unknown) before it builds the
network, and stores what it returns (`ModelConfig.fit_conditions`): the
scalar's mean, standard deviation and range, a check that classes are
integers in range.

Classifier-free guidance: a model trained with `condition_dropout` p > 0
(`losses.drop_conditions`) also learned the unconditional prediction, so a
sampler can extrapolate from it (`Model.with_guidance`).

A new encoder: a flax module `(dim, settings)` with
`__call__(values [G], mask [G]) -> [G, dim]`, a settings dataclass, and
`register_condition(name, module_class, defaults)`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxcrystal import errors
from jaxcrystal.generative import settings as settings_lib


class ConditionSettings(settings_lib.Settings):
  """Base of an encoder's settings: `fit` adapts them to the training data."""

  def fit(self, values: np.ndarray) -> 'ConditionSettings':
    """These settings for the training crystals' `values` `[S]` (NaN:
    unknown; at least one is known). Raises ValueError saying what in the
    values cannot be encoded."""
    return self


@dataclasses.dataclass(frozen=True)
class ScalarSettings(ConditionSettings):
  """A real property: `(value - mean) / std` is what the features see.

  Attributes:
    mean: subtracted from the value (with std 0: measured on the training data).
    std: divides the value; 0: mean, std and range measured on the
      training data when a run starts.
    num_freqs: sine/cosine Fourier features of the standardised value.
    low: the training data's smallest value (sampling warns outside
      [low, high]; low == high: unknown).
    high: the training data's largest value.
  """
  mean: float = 0.0
  std: float = 0.0
  num_freqs: int = 8
  low: float = 0.0
  high: float = 0.0

  def validate(self):
    if not self.std >= 0:
      raise ValueError(f'std must be >= 0 (0: measured on the training data), got '
                       f'{self.std}')
    if self.num_freqs < 1:
      raise ValueError(f'num_freqs must be >= 1, got {self.num_freqs}')
    if self.low > self.high:
      raise ValueError(f'low ({self.low}) must not exceed high ({self.high})')

  def fit(self, values):
    known = np.asarray(values, np.float64)
    known = known[np.isfinite(known)]
    out = self
    if self.std == 0:
      spread = float(known.std())
      out = dataclasses.replace(out, mean=float(known.mean()),
                                std=spread if spread > 0 else 1.0)
    if self.low == self.high:
      out = dataclasses.replace(out, low=float(known.min()), high=float(known.max()))
    return out


@dataclasses.dataclass(frozen=True)
class ClassesSettings(ConditionSettings):
  """A categorical or multi-hot property over `num_classes` classes."""
  num_classes: int = 2

  def validate(self):
    if self.num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {self.num_classes}')

  def fit(self, values):
    known = np.asarray(values, np.float64)
    known = known[np.isfinite(known)]
    bad = known[(known != np.round(known)) | (known < 0)
                | (known >= self.upper_bound())]
    if bad.size:
      raise ValueError(f'{bad.size} values are not {self.what()} (first: {bad[0]:g})')
    return self

  def upper_bound(self) -> int:
    return self.num_classes

  def what(self) -> str:
    return f'integers in [0, {self.num_classes})'


@dataclasses.dataclass(frozen=True)
class MultiHotSettings(ClassesSettings):
  """A set of at most 24 classes (bits of a float32-exact integer)."""
  num_classes: int = 8

  def validate(self):
    super().validate()
    if self.num_classes > 24:
      raise ValueError(f'num_classes must be <= 24, got {self.num_classes}')

  def upper_bound(self) -> int:
    return 2 ** self.num_classes

  def what(self) -> str:
    return f'sets of {self.num_classes} classes (integers in [0, 2^{self.num_classes}))'


@dataclasses.dataclass(frozen=True)
class ElementSetSettings(ConditionSettings):
  """A set of elements given as a `[G, K]` multi-hot (a crystal's chemical
  system, `properties.element_set`); no settings of its own."""

  def fit(self, values):
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
      raise ValueError('an element set is a vector per crystal (e.g. the derived '
                       'property chemical_system), not a number')
    known = values[np.isfinite(values).all(-1)]
    if not np.isin(known, (0.0, 1.0)).all():
      raise ValueError('element sets must hold only 0 and 1')
    return self


class _NullWhereUnknown(nn.Module):
  """A learned vector for crystals whose value is unknown (`mask` False)."""
  dim: int

  @nn.compact
  def __call__(self, embedded, mask):
    null = self.param('null', nn.initializers.normal(0.02), (self.dim,))
    return jnp.where(mask[:, None], embedded, null[None, :])


class ScalarEncoder(nn.Module):
  dim: int
  settings: ScalarSettings

  @nn.compact
  def __call__(self, values, mask):
    s = self.settings
    if s.std == 0:
      raise errors.ConfigError(
          'a scalar condition with std 0 has not been fitted: a training run '
          'measures mean and std on its data (ModelConfig.fit_conditions); a '
          'model built by hand gives them')
    x = jnp.where(mask, (values - s.mean) / s.std, 0.0)[:, None]
    freqs = jnp.pi * 2.0 ** jnp.arange(s.num_freqs, dtype=x.dtype)[None, :] / 8.0
    features = jnp.concatenate([x, jnp.sin(freqs * x), jnp.cos(freqs * x)], -1)
    return _NullWhereUnknown(self.dim)(nn.Dense(self.dim)(features), mask)


class CategoricalEncoder(nn.Module):
  dim: int
  settings: ClassesSettings

  @nn.compact
  def __call__(self, values, mask):
    n = self.settings.num_classes
    index = jnp.clip(values.astype(jnp.int32), 0, n - 1)
    return _NullWhereUnknown(self.dim)(nn.Embed(n, self.dim)(index), mask)


class MultiHotEncoder(nn.Module):
  dim: int
  settings: MultiHotSettings

  @nn.compact
  def __call__(self, values, mask):
    n = self.settings.num_classes
    bits = (values.astype(jnp.int32)[:, None] >> jnp.arange(n)[None, :]) & 1
    return _NullWhereUnknown(self.dim)(nn.Dense(self.dim)(bits.astype(jnp.float32)),
                                       mask)


class ElementSetEncoder(nn.Module):
  dim: int
  settings: ElementSetSettings

  @nn.compact
  def __call__(self, values, mask):
    if values.ndim != 2:
      raise errors.ConfigError('the element_set encoder takes a vector per crystal '
                               '(e.g. chemical_system), not a number')
    x = jnp.where(mask[:, None], values, 0.0)
    return _NullWhereUnknown(self.dim)(nn.Dense(self.dim)(x), mask)


CONDITIONS = settings_lib.Registry('condition encoder')
entry = CONDITIONS.entry


def register_condition(name: str, module: Callable,
                       defaults: settings_lib.Settings) -> None:
  """Add an encoder: `module(dim, settings)` a flax module mapping
  `(values [G], mask [G]) -> [G, dim]`."""
  CONDITIONS.register(name, module, defaults)


register_condition('scalar', ScalarEncoder, ScalarSettings())
register_condition('categorical', CategoricalEncoder, ClassesSettings())
register_condition('multi_hot', MultiHotEncoder, MultiHotSettings())
register_condition('element_set', ElementSetEncoder, ElementSetSettings())


class ConditionEmbedding(nn.Module):
  """The sum of every condition's encoding, `[G, dim]` (zeros without any).

  Attributes:
    specs: ((property, encoder name, settings), ...), as in `ModelConfig`.
    dim: output width (the network's time-embedding width).
  """
  specs: tuple
  dim: int

  @nn.compact
  def __call__(self, conditions: dict, condition_mask: dict, num_graphs: int):
    total = jnp.zeros((num_graphs, self.dim))
    for prop, name, settings in self.specs:
      if prop not in conditions:
        raise ValueError(f'the model is conditioned on {prop!r}, which the batch '
                         f'does not carry (it has {sorted(conditions)})')
      module = entry(name).build(self.dim, settings, name=f'condition_{prop}')
      total = total + module(conditions[prop], condition_mask[prop])
    return total
