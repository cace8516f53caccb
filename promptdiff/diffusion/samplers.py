"""Deterministic samplers for the probability-flow ODE of any (alpha_t, sigma_t) path.

Each sampler is a pure function ``sampler(model_fn, x, grid, cond) -> x_clean`` where
``model_fn(x, t, cond)`` returns the data (x0) prediction at grid time ``t`` (a float) and ``grid``
is a :class:`TimeGrid` (S+1 points, last one clean). ``x`` starts at grid point 0.

Euler and Heun integrate the ODE in its rectified-flow form: with z = x / (alpha + sigma) and
tau = sigma / (alpha + sigma), every path becomes z = (1 - tau) x0 + tau eps and the ODE is
dz/dtau = (z - x0_hat) / tau. That form is finite at pure noise (tau = 1, also for flow's alpha = 0).
Euler in it is algebraically identical to DDIM (DDIM is Euler in any time variable in which x_t is
affine), so the two differ only by rounding. DPM-Solver++(2M) is Lu et al.'s multistep
data-prediction solver in lambda = log(alpha / sigma); it falls back to first order (= DDIM) on the
first step, after a step from lambda = -inf, and on the final step to sigma = 0.
``x0_refeed`` is not an ODE solver: it feeds each x0 estimate back as the next input (the loop of
ProtoDiff's public code), kept as an ablation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from promptdiff.diffusion.schedules import TimeGrid

ModelFn = Callable[[Tensor, float, Tensor], Tensor]


def _points(grid: TimeGrid):
    """Per-step python floats (t, alpha, sigma, alpha_next, sigma_next)."""
    t, a, s = grid.t.tolist(), grid.alpha.tolist(), grid.sigma.tolist()
    return [(t[i], a[i], s[i], a[i + 1], s[i + 1]) for i in range(len(t) - 1)]


def ddim(model_fn: ModelFn, x: Tensor, grid: TimeGrid, cond: Tensor) -> Tensor:
    """DDIM with eta = 0: x_next = alpha_next x0_hat + sigma_next eps_hat."""
    for t, a, s, a_n, s_n in _points(grid):
        x0 = model_fn(x, t, cond)
        x = a_n * x0 + s_n * (x - a * x0) / s
    return x


def _flow_derivative(model_fn: ModelFn, z: Tensor, t: float, a: float, s: float, cond: Tensor):
    tau = s / (a + s)
    return (z - model_fn(z * (a + s), t, cond)) / tau


def euler(model_fn: ModelFn, x: Tensor, grid: TimeGrid, cond: Tensor) -> Tensor:
    """Euler steps in (z, tau); equals DDIM up to rounding."""
    for t, a, s, a_n, s_n in _points(grid):
        z = x / (a + s)
        dtau = s_n / (a_n + s_n) - s / (a + s)
        z = z + dtau * _flow_derivative(model_fn, z, t, a, s, cond)
        x = z * (a_n + s_n)
    return x


def heun(model_fn: ModelFn, x: Tensor, grid: TimeGrid, cond: Tensor) -> Tensor:
    """Heun (trapezoidal predictor-corrector) in (z, tau); Euler on the final step to tau = 0.

    Uses 2S - 1 model calls for S steps.
    """
    t_next = grid.t.tolist()[1:]
    for (t, a, s, a_n, s_n), t_n in zip(_points(grid), t_next):
        z = x / (a + s)
        dtau = s_n / (a_n + s_n) - s / (a + s)
        d = _flow_derivative(model_fn, z, t, a, s, cond)
        z_pred = z + dtau * d
        if s_n > 0:
            d_n = _flow_derivative(model_fn, z_pred, t_n, a_n, s_n, cond)
            z_pred = z + dtau * (d + d_n) / 2
        x = z_pred * (a_n + s_n)
    return x


def _lam(a: float, s: float) -> float:
    if a == 0:
        return -math.inf
    return math.inf if s == 0 else math.log(a / s)


def dpmpp_2m(model_fn: ModelFn, x: Tensor, grid: TimeGrid, cond: Tensor) -> Tensor:
    """DPM-Solver++(2M): x_next = (s_n/s) x + a_n (1 - e^-h) D, D extrapolating x0_hat in lambda."""
    x0_prev, h_prev = None, math.inf
    for t, a, s, a_n, s_n in _points(grid):
        x0 = model_fn(x, t, cond)
        h = _lam(a_n, s_n) - _lam(a, s)
        if x0_prev is None or s_n == 0 or math.isinf(h_prev):
            d = x0
        else:
            r = h_prev / h
            d = x0 + (x0 - x0_prev) / (2 * r)
        x = (s_n / s) * x + a_n * (1 - math.exp(-h)) * d
        x0_prev, h_prev = x0, h
    return x


def x0_refeed(model_fn: ModelFn, x: Tensor, grid: TimeGrid, cond: Tensor) -> Tensor:
    """x0 feedback: x_{i+1} = x0_hat(x_i, t_i), the next input evaluated at grid time t_{i+1}.

    Starts from the noise x_0 at t_0; no noise is re-added (alpha and sigma are unused), and the
    estimate at the last noisy grid point t_{S-1} is returned. One step equals DDIM's one step.
    """
    for t, *_ in _points(grid):
        x = model_fn(x, t, cond)
    return x


SAMPLERS: dict[str, Callable[[ModelFn, Tensor, TimeGrid, Tensor], Tensor]] = {
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "x0_refeed": x0_refeed,
}


def get_sampler(name: str) -> Callable[[ModelFn, Tensor, TimeGrid, Tensor], Tensor]:
    """Look a sampler up by name."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {name!r}.")
    return SAMPLERS[name]
