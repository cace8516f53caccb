"""Precision handling: fp16 CLIP with fp32 master prompts, and the CPU fallback of fp16/amp."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from promptdiff.backbone import cast_for_precision, tiny_clip
from trainers.coop import CoOpPromptLearner, PromptedCLIP


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
    model = PromptedCLIP(learner, clip_model)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.dtype == torch.float32
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert learner.ctx.dtype == torch.float32 and learner.ctx.grad.dtype == torch.float32
    assert torch.isfinite(learner.ctx.grad).all() and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip_model.parameters())
