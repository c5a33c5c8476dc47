"""Small shared test helpers."""
import csv

import ase.io
import numpy as np


def rattled(structures, sigma, seed=0):
  """Copies of `structures` with Gaussian noise of `sigma` A on every position."""
  rng = np.random.default_rng(seed)
  out = []
  for a in structures:
    b = a.copy()
    b.positions += rng.normal(0.0, sigma, b.positions.shape)
    out.append(b)
  return out


def cif_text(atoms, tmp_path):
  """`atoms` written as CIF text by ASE (through a scratch file in tmp_path)."""
  path = tmp_path / 'one.cif'
  ase.io.write(path, atoms, format='cif')
  return path.read_text()


def write_cdvae_csv(path, rows):
  """A CSV in the CDVAE layout from (material_id, cif text[, formula]) rows;
  the formula column is left empty (unchecked) where none is given."""
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['', 'material_id', 'cif', 'formula'])
    for k, (mid, cif, *formula) in enumerate(rows):
      w.writerow([k, mid, cif, formula[0] if formula else ''])
