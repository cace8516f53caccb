"""PromptDiffusion facade: denoiser shapes, standardisation, EMA, checkpoints, toy training."""

from __future__ import annotations

import pytest
import torch

from promptdiff.diffusion import (
    PromptDenoiser,
    PromptDiffusion,
    RunningStandardizer,
    prompt_to_target,
    target_to_prompt,
    warmup_decay,
)

SHAPES = [(6,), (3, 6), (2, 3, 6)]
SMALL = {"depth": 2, "width": 32, "heads": 4}


def small_model(shape=(3, 6), cond_dim=5, **kw):
    torch.manual_seed(0)
    return PromptDiffusion(shape, cond_dim, **{**SMALL, **kw})


def train_steps(model, shape, cond_dim, steps, seed=0, lr=2e-3):
    """A few optimiser steps on random data (targets depend on cond) with EMA updates."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.denoiser.parameters(), lr=lr)
    for _ in range(steps):
        cond = torch.randn(16, cond_dim, generator=g)
        x0 = 2 + cond[:, :1].reshape(16, *[1] * len(shape)) * torch.ones(16, *shape)
        loss, _ = model.training_loss(x0, cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_ema()


@pytest.mark.parametrize("shape", SHAPES)
def test_denoiser_shapes_and_zero_head(shape):
    net = PromptDenoiser(shape, 5, **SMALL)
    x, u, cond = torch.randn(4, *shape), torch.rand(4), torch.randn(4, 5)
    out = net(x, u, cond)
    assert out.shape == (4, *shape)
    assert torch.count_nonzero(out) == 0
    n_tokens = 1 if len(shape) == 1 else shape[0] * (shape[1] if len(shape) == 3 else 1)
    assert net.pos.shape == (n_tokens + 2, 32)  # condition, time, one per prompt vector
    torch.nn.init.normal_(net.head.weight)
    out = net(x, u, cond)
    # every prompt token is read out, and each depends on the condition and the time
    assert (out.abs().sum(-1) > 0).all()
    assert not torch.allclose(out, net(x, u, torch.randn(4, 5)))
    assert not torch.allclose(out, net(x, torch.rand(4), cond))


@pytest.mark.parametrize("shape", SHAPES)
def test_untrained_x0_prediction_is_the_running_mean(shape):
    model = small_model(shape).train()
    x0 = 5 + 3 * torch.randn(8, *shape)
    cond = torch.randn(8, 5)
    loss, x0_hat = model.training_loss(x0, cond, generator=torch.Generator().manual_seed(0))
    assert loss.shape == () and x0_hat.shape == (8, *shape)
    torch.testing.assert_close(x0_hat, x0.mean(0).expand_as(x0))
    x0_hat.sum().backward()  # differentiable, so a caller can add a loss through it
    assert model.denoiser.head.weight.grad.abs().sum() > 0
    for sampler in ("ddim", "heun", "dpmpp_2m"):
        out = model.sample(cond, steps=3, sampler=sampler)
        torch.testing.assert_close(out, x0.mean(0).expand_as(x0))


def test_running_stats_cumulative_momentum_frozen():
    a, b = torch.randn(5, 3, 2) * 2 + 1, torch.randn(7, 3, 2) - 1
    stats = RunningStandardizer((3, 2))
    x = torch.randn(4, 3, 2)
    torch.testing.assert_close(stats.normalize(x), x)  # identity before any data
    stats.update(a)
    stats.update(b)
    full = torch.cat([a, b])
    torch.testing.assert_close(stats.mean, full.mean(0))
    torch.testing.assert_close(stats.var, full.var(0, unbiased=False))
    torch.testing.assert_close(stats.denormalize(stats.normalize(x)), x)
    assert int(stats.count) == 12

    ema = RunningStandardizer((3, 2), momentum=0.25)
    ema.update(a)
    ema.update(b)
    torch.testing.assert_close(ema.mean, 0.75 * a.mean(0) + 0.25 * b.mean(0))

    stats.frozen = True
    before = stats.mean.clone()
    stats.update(b * 10)
    torch.testing.assert_close(stats.mean, before)


def test_stats_update_only_in_training_mode_and_floor():
    model = small_model((4,))
    cond = torch.randn(6, 5)
    model.eval().training_loss(torch.randn(6, 4) + 3, cond)
    assert int(model.stats.count) == 0
    x0 = torch.randn(6, 4)
    x0[:, 0] = 7.0  # a constant element: its std is floored, not zero
    model.train().training_loss(x0, cond)
    assert int(model.stats.count) == 6
    assert torch.isfinite(model.stats.normalize(x0)).all()
    assert model.stats.std[0] > 0


def test_ema_decay_and_update():
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 10**6) == 0.999
    model = small_model((4,))
    p_ema = model.ema.head.bias
    with torch.no_grad():
        model.denoiser.head.bias.fill_(1.0)
    model.update_ema()  # decay 0.1 on the first update
    torch.testing.assert_close(p_ema, torch.full_like(p_ema, 0.9))
    model.update_ema()  # decay 2 / 11
    torch.testing.assert_close(p_ema, torch.full_like(p_ema, 0.9 + 0.1 * 9 / 11))
    assert not p_ema.requires_grad and int(model.ema_updates) == 2


def test_state_dict_round_trip_gives_identical_samples():
    shape = (2, 3, 6)
    model = small_model(shape)
    train_steps(model, shape, 5, steps=5)
    cond = torch.randn(4, 5)
    assert not torch.allclose(model.sample(cond, use_ema=True), model.sample(cond, use_ema=False))
    keys = model.state_dict().keys()
    assert {"stats.mean", "stats.var", "stats.count", "ema_updates"} <= set(keys)
    assert any(k.startswith("ema.") for k in keys)
    torch.manual_seed(123)
    fresh = PromptDiffusion(shape, 5, **SMALL)
    fresh.load_state_dict(model.state_dict())
    for use_ema in (True, False):
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        a = model.sample(cond, sampler="heun", generator=g1, use_ema=use_ema)
        b = fresh.sample(cond, sampler="heun", generator=g2, use_ema=use_ema)
        assert torch.equal(a, b)


def test_sampling_is_deterministic_and_leaves_mode_alone():
    model = small_model(dropout=0.5)
    train_steps(model, (3, 6), 5, steps=3)
    model.train()
    cond = torch.randn(4, 5)
    a = model.sample(cond, generator=torch.Generator().manual_seed(1), use_ema=False)
    b = model.sample(cond, generator=torch.Generator().manual_seed(1), use_ema=False)
    c = model.sample(cond, generator=torch.Generator().manual_seed(2), use_ema=False)
    assert torch.equal(a, b) and not torch.equal(a, c)  # dropout is off while sampling
    assert model.training and model.denoiser.training and not model.ema.training
    noise = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.sample(cond, noise=noise, use_ema=False), a)


def test_autocast_bf16_keeps_float32_outputs():
    model = small_model()
    train_steps(model, (3, 6), 5, steps=5)
    cond = torch.randn(4, 5)
    ref = model.sample(cond, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.sample(cond, generator=torch.Generator().manual_seed(0))
        loss, x0_hat = model.training_loss(torch.randn(4, 3, 6), cond)
    assert loss.dtype == x0_hat.dtype == out.dtype == torch.float32
    assert torch.isfinite(loss) and not torch.equal(out, ref)  # the denoiser did run in bf16
    assert (out - ref).norm() < 0.01 * ref.norm()


def test_residual_and_absolute_targets():
    base, prompts = torch.randn(3, 4), torch.randn(2, 3, 4)
    res = prompt_to_target(prompts, base)
    torch.testing.assert_close(res, prompts - base)
    torch.testing.assert_close(target_to_prompt(res, base), prompts)
    assert prompt_to_target(prompts, base, "absolute") is prompts
    with pytest.raises(ValueError, match="mode"):
        prompt_to_target(prompts, base, "relative")


def test_bad_arguments_raise():
    for kw, word in [
        ({"schedule": "quad"}, "schedule"),
        ({"formulation": "edm"}, "formulation"),
        ({"prediction": "score"}, "prediction"),
        ({"formulation": "flow", "prediction": "eps"}, "prediction"),
    ]:
        with pytest.raises(ValueError, match=word):
            PromptDiffusion((3, 6), 5, **SMALL, **kw)
    with pytest.raises(ValueError, match="prompt_shape"):
        PromptDiffusion((), 5, **SMALL)
    with pytest.raises(ValueError, match="heads"):
        PromptDiffusion((3, 6), 5, depth=1, width=30, heads=4)
    model = small_model()
    cond = torch.randn(2, 5)
    with pytest.raises(ValueError, match="x0"):
        model.training_loss(torch.randn(2, 6, 3), cond)
    with pytest.raises(ValueError, match="cond"):
        model.training_loss(torch.randn(2, 3, 6), torch.randn(2, 4))
    with pytest.raises(ValueError, match="sampler"):
        model.sample(cond, sampler="plms")
    with pytest.raises(ValueError, match="steps"):
        model.sample(cond, steps=0)
    with pytest.raises(ValueError, match="noise"):
        model.sample(cond, noise=torch.randn(3, 3, 6))
    with pytest.raises(ValueError, match="use_ema"):
        small_model(use_ema=False).sample(cond, use_ema=True)


@pytest.mark.parametrize(
    ("formulation", "prediction", "schedule", "sampler"),
    [
        ("vp", "x0", "linear", "ddim"),
        ("vp", "v", "cosine", "dpmpp_2m"),
        ("flow", "x0", "linear", "heun"),
        ("flow", "v", "linear", "ddim"),
    ],
)
def test_toy_conditional_problem_is_learned(formulation, prediction, schedule, sampler):
    """Targets are a fixed affine map of the condition; sampled prompts must find them."""
    torch.manual_seed(0)
    shape, cond_dim = (2, 4), 8
    weight = torch.randn(cond_dim, 8) / cond_dim**0.5

    def targets(cond):
        return (3 + 2 * cond @ weight).reshape(-1, *shape)

    model = PromptDiffusion(
        shape, cond_dim, formulation=formulation, prediction=prediction, schedule=schedule,
        depth=2, width=64, heads=4,
    )  # fmt: skip
    opt = torch.optim.Adam(model.denoiser.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        cond = torch.randn(64, cond_dim, generator=g)
        loss, _ = model.training_loss(targets(cond), cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_ema()
    cond = torch.randn(256, cond_dim, generator=g)
    y = targets(cond)
    out = model.eval().sample(cond, steps=5, sampler=sampler, generator=g)
    baseline = (y - model.stats.mean).pow(2).mean()
    assert (out - y).pow(2).mean() < 0.1 * baseline


def test_start_estimate_is_the_one_step_sample_and_carries_gradients():
    from promptdiff.diffusion import PromptDiffusion

    torch.manual_seed(0)
    for formulation, prediction in (("vp", "x0"), ("vp", "eps"), ("flow", "v")):
        model = PromptDiffusion((3, 4), 5, formulation=formulation, prediction=prediction,
                                depth=1, width=16, heads=2, use_ema=False)  # fmt: skip
        with torch.no_grad():
            for p in model.denoiser.parameters():
                p.normal_(0, 0.3)  # the zero-initialised head would make every estimate 0
        model.stats.update(torch.randn(64, 3, 4) * 2 + 1)
        cond, noise = torch.randn(6, 5), torch.randn(6, 3, 4)
        estimate = model.start_estimate(cond, noise=noise)
        sampled = model.sample(cond, steps=1, noise=noise)
        assert torch.allclose(estimate, sampled, atol=1e-6), formulation
        assert estimate.abs().sum() > 0
        estimate.square().sum().backward()
        head = [p.grad for p in model.denoiser.parameters() if p.grad is not None]
        assert head and any(g.abs().sum() > 0 for g in head)
