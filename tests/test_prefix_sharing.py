"""Exact optimisations of the per-image text path against the plain computation, features and
gradients: prefix sharing (CoOp end, CoCoOp, MaPLe deep text prompts, CoOpDiff, CoCoOpDiff), the
fallback for middle/front, chunking (checkpointed with gradients) and the top-k over-fitting loss."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import train_args
from yacs.config import CfgNode as CN

import promptdiff.backbone.encoders as encoders
from promptdiff.backbone.encoders import encode_text, encode_text_shared_prefix
from promptdiff.backbone.loader import tiny_clip
from promptdiff.backbone.prompts import ClassPrompts
from promptdiff.trainers.cocoop import CoCoOpCLIP, CoCoOpPromptLearner
from promptdiff.trainers.coop import CoOpCLIP, CoOpPromptLearner
from promptdiff.trainers.maple import MaPLePromptLearner, MultiModalPromptedCLIP
from promptdiff.trainers.overfit_classes import (
    hardest_classes,
    logits_for_classes,
    overfit_loss_classes,
)

# the shared path runs the same arithmetic in another order (SDPA vs nn.MultiheadAttention)
TOL = {"rtol": 1e-4, "atol": 2e-5}
NAMES = ["dog", "cat", "red sports car", "a very long class name of a thing", "x"]


@pytest.fixture(scope="module")
def clip_model():
    # width 128 = 2 heads, so the head split of the shared attention is exercised
    m = tiny_clip(seed=0, text_width=128, text_layers=3, vision_layers=3).eval()
    return m.requires_grad_(False)


@pytest.fixture
def shared_calls(monkeypatch) -> list[int]:
    """Counts calls of the shared-prefix encoder (so a test sees that the fast path ran)."""
    calls = []
    real = encoders.encode_text_shared_prefix

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(encoders, "encode_text_shared_prefix", counting)
    return calls


def _randn(*shape, seed=0, grad=True):
    t = 0.1 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return t.requires_grad_(grad)


def _grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    weights = _randn(*out.shape, seed=99, grad=False)
    return list(torch.autograd.grad((out * weights).sum(), inputs, retain_graph=True))


def _assert_same(a: torch.Tensor, b: torch.Tensor, inputs: list[torch.Tensor]):
    torch.testing.assert_close(a, b, **TOL)
    for ga, gb in zip(_grads(a, inputs), _grads(b, inputs), strict=True):
        assert ga.abs().sum() > 0
        torch.testing.assert_close(ga, gb, **TOL)


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("chunk", [None, 4])
def test_shared_prefix_encoder_equals_full_sequences(clip_model, deep, chunk):
    g, p, c, s, d = 3, 5, 4, 6, 128
    prefix = _randn(g, p, d, seed=1)
    suffix = _randn(c, s, d, seed=2)
    eot = torch.tensor([5, 9, 7, 10])  # positions in the whole sequence, after the prefix
    deep_prompts = _randn(g, 2, 3, d, seed=3) if deep else None
    fast = encode_text_shared_prefix(
        clip_model, prefix, suffix, eot, deep_prompts, prompt_start=1, chunk_size=chunk
    )
    full = torch.cat([prefix[:, None].expand(-1, c, -1, -1), suffix.expand(g, -1, -1, -1)], dim=2)
    deep_rep = None if deep_prompts is None else deep_prompts.repeat_interleave(c, dim=0)
    plain = encode_text(clip_model, full.flatten(0, 1), eot.repeat(g), deep_rep, prompt_start=1)
    inputs = [prefix, suffix] + ([deep_prompts] if deep else [])
    _assert_same(fast, plain.view(g, c, -1), inputs)


def test_shared_prefix_rejects_deep_prompts_outside_the_prefix(clip_model):
    prefix, suffix = _randn(1, 3, 128), _randn(2, 4, 128, seed=1)
    with pytest.raises(ValueError, match="inside the 3-token shared prefix"):
        encode_text_shared_prefix(
            clip_model, prefix, suffix, torch.tensor([3, 4]), _randn(1, 3, 128)
        )
    with pytest.raises(ValueError, match="after the 3 prefix tokens"):
        encode_text_shared_prefix(clip_model, prefix, suffix, torch.tensor([2, 4]))


def _coop(clip_model, position="end", csc=False):
    opts = CN({"N_CTX": 4, "CSC": csc, "CTX_INIT": "", "CLASS_TOKEN_POSITION": position})
    torch.manual_seed(0)
    learner = CoOpPromptLearner(opts, NAMES, clip_model)
    return CoOpCLIP(learner, clip_model), CoOpCLIP(learner, clip_model, share_prefix=False)


def test_coop_end_shared_context_and_per_image_contexts(clip_model, shared_calls):
    fast, plain = _coop(clip_model)
    ctx = fast.prompt_learner.ctx
    _assert_same(fast.text_features(), plain.text_features(), [ctx])
    assert len(shared_calls) == 1
    cond = F.normalize(_randn(3, 32, seed=4, grad=False), dim=-1)
    prompts = ctx + _randn(3, *ctx.shape, seed=5)
    _assert_same(fast.logits_for(None, cond, prompts), plain.logits_for(None, cond, prompts), [ctx])
    # the base prompt (one context expanded over the batch) is encoded once, with the same result
    base = ctx.unsqueeze(0).expand(3, *ctx.shape)
    _assert_same(fast.logits_for(None, cond, base), plain.logits_for(None, cond, base), [ctx])


@pytest.mark.parametrize("position", ["middle", "front"])
def test_middle_and_front_fall_back_to_the_plain_path(clip_model, position, monkeypatch):
    fast, plain = _coop(clip_model, position)
    ctx = fast.prompt_learner.ctx
    reference = plain.text_features()
    cond = F.normalize(_randn(2, 32, seed=4, grad=False), dim=-1)
    prompts = ctx + _randn(2, *ctx.shape, seed=5)
    ref_logits = plain.logits_for(None, cond, prompts)

    def refuse(*args, **kwargs):
        raise AssertionError("the shared prefix does not exist for this layout")

    monkeypatch.setattr(encoders, "encode_text_shared_prefix", refuse)
    _assert_same(fast.text_features(), reference, [ctx])
    _assert_same(fast.logits_for(None, cond, prompts), ref_logits, [ctx])


def test_class_specific_context_falls_back(clip_model, monkeypatch):
    fast, plain = _coop(clip_model, csc=True)
    reference = plain.text_features()
    monkeypatch.setattr(encoders, "encode_text_shared_prefix", None)
    _assert_same(fast.text_features(), reference, [fast.prompt_learner.ctx])


def test_cocoop_features_and_meta_net_gradients(clip_model):
    opts = CN({"N_CTX": 4, "CTX_INIT": "a photo of a"})
    learner = CoCoOpPromptLearner(opts, NAMES, clip_model)
    with torch.no_grad():  # keep the meta-net's two hidden ReLUs alive, whatever the random init
        learner.meta_net.linear1.bias.fill_(1.0)
    fast, plain = CoCoOpCLIP(learner, clip_model), CoCoOpCLIP(learner, clip_model, 0, False)
    images = _randn(3, 3, 32, 32, seed=6, grad=False)
    params = [learner.ctx, learner.meta_net.linear1.weight, learner.meta_net.linear2.weight]
    _assert_same(fast(images), plain(images), params)


def test_maple_deep_text_prompts(clip_model):
    opts = CN({"N_CTX": 2, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 3})
    torch.manual_seed(0)
    learner = MaPLePromptLearner(opts, NAMES, clip_model)
    # "of a" follows the 2 learned tokens in every class prompt: part of the shared prefix
    assert learner.prompts.n_common == 2
    fast, plain = (
        MultiModalPromptedCLIP(learner, clip_model),
        MultiModalPromptedCLIP(learner, clip_model, 0, False),
    )
    images = _randn(2, 3, 32, 32, seed=7, grad=False)
    params = [learner.ctx, *learner.compound_prompts_text, learner.proj.weight]
    _assert_same(fast(images), plain(images), params)
    cond = fast.condition(images)
    prompts = learner.text_prompts() + _randn(2, 3, 2, 128, seed=8)
    _assert_same(
        fast.logits_for(images, cond, prompts), plain.logits_for(images, cond, prompts), params
    )


@pytest.mark.parametrize("share", [True, False])
def test_chunked_equals_unchunked_with_gradients(clip_model, share):
    prompts = ClassPrompts(clip_model, NAMES, "X X X X", 4)
    ctx = _randn(3, 4, 128, seed=9)
    whole = prompts.features(clip_model, ctx, per_sample=True, share_prefix=share)
    for chunk in (1, 4, 7):  # 15 sequences: uneven chunks, and chunks across images
        parts = prompts.features(clip_model, ctx, True, chunk_size=chunk, share_prefix=share)
        _assert_same(parts, whole, [ctx])


def test_chunks_are_checkpointed_with_gradients(clip_model, monkeypatch):
    calls = []
    real = encoders.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn.__name__)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(encoders, "checkpoint", counting)
    prompts = ClassPrompts(clip_model, NAMES, "X X X X", 4)
    ctx = _randn(2, 4, 128, seed=9)
    prompts.features(clip_model, ctx, True, chunk_size=4)
    assert calls == ["_suffix_features"] * 3  # 10 pairs in chunks of 4
    with torch.no_grad():
        prompts.features(clip_model, ctx, True, chunk_size=4, share_prefix=False)
    assert len(calls) == 3  # no gradients: nothing to checkpoint


def test_selected_classes_equal_the_gathered_full_logits(clip_model):
    fast, plain = _coop(clip_model)
    ctx = fast.prompt_learner.ctx
    cond = F.normalize(_randn(3, 32, seed=4, grad=False), dim=-1)
    prompts = ctx + _randn(3, *ctx.shape, seed=5)
    classes = torch.tensor([[1, 0, 4], [2, 3, 3], [4, 1, 0]])
    full = plain.logits_for(None, cond, prompts)
    gathered = torch.gather(full, 1, classes)
    for model in (fast, plain):
        _assert_same(logits_for_classes(model, None, cond, prompts, classes), gathered, [ctx])


def test_hardest_classes_put_the_true_class_first_then_the_highest_logits():
    logits = torch.tensor([[0.0, 5.0, 1.0, 3.0], [9.0, 2.0, 8.0, 7.0]])
    label = torch.tensor([2, 0])
    assert hardest_classes(logits, label, 3).tolist() == [[2, 1, 3], [0, 2, 3]]
    with pytest.raises(ValueError, match="1..4"):
        hardest_classes(logits, label, 5)


def test_topk_with_all_classes_equals_the_exact_overfit_loss(clip_model):
    fast, _ = _coop(clip_model)
    ctx = fast.prompt_learner.ctx.detach()
    n_cls = len(NAMES)
    cond = F.normalize(_randn(3, 32, seed=4, grad=False), dim=-1)
    base = ctx.unsqueeze(0).expand(3, *ctx.shape)
    delta = _randn(3, *ctx.shape, seed=10)
    label = torch.tensor([3, 0, 1])
    exact_fn, exact_label = overfit_loss_classes(fast, None, cond, base, label, n_cls, 0)
    assert exact_label is label
    exact = F.cross_entropy(exact_fn(base + delta), label, reduction="none")
    # k = all classes through the subset path: the same losses and per-sample gradients
    classes = hardest_classes(fast.logits_for(None, cond, base), label, n_cls)
    sub = logits_for_classes(fast, None, cond, base + delta, classes)
    topk = F.cross_entropy(sub, torch.zeros_like(label), reduction="none")
    _assert_same(topk, exact, [delta])
    # fewer classes: true class first, a different (smaller) loss
    few_fn, few_label = overfit_loss_classes(fast, None, cond, base, label, n_cls, 2)
    few = F.cross_entropy(few_fn(base + delta), few_label, reduction="none")
    assert few.shape == (3,) and (few < exact).all()


# ---- the *Diff trainers: one stage-2 step with and without prefix sharing ------------------------
@pytest.mark.parametrize(
    "name,config,prec_key",
    [
        ("CoOpDiff", "CoOpDiff/vit_b16_ep50_ctxv1", "COOP"),
        ("CoCoOpDiff", "CoCoOpDiff/vit_b16_c4_ep10_batch1_ctxv1", "COCOOP"),
    ],
)
def test_diff_stage2_step_is_the_same_with_prefix_sharing(
    name, config, prec_key, shapes_root, tiny_weights, tmp_path, shared_calls
):
    import promptdiff.datasets  # noqa: F401
    import promptdiff.trainers  # noqa: F401
    from promptdiff.host import build_trainer, set_random_seed
    from train import build_parser, setup_cfg

    args = train_args(
        shapes_root, str(tmp_path), name, config, tiny_weights,
        "OPTIM.MAX_EPOCH", "2", "TRAINER.PD.STAGE1_EPOCHS", "1", "TRAINER.PD.DEPTH", "1",
        "TRAINER.PD.WIDTH", "32", "TRAINER.PD.HEADS", "2", "TRAINER.PD.OVERFIT_STEPS", "2",
        "TRAINER.PD.DROPOUT", "0.0", "TRAINER.PD.UPDATE_BASE", "True", prec_key=prec_key,
    )  # fmt: skip
    cfg = setup_cfg(build_parser().parse_args(args))
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 1, 0, 2
    trainer.set_model_mode("train")
    batch = next(iter(trainer.train_loader_x))
    state = copy.deepcopy((trainer.model.state_dict(), trainer.diffusion.state_dict()))
    results = []
    for share in (True, False):
        trainer.model.load_state_dict(state[0])
        trainer.diffusion.load_state_dict(state[1])
        trainer.model.share_prefix = share
        torch.manual_seed(0)
        before = len(shared_calls)
        summary = trainer.forward_backward(batch)
        assert (len(shared_calls) > before) == share
        grads = [p.grad.clone() for p in trainer.diffusion.denoiser.parameters()]
        grads += [p.grad.clone() for p in trainer.model.prompt_learner.parameters()]
        results.append((summary, grads))
    (fast, fast_grads), (plain, plain_grads) = results
    for key in ("loss", "diff", "ce", "of_before", "of_after"):
        assert fast[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-5), key
    assert any(g.abs().sum() > 0 for g in plain_grads)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_models_with_fixed_class_features_keep_all_classes():
    class FixedText:  # VPT-like: logits_for cannot restrict its (fixed) class features
        def logits_for(self, image, cond, prompts):
            return prompts.sum(-1, keepdim=True) * torch.arange(6.0)

    label = torch.tensor([1, 4])
    fn, of_label = overfit_loss_classes(FixedText(), None, None, None, label, 6, 2)
    assert of_label is label and fn(torch.ones(2, 3)).shape == (2, 6)
