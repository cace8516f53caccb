"""Modality-agnostic prompt diffusion: per-sample prompts [*S] generated from a condition [C].

Depends on torch only. The pieces, each usable alone:

- schedules: ``make_schedule(formulation='vp'|'flow', schedule='linear'|'cosine', timesteps)``
  gives a :class:`Schedule` (x_t = alpha_t x0 + sigma_t eps); ``time_grid(schedule, steps)`` the
  S+1-point grid a sampler walks; ``prediction_target`` / ``x0_from_prediction`` convert between
  x0, eps and v.
- samplers: ``ddim``, ``euler``, ``heun``, ``dpmpp_2m`` and the x0-feedback loop ``x0_refeed``
  (``SAMPLERS``, ``get_sampler``), pure functions ``(model_fn, x, grid, cond) -> x_clean`` with
  ``model_fn(x, t, cond) -> x0_hat``.
- :class:`PromptDenoiser`: transformer over [condition, time, prompt-vector] tokens with a
  zero-initialised output head.
- :class:`RunningStandardizer`: per-element running mean/std of the targets (buffers);
  ``prompt_to_target`` / ``target_to_prompt``: residual (p* - p) or absolute targets.
- :class:`ClassMeans`: per-class running mean residual mu_y and ``centre`` (r - mu_y, or r without
  its mu_y component); ``PromptDiffusion(class_centres=K)`` keeps one in its state_dict.
- :class:`PromptDiffusion`: the facade. ``training_loss(x0, cond) -> (loss, x0_hat)``,
  ``sample(cond, steps=5, sampler='ddim', generator=None, noise=None) -> prompts``,
  ``update_ema()``; its state_dict carries the standardisation stats and the EMA weights. Built
  with ``context=True`` both take ``context=`` [B, C], a second condition token (None: none).
- ``nearest_rows(cond, k, pool=None)`` / ``neighbour_context(cond, k, pool=None)``: each
  sample's k nearest neighbours (cosine) in its batch or in a pool, and their mean condition, a
  ``context`` for the above.
- ``fit_sums(pred, target, mean)`` / ``fit_figures(sums)``: R^2 and cosine of predicted targets,
  accumulated over batches.
- ``overfit_per_sample(loss_fn, base, batch_size, steps, lr, optimizer)``: B copies of a prompt,
  each over-fitted on its own loss with one batched backward pass per step.
"""

from promptdiff.diffusion.centering import CENTER_MODES, ClassMeans
from promptdiff.diffusion.context import nearest_rows, neighbour_context
from promptdiff.diffusion.denoiser import PromptDenoiser, timestep_embedding
from promptdiff.diffusion.ema import ema_update, warmup_decay
from promptdiff.diffusion.fit import fit_figures, fit_sums
from promptdiff.diffusion.model import PromptDiffusion, check_options
from promptdiff.diffusion.overfit import OPTIMIZERS, OverfitResult, overfit_per_sample
from promptdiff.diffusion.samplers import (
    SAMPLERS,
    ddim,
    dpmpp_2m,
    euler,
    get_sampler,
    heun,
    x0_refeed,
)
from promptdiff.diffusion.schedules import (
    FORMULATIONS,
    PREDICTIONS,
    SCHEDULES,
    Schedule,
    TimeGrid,
    check_steps,
    cosine_betas,
    linear_betas,
    make_schedule,
    prediction_target,
    time_grid,
    x0_from_prediction,
)
from promptdiff.diffusion.standardize import (
    TARGET_MODES,
    RunningStandardizer,
    prompt_to_target,
    target_to_prompt,
)

__all__ = [
    "CENTER_MODES",
    "ClassMeans",
    "FORMULATIONS",
    "OPTIMIZERS",
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULES",
    "TARGET_MODES",
    "OverfitResult",
    "PromptDenoiser",
    "PromptDiffusion",
    "RunningStandardizer",
    "Schedule",
    "TimeGrid",
    "check_options",
    "check_steps",
    "cosine_betas",
    "ddim",
    "dpmpp_2m",
    "ema_update",
    "euler",
    "fit_figures",
    "fit_sums",
    "get_sampler",
    "heun",
    "linear_betas",
    "make_schedule",
    "nearest_rows",
    "neighbour_context",
    "overfit_per_sample",
    "prediction_target",
    "prompt_to_target",
    "target_to_prompt",
    "time_grid",
    "timestep_embedding",
    "warmup_decay",
    "x0_from_prediction",
    "x0_refeed",
]
