"""Structure generators and the dataset factory."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms

from jaxcrystal.generators import dataset_factory as factory
from jaxcrystal.generators import structures as generators

ROOT = Path(__file__).resolve().parents[1]
CONFIG = factory.SamplingConfig(elements=('H', 'C', 'N', 'O'), max_atoms=40)


@pytest.mark.parametrize('kind,make', [
    ('molecule', lambda r: generators.template_molecule(r, ['H', 'C', 'O'])),
    ('molecule', lambda r: generators.random_molecule(r, ['C', 'N', 'O'], 12)),
    ('crystal', lambda r: generators.prototype_crystal(r, ['C', 'N', 'O'])),
    ('crystal', lambda r: generators.random_symmetric_crystal(r, ['C', 'O'], 2)),
    ('cluster', lambda r: generators.random_cluster(r, ['C', 'N'], 30)),
    ('cluster', lambda r: generators.magic_cluster(r, ['C'], 40)),
    ('surface', lambda r: generators.slab(r, ['C', 'O'], 40)),
])
def test_every_generator_gives_valid_structures(kind, make):
  for seed in range(8):
    atoms = make(np.random.default_rng(seed))
    # Size is the factory's business (it redraws); here: geometry and cell.
    assert factory.check(atoms, kind, dataclasses.replace(CONFIG, max_atoms=1000)) == '', \
        (kind, seed)


def test_each_prototype_and_supercells():
  rng = np.random.default_rng(0)
  for proto in generators.PROTOTYPES:
    atoms = generators.prototype_crystal(rng, ['Ca', 'Ti', 'O'], proto)
    assert factory.check(atoms, 'crystal', factory.SamplingConfig(
        elements=('Ca', 'Ti', 'O'), min_atoms=1)) == '', proto
  big = generators.supercell_to_size(generators.prototype_crystal(rng, ['Cu'], 'fcc'), 30)
  assert 15 < len(big) <= 30
  with pytest.raises(ValueError, match='at least two elements'):
    generators.prototype_crystal(rng, ['Cu'], 'rocksalt')


def test_check_catches_bad_structures():
  close = Atoms('H2', positions=[[0, 0, 0], [0.2, 0, 0]], cell=[8, 8, 8])
  close.center()
  assert 'too close' in factory.check(close, 'molecule', CONFIG)
  periodic = Atoms('C2', positions=[[0, 0, 0], [1.5, 0, 0]], cell=[5, 5, 5], pbc=True)
  assert 'periodicity' in factory.check(periodic, 'molecule', CONFIG)
  assert 'element outside' in factory.check(Atoms('Fe2', cell=[3] * 3, pbc=True,
                                                  scaled_positions=[[0] * 3, [0.5] * 3]), 'crystal',
                                            CONFIG)
  wrapped = Atoms('C2', positions=[[0.1, 0, 0], [4.8, 0, 0]], cell=[5, 5, 5], pbc=True)
  assert 'too close' in factory.check(wrapped, 'crystal', CONFIG)  # through the boundary


def _real_structures():
  """(kind, name, Atoms) of ASE's g2 molecules, ASE's elemental reference
  crystals and pymatgen's ordered test structures."""
  import glob
  import warnings
  import pymatgen.core
  from ase.build import bulk
  from ase.collections import g2
  from ase.data import chemical_symbols, reference_states
  from pymatgen.core import Structure
  from pymatgen.io.ase import AseAtomsAdaptor
  out = [('molecule', name, g2[name]) for name in g2.names if len(g2[name]) > 1]
  for z, state in enumerate(reference_states):
    if state and state.get('symmetry') in ('fcc', 'bcc', 'hcp', 'diamond', 'sc'):
      try:
        out.append(('crystal', chemical_symbols[z], bulk(chemical_symbols[z])))
      except ValueError:  # a reference state ASE cannot build without a basis
        pass
  folder = Path(pymatgen.core.__file__).parents[1] / 'util' / 'structures'
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    for path in sorted(glob.glob(str(folder / '*.json'))):
      structure = Structure.from_dict(json.loads(Path(path).read_text()))
      if structure.is_ordered:
        out.append(('crystal', Path(path).stem, AseAtomsAdaptor.get_atoms(structure)))
  return out


def test_physical_checks_accept_real_structures_and_refuse_packed_hydrogen():
  real = _real_structures()
  kinds = [k for k, _, _ in real]
  assert kinds.count('molecule') > 100 and kinds.count('crystal') > 60
  refused = {name: factory.physical_check(atoms, kind) for kind, name, atoms in real
             if factory.physical_check(atoms, kind)}
  assert not refused, refused
  # The case that passed before: H32 in a 1.95 x 1.95 x 1.89 A cell, H-H 0.35 A.
  rng = np.random.default_rng(0)
  dense = Atoms('H32', cell=[1.95, 1.95, 1.89], pbc=True,
                scaled_positions=rng.uniform(0, 1, (32, 3)))
  assert 'too close' in factory.physical_check(dense, 'crystal')
  # At bond length but packed like a metal: too dense for hydrogen.
  fcc_h = Atoms('H4', cell=[0.88] * 3, pbc=True, scaled_positions=[
      [0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
  assert 'too dense' in factory.physical_check(fcc_h, 'crystal')
  # The issue's command: no hydrogen crystal denser than solid H2's 20 %.
  structures, _ = factory.generate(factory.SamplingConfig(), 200, seed=3, workers=1,
                                   progress=False)
  for atoms in structures:
    assert factory.physical_check(atoms, atoms.info['system_type']) == ''
    if atoms.info['system_type'] == 'crystal' and set(atoms.get_chemical_symbols()) == {'H'}:
      assert atoms.get_volume() / len(atoms) > 0.2 * generators.elemental_volume('H')


def test_configuration_validation_names_the_field():
  with pytest.raises(ValueError, match='sum to 1'):
    factory.SamplingConfig(fractions=(('molecule', 0.5), ('crystal', 0.3))).validate()
  with pytest.raises(ValueError, match='unknown system types'):
    factory.SamplingConfig(fractions=(('polymer', 1.0),)).validate()
  with pytest.raises(ValueError, match='unknown chemical symbols'):
    factory.SamplingConfig(elements=('C', 'Xx')).validate()
  with pytest.raises(ValueError, match='min_atoms <= max_atoms'):
    factory.SamplingConfig(min_atoms=10, max_atoms=5).validate()
  with pytest.raises(ValueError, match='not a number'):
    factory.parse_fractions('molecule=half')


def test_plan_is_stratified():
  rows = factory.plan(CONFIG, 101)
  kinds = [r['kind'] for r in rows]
  assert [kinds.count(k) for k in factory.SYSTEM_TYPES] == [41, 30, 15, 15]
  sizes = sorted(r['size'] for r in rows if r['kind'] == 'molecule')
  assert sizes[0] == CONFIG.min_atoms and sizes[-1] == CONFIG.max_atoms


def test_same_output_for_any_worker_count_and_all_valid():
  one, redraws_1 = factory.generate(CONFIG, 60, seed=3, workers=1, progress=False)
  two, redraws_2 = factory.generate(CONFIG, 60, seed=3, workers=2, progress=False)
  assert redraws_1 == redraws_2
  for a, b in zip(one, two):
    assert a.get_chemical_formula() == b.get_chemical_formula()
    np.testing.assert_array_equal(a.positions, b.positions)
  for a in one:
    assert factory.check(a, a.info['system_type'], CONFIG) == ''
  other, _ = factory.generate(CONFIG, 60, seed=4, workers=1, progress=False)
  assert any(a.get_chemical_formula() != b.get_chemical_formula() for a, b in zip(one, other))


def test_diversity_metrics_on_hand_made_sets():
  config = factory.SamplingConfig(elements=('C', 'O'), fractions=(('molecule', 1.0),))
  co = Atoms('CO', positions=[[0, 0, 0], [1.13, 0, 0]], cell=[8] * 3)
  c2 = Atoms('C2', positions=[[0, 0, 0], [1.3, 0, 0]], cell=[8] * 3)
  for a in (co, c2):
    a.info['system_type'] = 'molecule'
  mixed = factory.diversity([co, co], config)
  assert mixed['element_coverage'] == 1.0
  assert mixed['composition_entropy_normalised'] == pytest.approx(1.0)
  assert mixed['fingerprint_spread'] == 0.0 and mixed['size_std'] == 0.0
  assert mixed['type_balance_max_deviation'] == 0.0
  carbon = factory.diversity([c2, c2], config)
  assert carbon['element_coverage'] == 0.5 and carbon['elements_missing'] == ['O']
  assert carbon['composition_entropy'] == 0.0
  assert factory.diversity([co, c2], config)['fingerprint_spread'] > 0.0


def test_cli_writes_outputs_and_labels_with_emt(tmp_path):
  cmd = [sys.executable, str(ROOT / 'experiments' / 'generate_structures.py'),
         '--num_samples=12', '--seed=1', '--elements=Cu,Pt', '--max_atoms=20',
         '--fractions=crystal=0.5,cluster=0.25,surface=0.25', '--workers=2',
         f'--out={tmp_path}', '--ase_db', '--calculator=emt', '--noprogress']
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  frames = ase.io.read(tmp_path / 'structures.extxyz', ':')
  assert len(frames) == 12
  assert all(np.isfinite(f.get_potential_energy()) and f.get_forces().shape == (len(f), 3)
             for f in frames)
  assert json.loads((tmp_path / 'config.json').read_text())['seed'] == 1
  assert json.loads((tmp_path / 'diversity.json').read_text())['element_coverage'] == 1.0
  assert ase.db.connect(str(tmp_path / 'structures.db')).count() == 12
  bad = subprocess.run(cmd[:5] + ['--fractions=crystal=0.7', f'--out={tmp_path}/x'],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and 'must sum to 1' in bad.stderr
