"""Figures of structures and of the diffusion process (matplotlib, PNG).

One function per figure, same style and atomic writing as `plots.py`:
schedule analysis, forward process, reverse process, real against generated,
batch analysis. Each takes plain data (arrays, `ase.Atoms`, dicts) and a path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import ase
import numpy as np
from ase.data import covalent_radii
from ase.data.colors import jmol_colors

import matplotlib

from jaxcrystal.plotting.plots import STYLE, new_figure, save_figure

# The 12 edges of the unit cube, as pairs of corner indices into _CORNERS.
_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8)
          if np.abs(_CORNERS[a] - _CORNERS[b]).sum() == 1]


def draw_structure(ax, atoms: ase.Atoms, title: str = '') -> None:
  """Atoms (Jmol colours, size by covalent radius) and cell edges on a 3D axis.
  Positions are wrapped into the cell; NaN structures show an empty cell."""
  cell = np.asarray(atoms.cell[:], float)
  if np.all(np.isfinite(cell)):
    corners = _CORNERS @ cell
    for a, b in _EDGES:
      ax.plot(*zip(corners[a], corners[b]), color='0.5', lw=0.6)
  frac = atoms.get_scaled_positions(wrap=True) if np.all(np.isfinite(cell)) else None
  if frac is not None and np.all(np.isfinite(frac)):
    pos = frac @ cell
    ax.scatter(*pos.T, c=jmol_colors[atoms.numbers], s=60 * covalent_radii[
        atoms.numbers] ** 2 * 4, edgecolors='k', linewidths=0.4, depthshade=True)
  ax.set_axis_off()
  try:
    ax.set_box_aspect(np.ptp(_CORNERS @ cell, axis=0) + 1e-6)
  except (ValueError, AttributeError):
    pass
  if title:
    ax.set_title(title, fontsize=8)


def plot_schedule(betas: np.ndarray, alpha_bars: np.ndarray, sigmas: np.ndarray,
                  path, title: str = 'Noise schedules') -> 'Path':
  """beta_t, alpha-bar_t, SNR = alpha-bar / (1 - alpha-bar) (log) of the DDPM
  (lattice) schedule and sigma_t (fractional units, log) of the coordinate
  schedule; each `[T + 1]`, index 0 = clean."""
  betas, alpha_bars, sigmas = (np.asarray(x, float) for x in (betas, alpha_bars, sigmas))
  t = np.arange(len(betas))
  with matplotlib.rc_context(STYLE):
    fig = new_figure(figsize=(13, 3))
    axes = fig.subplots(1, 4)
    axes[0].plot(t[1:], betas[1:])
    axes[0].set_ylabel('beta_t')
    axes[1].plot(t, alpha_bars)
    axes[1].set_ylabel('alpha-bar_t')
    snr = alpha_bars[1:] / np.maximum(1.0 - alpha_bars[1:], 1e-12)
    axes[2].semilogy(t[1:], snr)
    axes[2].set_ylabel('SNR_t')
    axes[3].semilogy(np.arange(1, len(sigmas)), sigmas[1:])
    axes[3].set_ylabel('sigma_t (fractional)')
    for ax in axes:
      ax.set_xlabel('t')
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_structure_snapshots(frames: Sequence[ase.Atoms], labels: Sequence[str],
                             path, title: str) -> 'Path':
  """A row of 3D views and below it the fractional-coordinate histograms of
  each frame (x, y, z overlaid). Used for the forward process (one structure
  at several noise levels) and the reverse process (a sampling trajectory)."""
  n = len(frames)
  if n != len(labels) or n == 0:
    raise ValueError(f'{n} frames and {len(labels)} labels')
  with matplotlib.rc_context(STYLE):
    fig = new_figure(figsize=(2.8 * n, 5.6))
    for k, (atoms, label) in enumerate(zip(frames, labels)):
      ax = fig.add_subplot(2, n, k + 1, projection='3d')
      draw_structure(ax, atoms, label)
      hist = fig.add_subplot(2, n, n + k + 1)
      frac = atoms.get_scaled_positions(wrap=True)
      for d, color in zip(range(3), ('tab:red', 'tab:green', 'tab:blue')):
        hist.hist(frac[:, d], bins=20, range=(0, 1), alpha=0.5, color=color,
                  label='xyz'[d])
      hist.set_xlabel('fractional coordinate')
      if k == 0:
        hist.set_ylabel('atoms')
        hist.legend(frameon=False, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_real_vs_generated(real: Sequence[ase.Atoms], generated: Sequence[ase.Atoms],
                           rdf_r: np.ndarray, rdf_curves: Mapping[str, np.ndarray],
                           metrics: Mapping[str, float], path,
                           title: str = 'Real against generated',
                           examples: int = 3) -> 'Path':
  """Top: `examples` real and generated structures side by side. Bottom:
  fractional coordinates of all atoms overlaid (x against y), RDF comparison
  (`rdf_r: [B]` Angstrom, curves `[B]`) and a table of `metrics`."""
  k = max(1, min(examples, len(real), len(generated)))
  with matplotlib.rc_context(STYLE):
    fig = new_figure(figsize=(2.6 * 2 * k, 7.5))
    for i in range(k):
      draw_structure(fig.add_subplot(2, 2 * k, i + 1, projection='3d'), real[i],
                     f'real: {real[i].get_chemical_formula()}')
      draw_structure(fig.add_subplot(2, 2 * k, k + i + 1, projection='3d'),
                     generated[i], f'generated: {generated[i].get_chemical_formula()}')
    grid = fig.add_gridspec(2, 3, hspace=0.3, wspace=0.35)
    overlay = fig.add_subplot(grid[1, 0])
    for group, color, label in ((generated, 'tab:orange', 'generated'),
                                (real, 'tab:blue', 'real')):
      frac = np.concatenate([a.get_scaled_positions(wrap=True) for a in group
                             if np.all(np.isfinite(a.positions))] or [np.zeros((0, 3))])
      overlay.scatter(frac[:, 0], frac[:, 1], s=6, alpha=0.5, color=color, label=label)
    overlay.set_xlabel('fractional x')
    overlay.set_ylabel('fractional y')
    overlay.set_xlim(0, 1)
    overlay.set_ylim(0, 1)
    overlay.legend(frameon=False, fontsize=7)
    rdf = fig.add_subplot(grid[1, 1])
    for label, g in rdf_curves.items():
      rdf.plot(rdf_r, g, label=label, lw=1.3)
    rdf.set_xlabel('r (Angstrom)')
    rdf.set_ylabel('g(r)')
    rdf.legend(frameon=False, fontsize=7)
    table = fig.add_subplot(grid[1, 2])
    table.axis('off')
    rows = [[name, f'{value:.4g}' if isinstance(value, (int, float)) else str(value)]
            for name, value in metrics.items()]
    if rows:
      t = table.table(cellText=rows, colLabels=['metric', 'value'], loc='center')
      t.auto_set_font_size(False)
      t.set_fontsize(8)
      t.scale(1.0, 1.3)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_batch_analysis(summary: Mapping[str, np.ndarray],
                        structures: Sequence[ase.Atoms], path,
                        title: str = 'Batch analysis', examples: int = 8) -> 'Path':
  """Histograms of density, volume, minimum distance and mean coordination;
  two correlation panels; a validity pie (with the reasons grouped); a grid of
  example structures. `summary` holds `validation.summary_arrays` fields."""
  valid = np.asarray(summary['valid'], bool)
  with matplotlib.rc_context(STYLE):
    fig = new_figure(figsize=(14, 10))
    grid = fig.add_gridspec(3, 4, hspace=0.45, wspace=0.35)
    quantities = (('density', 'density (g/cm^3)'), ('volume', 'volume (A^3)'),
                  ('min_distance', 'min distance (A)'),
                  ('mean_coordination', 'mean coordination'))
    for col, (key, label) in enumerate(quantities):
      ax = fig.add_subplot(grid[0, col])
      v = np.asarray(summary[key], float)
      for mask, color, name in ((valid, 'tab:blue', 'valid'),
                                (~valid, 'tab:red', 'invalid')):
        w = v[mask & np.isfinite(v)]
        if len(w):
          ax.hist(w, bins=20, alpha=0.7, color=color, label=name)
      ax.set_xlabel(label)
      if col == 0:
        ax.set_ylabel('structures')
        ax.legend(frameon=False, fontsize=7)
    pairs = ((('volume_per_atom', 'volume per atom (A^3)'), ('density', 'density (g/cm^3)')),
             (('min_distance', 'min distance (A)'), ('mean_coordination', 'mean coordination')))
    for col, ((kx, lx), (ky, ly)) in enumerate(pairs):
      ax = fig.add_subplot(grid[1, col])
      x, y = np.asarray(summary[kx], float), np.asarray(summary[ky], float)
      ax.scatter(x[valid], y[valid], s=8, color='tab:blue', alpha=0.6)
      ax.scatter(x[~valid], y[~valid], s=8, color='tab:red', alpha=0.6)
      ok = np.isfinite(x) & np.isfinite(y)
      if ok.sum() > 2 and np.std(x[ok]) > 0 and np.std(y[ok]) > 0:
        ax.set_title(f'Pearson r = {np.corrcoef(x[ok], y[ok])[0, 1]:.2f}', fontsize=8)
      ax.set_xlabel(lx)
      ax.set_ylabel(ly)
    pie = fig.add_subplot(grid[1, 2])
    reasons = {}
    for r in np.asarray(summary['reason'], str):
      key = 'valid' if not r else r.split(':')[0]
      reasons[key] = reasons.get(key, 0) + 1
    pie.pie(list(reasons.values()), labels=list(reasons), autopct='%1.0f%%',
            textprops={'fontsize': 7})
    pie.set_title(f'validity ({valid.mean():.0%} valid)', fontsize=9)
    sg = fig.add_subplot(grid[1, 3])
    groups = np.asarray(summary.get('space_group_symbol', []), str)
    names, counts = np.unique(groups[groups != ''], return_counts=True)
    order = np.argsort(-counts)[:8]
    sg.barh([names[i] for i in order][::-1], counts[order][::-1], color='tab:purple')
    sg.set_xlabel('structures')
    sg.set_title('space groups (spglib, 0.1 A)', fontsize=9)
    count = min(examples, len(structures), 4)
    for i in range(count):
      ax = fig.add_subplot(grid[2, i], projection='3d')
      status = 'valid' if valid[i] else 'invalid'
      draw_structure(ax, structures[i], f'{structures[i].get_chemical_formula()} '
                     f'({status})')
    fig.suptitle(title)
    return save_figure(fig, path)


