"""What a sampling request asks for: the compositions (a formula, every row
of a file, or de novo atom counts from the training distribution, within a
range), and the values of a conditioned model's conditions. Constraints of
de novo samples (elements, space groups) are `constraints.py`.

  compositions_for_request(config, formula=..., ...) -> compositions, cells, rows, report
  request_conditions(model_config, {property: value}, num) -> {property: [num] values}
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxcrystal import errors
from jaxcrystal.data import properties as properties_lib
from jaxcrystal.data import readers
from jaxcrystal.generative import constraints
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import sampling
from jaxcrystal.generative import tasks
from jaxcrystal.generative import train


def compositions_for_request(config: train.TrainConfig, *, formula: str = '',
                             compositions_from: str = '',
                             samples_per_composition: int = 1,
                             num_samples: int = 100, atom_counts_from: str = '',
                             seed: int = 0, skip_bad: bool = False,
                             atom_counts: Sequence[int] | None = None,
                             atom_range: tuple[int, int] | None = None,
                             warn: Callable[[str], None] = print):
  """What to sample: a formula repeated, every row of a file (K times each),
  or de novo atom counts drawn from the training distribution: the file
  `atom_counts_from`, else `atom_counts` (atoms per training crystal, e.g.
  `recorded_atom_counts`), else the config's training file; `atom_range`
  (low, high) restricts them (`constraints.atom_counts_in_range`).

  Returns (compositions, lattices, source_rows, report): lattices are the
  file's cells for tasks that do not generate the cell (else None);
  source_rows the file row of each composition (None without a file); report
  the file's `LoadReport` (None without a file). A bad row of
  `compositions_from` stops with its row and reason unless `skip_bad`.
  Raises `errors.UserError` for contradictory or unusable requests.
  """
  if atom_range is not None and (formula or compositions_from):
    raise errors.UserError('--num_atoms sets de novo atom counts; --formula and '
                           '--compositions_from fix them')
  if formula and compositions_from:
    raise errors.UserError('give --formula or --compositions_from, not both')
  task = tasks.get_task(config.model.task)
  if not task.generates_lattice and not compositions_from:
    raise errors.UserError(
        f'a {config.model.task} model generates no cell: it needs '
        '--compositions_from (a file whose cells and compositions are kept)')
  if formula:
    try:
      numbers = readers.parse_formula(formula)
    except ValueError as err:
      raise errors.UserError(f'--formula: {err}') from None
    return [numbers] * num_samples, None, None, None
  if compositions_from:
    structures, report = readers.read_structures(compositions_from,
                                                 skip_bad=skip_bad)
    if not structures:
      raise readers.DataError(f'{compositions_from}: no usable structures')
    rows = [s for s in structures for _ in range(samples_per_composition)]
    lattices = None if task.generates_lattice else [s.cell[:] for s in rows]
    return ([s.numbers for s in rows], lattices,
            [int(s.info['row']) for s in rows], report)
  if not task.generates_types:
    raise errors.UserError(f'a {config.model.task} model needs --formula or '
                           '--compositions_from (it does not generate atom types)')
  if atom_counts_from or not atom_counts:
    structures, _ = train.load_structures(atom_counts_from or config.train_data, config)
    atom_counts = [len(s) for s in structures]
  if atom_range is None:
    counts = sampling.sample_atom_counts(np.random.default_rng(seed), atom_counts,
                                         num_samples)
  else:
    counts, seen = constraints.atom_counts_in_range(
        np.random.default_rng(seed), atom_counts, num_samples, *atom_range)
    if not seen:
      warn(f'warning: --num_atoms={atom_range[0]}-{atom_range[1]}: the training '
           'data holds no crystal of these sizes; they are drawn uniformly')
  return [np.ones(int(n), int) for n in counts], None, None, None  # types generated


def request_conditions(config: model_lib.ModelConfig, requested: dict,
                       num: int, warn: Callable[[str], None] = print,
                       allowed_elements: Sequence[Sequence[int]] | None = None) -> dict:
  """{property: [num] values} of every condition of a model for one request
  (`requested` {property: value}, e.g. from `sample.py --condition`: a
  number, or for chemical_system a text such as 'Li-Fe-O').
  `allowed_elements`: each sample's allowed atomic numbers (`sample.py
  --elements`, `constraints.allowed_for_request`); a model conditioned on
  chemical_system and not asked one is told each sample's set as its system.
  Other properties not requested are unknown (NaN), which a model trained with
  `condition_dropout` takes as "any". A value outside a scalar condition's
  training range is `warn`ed with the range. Raises `errors.UserError`
  naming the property for a property the model was not trained on, or a
  conditioned model asked nothing that never learned "unknown"."""
  known = config.properties
  unknown = sorted(set(requested) - set(known))
  if unknown:
    raise errors.UserError(
        f'--condition {unknown[0]}: the model is not conditioned on it; '
        + (f'its conditions are {list(known)}' if known else 'it was trained '
           'without conditions'))
  told = set(requested) | ({'chemical_system'} if allowed_elements is not None else set())
  missing = [p for p in known if p not in told]
  if missing and not config.condition_dropout:
    raise errors.UserError(
        f'the model is conditioned on {list(known)} and was trained without '
        f'--condition_dropout, so it needs a value of each: give --condition '
        f'{missing[0]}=VALUE')
  out = {}
  for prop, encoder, settings in config.conditions:
    value = requested.get(prop, np.nan)
    if prop == 'chemical_system' and prop not in requested and allowed_elements is not None:
      out[prop] = [properties_lib.element_set_of(numbers) for numbers in allowed_elements]
      continue
    if prop in properties_lib.VECTOR_PROPERTIES:
      if prop in requested:
        try:
          value = properties_lib.parse_element_set(str(value))
        except ValueError as err:
          raise errors.UserError(f'--condition {prop}={requested[prop]}: {err}') from None
      out[prop] = [value] * num
      continue
    if not isinstance(value, (int, float)):
      raise errors.UserError(f'--condition {prop}={value}: {prop} needs a number')
    bound = getattr(settings, 'upper_bound', None)
    if prop in requested and bound is not None and not (
        value == round(value) and 0 <= value < bound()):
      raise errors.UserError(f'--condition {prop}={value:g}: {prop} takes {settings.what()}')
    low, high = getattr(settings, 'low', 0.0), getattr(settings, 'high', 0.0)
    if prop in requested and low < high and not low <= value <= high:
      warn(f'warning: --condition {prop}={value:g} lies outside the training '
           f'data\'s range [{low:g}, {high:g}]; the model extrapolates')
    out[prop] = [float(value)] * num
  return out
