"""Figures (matplotlib, PNG, one function per figure, one style).

Every function takes data and an output path, writes the PNG atomically and
returns the path. Figures are `matplotlib.figure.Figure` objects rendered
straight to PNG, never through pyplot: importing the library leaves the
matplotlib backend of a notebook or script as it was, and no display is needed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from jaxcrystal.data import io as io_lib

STYLE = {
    'figure.dpi': 110, 'axes.grid': True, 'grid.alpha': 0.3,
    'axes.spines.top': False, 'axes.spines.right': False, 'font.size': 10,
}


def new_figure(**kwargs) -> Figure:
  """A figure that belongs to no pyplot window (garbage-collected when done)."""
  return Figure(**kwargs)


def save_figure(fig: Figure, path) -> Path:
  path = Path(path)
  with io_lib.atomic_path(path) as tmp:
    fig.savefig(tmp, format='png', bbox_inches='tight')
  return path


def plot_rdf(r: np.ndarray, curves: Mapping[str, np.ndarray], path,
             title: str = 'Radial distribution function') -> Path:
  """g(r) curves on one axis. `r: [B]` Angstrom, each curve `[B]`."""
  with matplotlib.rc_context(STYLE):
    fig = new_figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for label, g in curves.items():
      ax.plot(r, g, label=label, lw=1.5)
    ax.set_xlabel('r (Angstrom)')
    ax.set_ylabel('g(r)')
    ax.set_title(title)
    ax.legend(frameon=False)
    return save_figure(fig, path)


def plot_histograms(values: Mapping[str, Sequence[float]], path,
                    title: str = '') -> Path:
  """One histogram panel per named quantity (e.g. density, min distance)."""
  with matplotlib.rc_context(STYLE):
    n = len(values)
    fig = new_figure(figsize=(3.2 * n, 3))
    axes = fig.subplots(1, n, squeeze=False)
    for ax, (label, v) in zip(axes[0], values.items()):
      v = np.asarray(v, float)
      ax.hist(v[np.isfinite(v)], bins=20, color='tab:blue', alpha=0.8)
      ax.set_xlabel(label)
    axes[0][0].set_ylabel('count')
    if title:
      fig.suptitle(title)
    return save_figure(fig, path)


def plot_training_curve(records: Sequence[dict], path,
                        keys: Sequence[str] = ('loss', 'lattice', 'coords', 'types')
                        ) -> Path:
  """Train and validation losses against step, log scale.

  `records` are metrics.jsonl rows: dicts with `step`, `split` and losses.
  """
  with matplotlib.rc_context(STYLE):
    fig = new_figure(figsize=(6.5, 4))
    ax = fig.subplots()
    colors = dict(zip(keys, ['k', 'tab:blue', 'tab:orange', 'tab:green']))
    for split, style in (('train', '-'), ('val', 'o--')):
      rows = [r for r in records if r.get('split') == split]
      for key in keys:
        pts = [(r['step'], r[key]) for r in rows  # null: a non-finite value
               if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
               and r[key] > 0]
        if pts:
          s, v = zip(*pts)
          ax.plot(s, v, style, color=colors[key], lw=1.2, ms=3,
                  label=f'{split} {key}', alpha=0.9 if split == 'val' else 0.7)
    ax.set_yscale('log')
    ax.set_xlabel('step')
    ax.set_ylabel('loss')
    ax.set_title('Training curve')
    if ax.get_legend_handles_labels()[0]:
      ax.legend(frameon=False, fontsize=8, ncol=2)
    return save_figure(fig, path)


def plot_monitor_curve(records: Sequence[dict], path,
                       keys: Sequence[str] | None = None) -> Path | None:
  """The sample-quality monitor's rates against step (metrics.jsonl rows of
  split 'monitor'; fractions shown in %). `keys` default: every rate the
  rows hold among validity, coverage, match rate and the quality score.
  Returns None if no row is a monitor row."""
  rows = [r for r in records if r.get('split') == 'monitor']
  if not rows:
    return None
  rates = ('quality', 'struct_validity', 'comp_validity', 'cov_recall',
           'cov_precision', 'match_rate')
  keys = [k for k in (keys or rates) if any(isinstance(r.get(k), (int, float)) for r in rows)]
  curves = {}
  for key in keys:
    pts = [(r['step'], 100.0 * r[key]) for r in rows
           if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if pts:
      curves[key] = tuple(zip(*pts))
  return plot_curve(None, curves, path, xlabel='step', ylabel='%', markers=True,
                    title='Sample quality during training')


def plot_curve(x: Sequence[float] | None, curves: Mapping[str, Sequence[float]],
               path, *, xlabel: str, ylabel: str, title: str = '',
               log_x: bool = False, log_y: bool = False, markers: bool = False,
               hlines: Mapping[str, float] | None = None) -> Path:
  """Named y(x) curves on one axis (e.g. RMSD per healing step, time
  against atom count on log-log axes). With `x=None` each curve is its own
  `(x, y)` pair. `hlines`: labelled horizontal reference lines."""
  with matplotlib.rc_context(STYLE):
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    for label, y in curves.items():
      cx, cy = (x, y) if x is not None else y
      ax.plot(cx, cy, 'o-' if markers else '-', label=label, lw=1.5, ms=4)
    for label, value in (hlines or {}).items():
      ax.axhline(value, ls='--', lw=1, color='grey')
      ax.annotate(label, (0.01, value), xycoords=('axes fraction', 'data'),
                  va='bottom', fontsize=8, color='grey')
    if log_x:
      ax.set_xscale('log')
    if log_y:
      ax.set_yscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
      ax.set_title(title)
    ax.legend(frameon=False)
    return save_figure(fig, path)


def plot_shares(categories: Sequence[str], shares: Mapping[str, Sequence[float]],
                path, title: str = '', xlabel: str = 'share (%)') -> Path:
  """Grouped horizontal bars: for each category (top to bottom) one bar per
  named set of `shares` (fractions in [0, 1], one per category)."""
  with matplotlib.rc_context(STYLE):
    n, k = len(categories), max(len(shares), 1)
    fig = new_figure(figsize=(6, 0.35 * n * k + 1.2))
    ax = fig.subplots()
    height = 0.8 / k
    y = np.arange(n)[::-1]
    for j, (label, values) in enumerate(shares.items()):
      ax.barh(y + (k - 1 - 2 * j) * height / 2, 100 * np.asarray(values, float),
              height=height, label=label)
    ax.set_yticks(y)
    ax.set_yticklabels(categories)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return save_figure(fig, path)


def plot_histograms_overlaid(values: Mapping[str, Sequence[float]], path,
                             xlabel: str = '', title: str = '', bins: int = 30) -> Path:
  """Step histograms of several named sets on one axis (shared bins; finite
  values only)."""
  finite = {k: np.asarray(v, float)[np.isfinite(np.asarray(v, float))]
            for k, v in values.items()}
  pooled = np.concatenate([v for v in finite.values()] + [np.zeros(0)])
  edges = np.histogram_bin_edges(pooled if pooled.size else [0.0, 1.0], bins)
  with matplotlib.rc_context(STYLE):
    fig = new_figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for label, v in finite.items():
      ax.hist(v, bins=edges, histtype='step', lw=1.6, label=f'{label} ({v.size})')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('structures')
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return save_figure(fig, path)
