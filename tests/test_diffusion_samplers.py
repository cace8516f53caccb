"""Schedules and ODE samplers against closed forms: Gaussian data has an exact denoiser and flow."""

from __future__ import annotations

import math

import pytest
import torch

from promptdiff.diffusion import (
    SAMPLERS,
    get_sampler,
    make_schedule,
    prediction_target,
    time_grid,
    x0_from_prediction,
)

PATHS = [("vp", "linear"), ("vp", "cosine"), ("flow", "linear")]
# x0_refeed feeds estimates back without re-noising: it does not integrate the ODE
ODE_SAMPLERS = sorted(set(SAMPLERS) - {"x0_refeed"})


def gaussian_problem(formulation: str, schedule: str, dim: int = 32, n: int = 128):
    """x0 ~ N(mu, diag(s^2)): returns (schedule, exact E[x0 | x_t] model_fn, noise, exact_solution)."""
    sched = make_schedule(formulation, schedule, 100)
    g = torch.Generator().manual_seed(0)
    mu = 2 * torch.randn(dim, generator=g, dtype=torch.float64)
    s = torch.linspace(0.1, 2.0, dim, dtype=torch.float64)

    def model_fn(x, t, cond):
        alpha, sigma = (v.item() for v in sched.alpha_sigma(torch.tensor([t])))
        return mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x - alpha * mu)

    def exact(x_start, grid):
        # the standardised value (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2) is conserved
        alpha, sigma = grid.alpha[0].item(), grid.sigma[0].item()
        return mu + s * (x_start - alpha * mu) / torch.sqrt(alpha**2 * s**2 + sigma**2)

    noise = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return sched, model_fn, noise, exact


def rms_error(formulation, schedule, sampler, steps):
    sched, model_fn, noise, exact = gaussian_problem(formulation, schedule)
    grid = time_grid(sched, steps)
    out = get_sampler(sampler)(model_fn, noise, grid, None)
    return (out - exact(noise, grid)).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("sampler", ODE_SAMPLERS)
@pytest.mark.parametrize(("formulation", "schedule"), PATHS)
def test_error_to_exact_flow_falls_with_steps(formulation, schedule, sampler):
    errors = [rms_error(formulation, schedule, sampler, s) for s in (2, 5, 10, 50)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 * errors[0], errors


@pytest.mark.parametrize(("formulation", "schedule"), PATHS)
@pytest.mark.parametrize("steps", [5, 10])
def test_second_order_samplers_beat_euler(formulation, schedule, steps):
    euler = rms_error(formulation, schedule, "euler", steps)
    assert rms_error(formulation, schedule, "heun", steps) < 0.8 * euler
    assert rms_error(formulation, schedule, "dpmpp_2m", steps) < 0.8 * euler


@pytest.mark.parametrize(("formulation", "schedule"), [("vp", "cosine"), ("flow", "linear")])
def test_convergence_order(formulation, schedule):
    """Doubling S divides the error by ~2 for Euler and by clearly more for the 2nd-order ones
    (not ~4: their first and last steps are first order)."""

    def ratio(sampler):
        return rms_error(formulation, schedule, sampler, 20) / rms_error(
            formulation, schedule, sampler, 40
        )

    assert 1.7 < ratio("euler") < 2.2
    assert ratio("heun") > 2.6
    assert ratio("dpmpp_2m") > 2.6


@pytest.mark.parametrize(("formulation", "schedule"), PATHS)
def test_euler_is_ddim(formulation, schedule):
    sched, model_fn, noise, _ = gaussian_problem(formulation, schedule)
    grid = time_grid(sched, 7)
    a = SAMPLERS["euler"](model_fn, noise, grid, None)
    b = SAMPLERS["ddim"](model_fn, noise, grid, None)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize(("formulation", "schedule"), PATHS)
def test_one_step_returns_the_x0_prediction_at_pure_noise(formulation, schedule, sampler):
    sched, model_fn, noise, _ = gaussian_problem(formulation, schedule)
    grid = time_grid(sched, 1)
    out = get_sampler(sampler)(model_fn, noise, grid, None)
    torch.testing.assert_close(out, model_fn(noise, grid.t[0].item(), None))


@pytest.mark.parametrize("sampler", ODE_SAMPLERS)
@pytest.mark.parametrize("formulation", ["vp", "flow"])
def test_all_steps_is_accurate(formulation, sampler):
    assert rms_error(formulation, "linear", sampler, 100) < 0.025


def test_ddim_with_all_steps_is_the_full_ddim_chain():
    T = 100
    sched, model_fn, noise, _ = gaussian_problem("vp", "linear")
    betas = torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    x = noise
    for t in range(T - 1, -1, -1):
        x0 = model_fn(x, float(t), None)
        eps = (x - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt()
        prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        x = prev.sqrt() * x0 + (1 - prev).sqrt() * eps
    out = SAMPLERS["ddim"](model_fn, noise, time_grid(sched, T), None)
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("formulation", "schedule"), PATHS)
def test_x0_refeed_one_step_is_ddim_one_step(formulation, schedule):
    sched, model_fn, noise, _ = gaussian_problem(formulation, schedule)
    grid = time_grid(sched, 1)
    refeed = SAMPLERS["x0_refeed"](model_fn, noise, grid, None)
    assert torch.equal(refeed, SAMPLERS["ddim"](model_fn, noise, grid, None))


def test_x0_refeed_two_steps_by_hand():
    """f(x, t, c) = x / 2 + t c / 100 on the vp grid (99, 49, -1): x1 = f(n, 99) and the result
    f(x1, 49) = n / 4 + (0.99 / 2 + 0.49) c; DDIM re-noises in between and differs."""
    sched = make_schedule("vp", "linear", 100)
    grid = time_grid(sched, 2)
    assert grid.t.tolist() == [99, 49, -1]
    noise = torch.tensor([[1.0, -2.0, 4.0]], dtype=torch.float64)
    cond = torch.tensor([[0.5, 1.0, -1.0]], dtype=torch.float64)
    calls = []

    def model_fn(x, t, c):
        calls.append(t)
        return x / 2 + t * c / 100

    out = SAMPLERS["x0_refeed"](model_fn, noise, grid, cond)
    assert calls == [99.0, 49.0]
    torch.testing.assert_close(out, noise / 4 + 0.985 * cond, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(SAMPLERS["ddim"](model_fn, noise, grid, cond), out)


def test_time_grids():
    vp = time_grid(make_schedule("vp", "linear", 100), 5)
    assert vp.t.tolist() == [99, 79, 59, 39, 19, -1]
    assert vp.alpha[-1].item() == 1.0 and vp.sigma[-1].item() == 0.0
    assert time_grid(make_schedule("vp", "cosine", 100), 100).t.tolist() == list(range(99, -2, -1))
    flow = time_grid(make_schedule("flow", timesteps=100), 4)
    assert flow.t.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    torch.testing.assert_close(flow.alpha, 1 - flow.t)
    torch.testing.assert_close(flow.sigma, flow.t)
    assert len(time_grid(make_schedule("flow"), 150).t) == 151  # flow time is continuous
    sched = make_schedule("vp", "linear", 100)
    for steps in range(1, 101):
        t = time_grid(sched, steps).t
        assert t[0] == 99 and t[-1] == -1 and (t[1:] < t[:-1]).all(), steps


def test_schedules():
    lin = make_schedule("vp", "linear", 1000)
    betas = 1 - lin.alpha_bar / torch.cat([torch.ones(1, dtype=torch.float64), lin.alpha_bar[:-1]])
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    # rescaled to T=100 the chain still ends near pure noise
    assert make_schedule("vp", "linear", 100).alpha_bar[-1] < 1e-4
    cos = make_schedule("vp", "cosine", 100)
    f = [math.cos((k / 100 + 0.008) / 1.008 * math.pi / 2) ** 2 for k in range(101)]
    expected = torch.tensor([f[k + 1] / f[0] for k in range(99)], dtype=torch.float64)
    torch.testing.assert_close(cos.alpha_bar[:99], expected)
    t = torch.arange(-1, 100, dtype=torch.float64)
    alpha, sigma = cos.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    assert (alpha[1:] < alpha[:-1]).all()


@pytest.mark.parametrize("formulation", ["vp", "flow"])
@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_prediction_conversions_invert(formulation, prediction):
    sched = make_schedule(formulation, "cosine", 100)
    t = torch.tensor([0.0, 10.0, 50.0, 98.0]) if formulation == "vp" else torch.rand(4) * 0.9
    alpha, sigma = (v.view(-1, 1) for v in sched.alpha_sigma(t))
    x0, eps = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    target = prediction_target(sched, prediction, x0, eps, alpha, sigma)
    torch.testing.assert_close(x0_from_prediction(sched, prediction, target, x_t, alpha, sigma), x0)
    if prediction == "v":
        expected = eps - x0 if formulation == "flow" else alpha * eps - sigma * x0
        torch.testing.assert_close(target, expected)


def test_bad_names_and_steps_raise():
    with pytest.raises(ValueError, match="formulation"):
        make_schedule("ve")
    with pytest.raises(ValueError, match="schedule"):
        make_schedule("vp", "sigmoid")
    with pytest.raises(ValueError, match="sampler"):
        get_sampler("plms")
    with pytest.raises(ValueError, match="steps"):
        time_grid(make_schedule(), 0)
    with pytest.raises(ValueError, match="steps"):
        time_grid(make_schedule("vp", "linear", 100), 101)
    with pytest.raises(ValueError, match="prediction"):
        prediction_target(make_schedule(), "score", *[torch.zeros(1)] * 4)


def test_a_vp_grid_refuses_more_steps_than_timesteps_and_flow_takes_any():
    from promptdiff.diffusion import check_steps, make_schedule, time_grid

    with pytest.raises(ValueError, match="steps 11 exceeds timesteps 10"):
        time_grid(make_schedule("vp", "linear", 10), 11)
    assert len(time_grid(make_schedule("vp", "linear", 10), 10).t) == 11
    check_steps("flow", 10, 50)  # flow has no timestep grid to run out of
    with pytest.raises(ValueError, match="TRAINER.PD.STEPS 3 exceeds TRAINER.PD.TIMESTEPS 2"):
        check_steps("vp", 2, 3, "TRAINER.PD.{}".format)
