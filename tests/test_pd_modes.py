"""Stage-2 over-fitting calibration and its warning, one stage-2 step against a plain
recomputation, and the TRAINER.PD.INFERENCE ablation modes."""

from __future__ import annotations

import copy
import os
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import train_args

from promptdiff.diffusion import overfit_per_sample, prompt_to_target, target_to_prompt
from promptdiff.engine.config import ConfigError
from train import build_parser, cli, setup_cfg

CFG = "CoOpDiff/vit_b16_ep50_ctxv1"
SMALL = (
    "TRAINER.PD.WIDTH 32 TRAINER.PD.DEPTH 1 TRAINER.PD.HEADS 2 OPTIM.WARMUP_EPOCH 0 "
    "TRAINER.PD.OVERFIT_STEPS 5".split()
)


def _args(root, weights, out, *opts):
    return train_args(root, str(out), "CoOpDiff", CFG, weights, *SMALL, *opts)


def _build(args):
    import promptdiff.datasets  # noqa: F401
    import promptdiff.trainers  # noqa: F401
    from promptdiff.host import build_trainer, set_random_seed

    cfg = setup_cfg(build_parser().parse_args(args))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def test_overfit_lr_auto_calibrates_until_samples_are_overfitted(
    shapes_root, tiny_weights, tmp_path
):
    trainer = _build(_args(shapes_root, tiny_weights, tmp_path, "TRAINER.PD.STAGE1_EPOCHS", "0"))
    assert trainer.cfg.TRAINER.PD.OVERFIT_LR == "auto" and trainer.diffusion.overfit_lr == 0
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    batch = next(iter(trainer.train_loader_x))
    out = trainer.forward_backward(batch)
    lr = trainer.diffusion.overfit_lr.item()
    assert lr > 0
    assert out["of_acc"] >= 90.0 and out["of_after"] < 0.5 * out["of_before"]
    # the chosen step size is kept (and saved with the denoiser): no second calibration
    trainer.forward_backward(batch)
    assert trainer.diffusion.overfit_lr.item() == lr
    assert "diffusion" in dir(trainer) and "overfit_lr" in trainer.diffusion.state_dict()


def test_weak_overfitting_warns_and_auto_does_not(shapes_root, tiny_weights, tmp_path):
    common = ("OPTIM.MAX_EPOCH", "2", "TRAINER.PD.STAGE1_EPOCHS", "1")
    weak = tmp_path / "weak"
    assert (
        cli(_args(shapes_root, tiny_weights, weak, *common, "TRAINER.PD.OVERFIT_LR", "1e-7")) == 0
    )
    log = (weak / "log.txt").read_text()
    line = re.search(r"Over-fitting in epoch 2/2: per-sample loss ([0-9.]+) -> ([0-9.]+)", log)
    assert line and float(line.group(2)) > 0.9 * float(line.group(1))
    assert "WARNING: stage-2 over-fitting is weak" in log and "TRAINER.PD.OVERFIT_STEPS" in log

    auto = tmp_path / "auto"
    assert cli(_args(shapes_root, tiny_weights, auto, *common)) == 0
    log = (auto / "log.txt").read_text()
    assert "Over-fitting step size: TRAINER.PD.OVERFIT_LR = " in log
    acc = re.search(r"Over-fitting in epoch 2/2: .* per-sample accuracy ([0-9.]+)%", log)
    assert acc and float(acc.group(1)) >= 90.0
    assert "over-fitting is weak" not in log


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("TRAINER.PD.OVERFIT_LR", "fast", "TRAINER.PD.OVERFIT_LR 'fast'"),
        ("TRAINER.PD.OVERFIT_LR", "-1e-3", "TRAINER.PD.OVERFIT_LR '-1e-3'"),
        ("TRAINER.PD.INFERENCE", "posterior", "TRAINER.PD.INFERENCE 'posterior'"),
    ],
)
def test_bad_pd_values_are_one_sentence(shapes_root, tiny_weights, tmp_path, key, value, words):
    with pytest.raises((ValueError, ConfigError), match=re.escape(words)):
        _build(_args(shapes_root, tiny_weights, tmp_path, key, value))


def test_overfit_lr_number_on_the_command_line(shapes_root, tiny_weights, tmp_path):
    trainer = _build(_args(shapes_root, tiny_weights, tmp_path, "TRAINER.PD.OVERFIT_LR", "3e-4"))
    assert float(trainer.cfg.TRAINER.PD.OVERFIT_LR) == 3e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from promptdiff.backbone import save_tiny_clip
    from promptdiff.worlds.shapes_caltech import make_shapes_caltech

    root = tmp_path_factory.mktemp("modes")
    weights = save_tiny_clip(str(root / "tiny.pt"))
    data = make_shapes_caltech(str(root / "data"), n_classes=6, n_per_class=10)
    out = root / "run"
    args = _args(data, weights, out, "OPTIM.MAX_EPOCH", "2", "TRAINER.PD.STAGE1_EPOCHS", "1")
    assert cli(args) == 0
    return data, weights, str(out)


@torch.no_grad()
def _logits(trainer, model_dir: str) -> torch.Tensor:
    trainer.load_model(model_dir, epoch=2)
    trainer.set_model_mode("eval")
    trainer.before_test("test")
    return torch.cat([trainer.model_inference(b["img"]) for b in trainer.test_loader])


def test_inference_modes_differ_and_base_is_the_baseline(trained, tmp_path):
    data, weights, out = trained
    logits = {
        mode: _logits(
            _build(_args(data, weights, tmp_path / mode, "TRAINER.PD.INFERENCE", mode)), out
        )
        for mode in ("sample", "base", "mean")
    }
    assert not torch.allclose(logits["sample"], logits["base"])
    assert not torch.allclose(logits["mean"], logits["base"])
    assert not torch.allclose(logits["sample"], logits["mean"])

    # base: exactly what the CoOp trainer computes from the same prompt checkpoint
    coop = _build(
        train_args(data, str(tmp_path / "coop"), "CoOp", "CoOp/vit_b16_ep50_ctxv1", weights)
    )
    assert torch.equal(_logits(coop, out), logits["base"])

    # mean: the base prompt plus the running mean of the over-fitted residuals, by hand
    diff = _build(_args(data, weights, tmp_path / "hand", "TRAINER.PD.INFERENCE", "mean"))
    diff.load_model(out, epoch=2)
    diff.set_model_mode("eval")
    model = diff.model
    with torch.no_grad():
        hand = []
        for batch in diff.test_loader:
            cond = model.condition(batch["img"])
            base = model.base_prompt(cond)
            prompts = target_to_prompt(diff.diffusion.stats.mean.expand_as(base), base)
            hand.append(model.logits_for(batch["img"], cond, prompts))
    assert torch.equal(torch.cat(hand), logits["mean"])
    assert os.path.isdir(os.path.join(out, "denoiser"))


@pytest.mark.parametrize("ce_from", ["noised", "start"])
def test_stage2_step_equals_a_plain_recomputation(shapes_root, tiny_weights, tmp_path, ce_from):
    """One seeded CoOpDiff stage-2 step, redone from the core's pieces on a copy of the denoiser:
    over-fit each image's copy, diffuse the residual, DIFF_WEIGHT x diffusion + CE_WEIGHT x CE
    (through the diffusion loss's estimate, or with CE_FROM start through the estimate from fresh
    noise at the sampling start), one AdamW step, one EMA update. Parameters, EMA, statistics and
    logged figures agree exactly."""
    opts = ("TRAINER.PD.STAGE1_EPOCHS", "0", "TRAINER.PD.OVERFIT_LR", "0.01",
            "TRAINER.PD.CE_FROM", ce_from)  # fmt: skip
    trainer = _build(_args(shapes_root, tiny_weights, tmp_path, *opts))
    pd = trainer.cfg.TRAINER.PD
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    batch = next(iter(trainer.train_loader_x))
    diffusion = copy.deepcopy(trainer.diffusion)
    start = {key: value.clone() for key, value in diffusion.state_dict().items()}
    prompt_before = copy.deepcopy(trainer.model.prompt_learner.state_dict())
    torch.manual_seed(7)
    out = trainer.forward_backward(batch)

    model, image, label = trainer.model, batch["img"], batch["label"]
    optim = torch.optim.AdamW(diffusion.denoiser.parameters(), lr=pd.LR, weight_decay=0.0)
    torch.manual_seed(7)
    with torch.no_grad():
        cond = model.condition(image)
    base = model.base_prompt(cond).detach()

    def per_sample_ce(delta):
        logits = model.logits_for(image, cond, base + delta).float()
        return F.cross_entropy(logits, label, reduction="none")

    fit = overfit_per_sample(
        per_sample_ce, torch.zeros_like(base[0]), len(image), pd.OVERFIT_STEPS, 0.01, "adam"
    )
    diff, x0_hat = diffusion.training_loss(prompt_to_target(base + fit.targets, base), cond)
    if ce_from == "start":
        # the same draws, in the same order, as the trainer: fresh noise after the loss's own
        noise = torch.randn(x0_hat.shape)
        x0_hat = diffusion.start_estimate(cond, noise=noise)
        assert torch.allclose(x0_hat, diffusion.sample(cond, 1, noise=noise, use_ema=False))
    logits = model.logits_for(image, cond, target_to_prompt(x0_hat, base)).float()
    ce = F.cross_entropy(logits, label)
    loss = pd.DIFF_WEIGHT * diff + pd.CE_WEIGHT * ce
    optim.zero_grad()
    loss.backward()
    optim.step()
    diffusion.update_ema()

    stepped = trainer.diffusion.state_dict()
    for key, value in diffusion.state_dict().items():
        assert torch.equal(stepped[key], value), key
    moved = [key for key, value in stepped.items() if not torch.equal(value, start[key])]
    assert any(k.startswith("denoiser.") for k in moved) and any(
        k.startswith("ema.") for k in moved
    )
    assert "stats.mean" in moved
    # stage 2 leaves the baseline's prompt alone (no UPDATE_BASE): unchanged, no gradient
    for key, value in trainer.model.prompt_learner.state_dict().items():
        assert torch.equal(value, prompt_before[key]), key
    assert all(p.grad is None for p in trainer.model.prompt_learner.parameters())
    assert out["loss"] == loss.item() and out["diff"] == diff.item() and out["ce"] == ce.item()
    assert out["of_before"] == fit.mean_before and out["of_after"] == fit.mean_after
