"""Flags generated from the config classes and the registered components
(`jaxcrystal.config_flags`): every field is a flag with its docstring's
help, the flags build the config they describe, and a bad or misplaced
setting is one line naming the flag."""
import dataclasses

import pytest
from absl import flags

from jaxcrystal import config_flags
from jaxcrystal import errors
from jaxcrystal.generative import model as model_lib
from jaxcrystal.generative import networks
from jaxcrystal.generative import processes
from jaxcrystal.generative import settings
from jaxcrystal.generative import train
from jaxcrystal.training import state as state_lib


def _flags(*args):
  values = flags.FlagValues()
  read = config_flags.define_train_config(flag_values=values, module='test')
  values(['prog', *args])
  return values, read


def test_field_help_reads_the_attributes_section():
  @dataclasses.dataclass(frozen=True)
  class Toy(settings.Settings):
    """A toy.

    Attributes:
      width: the width,
        in atoms.
      depth (int): how deep.

    More prose that is not a field: here.
    """
    width: int = 3
    depth: int = 2
  assert config_flags.field_help(Toy) == {'width': 'the width, in atoms.',
                                          'depth': 'how deep.'}


def test_a_field_without_a_help_line_is_refused_when_flags_are_made():
  @dataclasses.dataclass(frozen=True)
  class Undocumented:
    """Attributes:
      a: documented.
    """
    a: int = 1
    b: int = 2
  with pytest.raises(ValueError, match=r'Undocumented\.b has no line'):
    config_flags.define_fields(Undocumented, flag_values=flags.FlagValues())


def test_no_flags_give_the_default_config_and_every_flag_has_help():
  values, read = _flags()
  assert read() == train.TrainConfig(model=model_lib.ModelConfig()
                                     .with_network().with_process('lattice')
                                     .with_process('coords'))
  own = values.flags_by_module_dict()['test']
  assert all(flag.help.strip() for flag in own)
  names = {flag.name for flag in own}
  # every field of every config class and registered component is a flag
  for field in dataclasses.fields(state_lib.OptimConfig):
    assert f'optim.{field.name}' in names
  for entry in list(networks.NETWORKS.values()):
    assert {f'network.{f.name}' for f in dataclasses.fields(entry.defaults)} <= names
  for entry in list(processes.PROCESSES.values()):
    assert {f'coords.{f.name}' for f in dataclasses.fields(entry.defaults)} <= names


def test_dotted_flags_reach_the_component_they_name():
  _, read = _flags('--task=dng', '--network.hidden=32', '--coords.sigma_end=0.4',
                   '--types.beta_schedule=linear', '--optim.plateau_factor=0.5',
                   '--loss_weights.types=20', '--batch_size=8')
  config = read()
  table = {v: (n, s) for v, n, s in config.model.process_table()}
  assert table['coords'] == ('frac_wrapped_normal', processes.SigmaSettings(0.005, 0.4))
  assert table['types'][1] == processes.DDPMSettings('linear')
  assert table['lattice'][1] == processes.DDPMSettings('cosine')  # only types changed
  _, read = _flags('--lattice.time_power=2')
  lattice = model_lib.build(read().model).processes['lattice']
  assert lattice.schedule.time_power == 2.0
  assert config.model.network_choice() == ('cspnet', networks.CSPNetSettings(hidden=32))
  assert (config.optim.plateau_factor, config.loss_weights.types, config.batch_size) == \
      (0.5, 20.0, 8)
  # a process or network chosen by name, with its own defaults
  _, read = _flags('--task=cartesian', '--graph=radius', '--coords.sigma_end=2.0')
  assert read().model.process_table()[0][2] == processes.SigmaSettings(0.01, 2.0)


@pytest.mark.parametrize('args, message', [
    (['--coords.sigma_begin=0.6'], r"^--coords\.sigma_begin: process 'frac_wrapped_normal' "
                                   r'\(coords\): sigma_begin must be > 0 and below'),
    (['--network.num_basis=8'], r"^--network\.num_basis: network 'cspnet': unknown "
                                r"setting\(s\) \['num_basis'\]"),
    (['--types.beta_schedule=linear'], r"^--types\.beta_schedule: task 'csp' has no "
                                       r"variable 'types'"),
    (['--coords.process=nope'], r"^--coords\.process: unknown process 'nope'"),
    (['--lattice.time_power=9'], r"^--lattice\.time_power: process 'lattice_ddpm' "
                                 r'\(lattice\): time_power must be in \[0\.25, 8\]'),
    (['--optim.ema_decay=1.0'], r'^optim: ema_decay must be in \[0, 1\), got 1\.0'),
    (['--loss_weights.coords=-1'], r'^loss_weights: coords must be >= 0'),
    (['--train_steps=0'], r'^train: train_steps must be >= 1'),
    (['--condition=heat_ref:nope'], r"^--condition=heat_ref:nope: give NAME or "
                                    r"NAME:ENCODER, ENCODER one of \['categorical'"),
    (['--condition_dropout=0.1'], r'^model: condition_dropout needs conditions'),
    (['--condition=heat_ref', '--condition_dropout=1'],
     r'^model: condition_dropout must be in \[0, 1\), got 1\.0'),
])
def test_a_bad_setting_is_one_line_naming_it(args, message):
  _, read = _flags(*args)
  with pytest.raises(errors.ConfigError, match=message):
    read()


def test_condition_flags_build_the_conditions():
  _, read = _flags('--condition=heat_ref', '--condition=num_elements:categorical',
                   '--condition=chemical_system', '--condition_dropout=0.1')
  model = read().model
  assert model.properties == ('heat_ref', 'num_elements', 'chemical_system')
  assert [c[1] for c in model.conditions] == ['scalar', 'categorical', 'element_set']
  assert model.condition_dropout == 0.1
  # a space group is a class per group number unless told otherwise
  _, read = _flags('--condition=space_group')
  (prop, encoder, settings), = read().model.conditions
  assert (prop, encoder, settings.num_classes) == ('space_group', 'categorical', 231)
