"""Reverse-time steps of score processes, written once against their
declared interface (`processes.ScoreProcess`): every score sampler
(`sampling.py`'s predictor-corrector, `ddim.py`) composes these, so a new
sampler is one file and touches no process.

A score process declares its noise `family` and gives the samplers what
they need: `schedule`, `to_chart`/`from_chart` (the space its noise is
Gaussian in, e.g. Angstrom for Cartesian positions; `from_chart` also
places the result: wrapping, padding kept) and, for 've', `score`:

  'vp'  DDPM noise x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps; the network
        predicts eps (`schedule`: `schedules.BetaSchedule`).
  've'  variance-exploding noise x_t = x_0 + sigma_t eps; `score(out, t,
        template)` is the network's output as the score in the chart
        (`schedule`: `schedules.SigmaSchedule`).

`t`, `t_prev` are scalar integer steps (the discrete grid); rows of a
variable all share them. A jump process (`discrete.py`, categorical) has no
noise family: `predict` takes its `jump`; it has no corrector.
"""
from __future__ import annotations

from jaxcrystal.generative import processes
from jaxcrystal.generative import updates

FAMILIES = ('vp', 've')


def check(model) -> None:
  """Every process of `model` has what these steps read: a score process
  of a known family, with `score` if 've'. Raises ValueError naming it."""
  for name, p in model.processes.items():
    if getattr(p, 'kind', '') == 'jump':
      continue
    if getattr(p, 'kind', '') != 'score' or p.family not in FAMILIES:
      raise ValueError(f'score samplers run score processes (family one of '
                       f'{FAMILIES}); {name!r} is {type(p).__name__}')
    if p.family == 've' and not callable(getattr(p, 'score', None)):
      raise ValueError(f'{name!r} ({type(p).__name__}) is a ve process without '
                       '`score(out, t, template)`')


def _rows(p, t, template):
  return processes.rows(t, template, p.per)


def predict(p, rng, x, out, t, t_prev, template, strided: bool = False):
  """The ancestral (predictor) step from t to t_prev. `strided`: the grid
  skips steps, so DDPM's one-step posterior becomes DDIM's with eta = 1
  (on the full grid the two agree; the full grid keeps DDPM's form, bit for
  bit what it always was). A jump process takes its own reverse step."""
  if p.kind == 'jump':
    return p.jump(rng, x, out, t, t_prev, template)
  if p.family == 'vp':
    if strided:
      return updates.ddim_step(rng, x, out, _rows(p, t, template),
                               _rows(p, t_prev, template), p.schedule, 1.0)[0]
    return updates.ddpm_predictor(rng, x, out, _rows(p, t, template), p.schedule)[0]
  y = p.to_chart(x, template)
  y, _ = updates.ve_predictor(rng, y, p.score(out, t, template), p.schedule.sigmas[t],
                              p.schedule.sigmas[t_prev])
  return p.from_chart(y, template)


def correct(p, rng, x, out, t, is_last, template, step_lr: float):
  """One Langevin corrector step at t (DiffCSP's step size, no noise at the
  last step) of a process that `corrects`."""
  score = p.score(out, t, template)
  y, _ = updates.langevin_corrector(
      rng, p.to_chart(x, template), score, p.schedule.sigmas[t], p.schedule.sigmas[1],
      step_lr, (~is_last).astype(score.dtype))
  return p.from_chart(y, template)


def corrects(p) -> bool:
  """Whether `correct` changes this process's state."""
  return getattr(p, 'family', '') == 've'


def deterministic(p, x, out, t, t_prev, template):
  """The noise-free step from t to any t_prev < t (DDIM)."""
  if p.family == 'vp':
    return updates.ddim_step(None, x, out, _rows(p, t, template),
                             _rows(p, t_prev, template), p.schedule, 0.0)[1]
  y = p.to_chart(x, template)
  y = updates.ve_ddim_step(y, p.score(out, t, template), p.schedule.sigmas[t],
                           p.schedule.sigmas[t_prev])
  return p.from_chart(y, template)
