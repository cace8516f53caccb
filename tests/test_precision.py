"""Precision handling: fp16 CLIP with fp32 master prompts, and the CPU fallback of fp16/amp."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from promptdiff.backbone import cast_for_precision, tiny_clip
from promptdiff.trainers.coop import CoOpCLIP, CoOpPromptLearner


def _opts(ctx_init: str = "a photo of a") -> CN:
    return CN({"N_CTX": 4, "CSC": False, "CTX_INIT": ctx_init, "CLASS_TOKEN_POSITION": "end"})


@pytest.mark.parametrize("prec", ["fp16", "amp"])
def test_half_precisions_fall_back_to_fp32_on_cpu(prec):
    model = tiny_clip()
    with pytest.warns(UserWarning, match=f"PREC {prec}"):
        assert cast_for_precision(model, prec, torch.device("cpu")) == "fp32"
    assert model.visual.conv1.weight.dtype == torch.float32


def test_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="fp8"):
        cast_for_precision(tiny_clip(), "fp8", torch.device("cpu"))


def test_fp16_clip_trains_fp32_master_context():
    clip_model = tiny_clip()
    # what PREC fp16 does on a GPU, done on the CPU: CLIP's weights in half precision
    assert cast_for_precision(clip_model, "fp16", torch.device("cuda")) == "fp16"
    assert clip_model.dtype == torch.float16
    clip_model.requires_grad_(False)  # as ClipPromptTrainer freezes it
    learner = CoOpPromptLearner(_opts(), ["dog", "cat", "red car"], clip_model)
    learner.float()
    model = CoOpCLIP(learner, clip_model)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.dtype == torch.float32
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert learner.ctx.dtype == torch.float32 and learner.ctx.grad.dtype == torch.float32
    assert torch.isfinite(learner.ctx.grad).all() and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip_model.parameters())


@pytest.mark.cuda  # autocast to bf16/fp16 is a GPU feature (on CPU, PREC amp falls back to fp32)
@pytest.mark.parametrize("share_prefix", [True, False])
def test_amp_forward_matches_fp32_on_cuda(share_prefix):
    device = torch.device("cuda")
    clip_model = tiny_clip(text_width=128, text_layers=3, vision_layers=3).to(device).eval()
    clip_model.requires_grad_(False)
    opts = CN({"N_CTX": 4, "CSC": False, "CTX_INIT": "", "CLASS_TOKEN_POSITION": "end"})
    learner = CoOpPromptLearner(opts, ["dog", "cat", "red car", "sea lion"], clip_model).to(device)
    model = CoOpCLIP(learner, clip_model, share_prefix=share_prefix)
    images = torch.randn(3, 3, 32, 32, device=device)
    prompts = learner.ctx + 0.02 * torch.randn(3, *learner.ctx.shape, device=device)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    with torch.no_grad():
        cond = model.condition(images)
        ref_text = learner.prompts.features(clip_model, prompts, per_sample=True)
        ref = model.logits_for(images, cond, prompts)
        with torch.autocast("cuda", dtype=dtype):
            text = learner.prompts.features(
                clip_model, prompts, per_sample=True, share_prefix=share_prefix
            )
            logits = model.logits_for(images, cond, prompts)
    assert logits.dtype == torch.float32
    cos = F.cosine_similarity(text.float(), ref_text, dim=-1)
    assert cos.min() > 0.99, cos
    # logits are 100 x cosine: a bf16 rounding of the features moves them by well under 1
    assert (logits - ref).abs().max() < 1.0


@pytest.mark.cuda  # autocast to bf16/fp16 is a GPU feature (on CPU, PREC amp falls back to fp32)
def test_amp_stage2_step_keeps_fp32_masters_on_cuda(tiny_weights, shapes_root, tmp_path):
    from conftest import train_args

    import promptdiff.datasets  # noqa: F401
    import promptdiff.trainers  # noqa: F401
    from promptdiff.host import build_trainer
    from train import build_parser, setup_cfg

    args = train_args(
        shapes_root, str(tmp_path), "CoOpDiff", "CoOpDiff/vit_b16_ep50_ctxv1", tiny_weights,
        "TRAINER.COOP.PREC", "amp", "USE_CUDA", "True", "OPTIM.MAX_EPOCH", "2",
        "TRAINER.PD.STAGE1_EPOCHS", "1", "TRAINER.PD.DEPTH", "1", "TRAINER.PD.WIDTH", "32",
        "TRAINER.PD.HEADS", "2", "TRAINER.PD.OVERFIT_STEPS", "2",
    )  # fmt: skip
    trainer = build_trainer(setup_cfg(build_parser().parse_args(args)))
    assert trainer.prec == "amp"
    fp16 = trainer.amp_dtype() == torch.float16
    assert (trainer.scaler is not None) == fp16  # a grad scaler only where bf16 is missing
    batch = next(iter(trainer.train_loader_x))
    trainer.batch_idx, trainer.num_batches = 0, 2
    trainer.set_model_mode("train")
    for epoch in (0, 1):  # a stage-1 (baseline) step, then a stage-2 (denoiser) step
        trainer.epoch = epoch
        summary = trainer.forward_backward(batch)
        assert all(torch.isfinite(torch.tensor(v)) for v in summary.values()), summary
    trainable = [*trainer.model.prompt_learner.parameters(), *trainer.diffusion.parameters()]
    assert all(p.dtype == torch.float32 for p in trainable)
    grads = [p.grad for p in trainer.diffusion.denoiser.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_grad_scaler_steps_equal_unscaled_steps(tiny_weights, shapes_root, tmp_path):
    """The fp16 amp update path (GradScaler) on CPU: powers-of-two scaling is exact, so scaled
    stage-1 and stage-2 steps of CoOpDiff change every trained tensor as unscaled ones do, and an
    optimizer without gradients (the denoiser in stage 1) is skipped, not an error."""
    import copy

    from conftest import train_args

    import promptdiff.datasets  # noqa: F401
    import promptdiff.trainers  # noqa: F401
    from promptdiff.host import build_trainer, set_random_seed
    from train import build_parser, setup_cfg

    args = train_args(
        shapes_root, str(tmp_path), "CoOpDiff", "CoOpDiff/vit_b16_ep50_ctxv1", tiny_weights,
        "OPTIM.MAX_EPOCH", "2", "TRAINER.PD.STAGE1_EPOCHS", "1", "TRAINER.PD.DEPTH", "1",
        "TRAINER.PD.WIDTH", "32", "TRAINER.PD.HEADS", "2", "TRAINER.PD.OVERFIT_STEPS", "1",
        "TRAINER.PD.DROPOUT", "0.0",
    )  # fmt: skip
    cfg = setup_cfg(build_parser().parse_args(args))
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    trainer.batch_idx, trainer.num_batches = 0, 2
    trainer.set_model_mode("train")
    batch = next(iter(trainer.train_loader_x))
    models = {"prompt_learner": trainer.model.prompt_learner, "denoiser": trainer.diffusion}
    start = copy.deepcopy({k: m.state_dict() for k, m in models.items()})
    optims = copy.deepcopy({k: trainer._optims[k].state_dict() for k in models})
    after = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        for key, module in models.items():
            module.load_state_dict(start[key])
            trainer._optims[key].load_state_dict(optims[key])
        trainer.scaler = scaler
        for epoch in (0, 1):
            trainer.epoch = epoch
            torch.manual_seed(0)
            trainer.forward_backward(batch)
        after.append({k: copy.deepcopy(m.state_dict()) for k, m in models.items()})
    moved = 0
    for key in models:
        for name, value in after[0][key].items():
            torch.testing.assert_close(after[1][key][name], value, rtol=1e-5, atol=1e-7)
            moved += int(not torch.equal(value, start[key][name]))
    assert moved > 0
