"""Noise schedules as data: x_t = alpha_t * x0 + sigma_t * eps, plus prediction conversions.

Two formulations share one interface:

- ``vp``: discrete DDPM time index t in {0, ..., T-1} with alpha_t = sqrt(abar_t),
  sigma_t = sqrt(1 - abar_t); the index -1 stands for clean data (alpha=1, sigma=0).
- ``flow``: rectified flow, continuous t in [0, 1], alpha_t = 1 - t, sigma_t = t.

Every sampler only needs (alpha, sigma) on a time grid, so any schedule written this way works
with all of them. All schedule math is float64 on the CPU; callers cast the few numbers they need.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

FORMULATIONS = ("vp", "flow")
SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("x0", "eps", "v")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


def linear_betas(timesteps: int) -> Tensor:
    """Ho et al.'s linear betas (1e-4..0.02 at T=1000), rescaled by 1000/T.

    The rescaling (the improved-DDPM convention, used by the diffusion code ProtoDiff builds on)
    keeps the terminal signal level independent of T: with T=100 the unscaled range would stop at
    abar_T ~ 0.36, far from the N(0, I) that sampling starts from.
    """
    scale = 1000.0 / timesteps
    betas = torch.linspace(1e-4 * scale, 0.02 * scale, timesteps, dtype=torch.float64)
    return betas.clamp(max=0.999)


def cosine_betas(timesteps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal's cosine schedule, betas clipped at 0.999 as in their paper."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A noise path; ``alpha_bar`` is the VP table [T] (None for flow)."""

    formulation: str
    timesteps: int
    alpha_bar: Tensor | None = None

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) for a tensor of times, float64 on t's device."""
        t = t.to(torch.float64)
        if self.formulation == "flow":
            return 1 - t, t
        table = torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar]).to(t.device)
        abar = table[t.round().long() + 1]
        return abar.sqrt(), (1 - abar).sqrt()

    def model_time(self, t: Tensor) -> Tensor:
        """Time fed to the network, in [0, 1] (1 = pure noise) for both formulations."""
        t = t.to(torch.float64)
        return t if self.formulation == "flow" else (t + 1) / self.timesteps

    def sample_t(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Training times: uniform indices for vp, uniform on [0, 1) for flow."""
        gen_device = generator.device if generator is not None else device
        if self.formulation == "flow":
            t = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
        else:
            t = torch.randint(0, self.timesteps, (n,), generator=generator, device=gen_device)
        return t.to(device=device, dtype=torch.float64)

    def v_coefs(self, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(a, b) with v = a * x0 + b * eps.

        v is dx_t/d(natural time): the flow velocity eps - x0 for ``flow`` and Salimans & Ho's
        angular velocity alpha * eps - sigma * x0 for ``vp``.
        """
        if self.formulation == "flow":
            return -torch.ones_like(alpha), torch.ones_like(alpha)
        return -sigma, alpha


def make_schedule(
    formulation: str = "vp", schedule: str = "linear", timesteps: int = 100
) -> Schedule:
    """Build a schedule; ``schedule`` picks the VP betas and is ignored for ``flow``."""
    _check("formulation", formulation, FORMULATIONS)
    _check("schedule", schedule, SCHEDULES)
    if timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1, got {timesteps}.")
    if formulation == "flow":
        return Schedule("flow", timesteps)
    betas = linear_betas(timesteps) if schedule == "linear" else cosine_betas(timesteps)
    return Schedule("vp", timesteps, torch.cumprod(1 - betas, 0))


class TimeGrid(NamedTuple):
    """S+1 decreasing times from pure noise to clean data, with their alpha and sigma (float64)."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor


def check_steps(
    formulation: str, timesteps: int, steps: int, key: Callable[[str], str] = str.lower
) -> None:
    """Refuse more sampling steps than a vp schedule has timesteps; `key` names an option
    ("STEPS") in the message, e.g. as the caller's config key."""
    if formulation == "vp" and steps > timesteps:
        raise ValueError(
            f"{key('STEPS')} {steps} exceeds {key('TIMESTEPS')} {timesteps}; a vp schedule has at "
            f"most TIMESTEPS sampling steps."
        )


def time_grid(schedule: Schedule, steps: int) -> TimeGrid:
    """Grid for ``steps`` ODE steps; the last point is clean data (sigma = 0).

    VP uses "trailing" spacing: t_i = round(T - i T / S) - 1, so every grid starts at the noisiest
    step T-1 and S = T visits every index. Flow uses t_i = 1 - i / S.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
    check_steps(schedule.formulation, schedule.timesteps, steps)
    if schedule.formulation == "flow":
        t = 1 - torch.arange(steps + 1, dtype=torch.float64) / steps
    else:
        T = schedule.timesteps
        i = torch.arange(steps + 1, dtype=torch.float64)
        t = torch.round(T - i * T / steps) - 1
    alpha, sigma = schedule.alpha_sigma(t)
    return TimeGrid(t, alpha, sigma)


def prediction_coefs(
    schedule: Schedule, prediction: str, alpha: Tensor, sigma: Tensor
) -> tuple[Tensor, Tensor]:
    """(a, b) with prediction = a * x0 + b * eps."""
    _check("prediction", prediction, PREDICTIONS)
    if prediction == "x0":
        return torch.ones_like(alpha), torch.zeros_like(alpha)
    if prediction == "eps":
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    return schedule.v_coefs(alpha, sigma)


def prediction_target(
    schedule: Schedule, prediction: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor
) -> Tensor:
    """The quantity the network regresses onto for this prediction type."""
    a, b = prediction_coefs(schedule, prediction, alpha, sigma)
    return a.to(x0.dtype) * x0 + b.to(x0.dtype) * eps


def x0_from_prediction(
    schedule: Schedule, prediction: str, pred: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor
) -> Tensor:
    """Invert pred = a x0 + b eps and x_t = alpha x0 + sigma eps for x0.

    x0 = (sigma * pred - b * x_t) / (sigma * a - b * alpha); for eps this is (x_t - sigma eps) / alpha,
    which amplifies errors where alpha ~ 0 (prefer x0 or v prediction there).
    """
    if prediction == "x0":
        return pred
    a, b = prediction_coefs(schedule, prediction, alpha, sigma)
    denom = sigma * a - b * alpha
    dt = pred.dtype
    return (sigma.to(dt) * pred - b.to(dt) * x_t) / denom.to(dt)
