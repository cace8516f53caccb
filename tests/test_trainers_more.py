"""CoCoOp, VPT, MaPLe, IVLP and their Diff trainers, end to end on CPU with the tiny CLIP.

Data: 4 synthetic classes x 8 images (split 4 train / 2 val / 2 test per class); 2 epochs, the Diff
trainers with 1 stage-1 and 1 stage-2 epoch, a 1-layer denoiser and 2 over-fitting steps.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import read_results, train_args

from promptdiff.backbone import save_tiny_clip
from promptdiff.worlds.shapes_caltech import make_shapes_caltech
from train import build_parser, cli, setup_cfg

# baseline -> (config, PREC namespace, options that fit the 2-layer tiny CLIP)
SPECS = {
    "CoCoOp": ("vit_b16_c4_ep10_batch1_ctxv1", "COCOOP", ()),
    "VPT": (
        "vit_b16_c2_ep5_batch4_8ctx",
        "VPT",
        ("TRAINER.VPT.PROMPT_DEPTH_VISION", "2", "TRAINER.VPT.N_CTX_VISION", "4"),
    ),
    "MaPLe": ("vit_b16_c2_ep5_batch4_2ctx", "MAPLE", ("TRAINER.MAPLE.PROMPT_DEPTH", "2")),
    "IVLP": (
        "vit_b16_c2_ep5_batch4_2+2ctx",
        "IVLP",
        ("TRAINER.IVLP.PROMPT_DEPTH_TEXT", "2", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "2"),
    ),
}
DIFF_OPTS = tuple(
    "TRAINER.PD.STAGE1_EPOCHS 1 TRAINER.PD.WIDTH 32 TRAINER.PD.DEPTH 1 TRAINER.PD.HEADS 2 "
    "TRAINER.PD.OVERFIT_STEPS 2".split()
)
TRAINERS = [name for base in SPECS for name in (base, f"{base}Diff")]
# what a prompt_learner checkpoint holds: the learned tensors only (upstream names)
PROMPT_KEYS = {
    "CoCoOp": {
        "ctx",
        "meta_net.linear1.weight",
        "meta_net.linear1.bias",
        "meta_net.linear2.weight",
        "meta_net.linear2.bias",
    },
    "VPT": {"ctx"},
    "MaPLe": {
        "ctx",
        "proj.weight",
        "proj.bias",
        "compound_prompts_text.0",
        "compound_prompt_projections.0.weight",
        "compound_prompt_projections.0.bias",
    },
    "IVLP": {"ctx", "compound_prompts_text.0", "vision_ctx"},
}
EPOCHS = 2


def _baseline(name: str) -> str:
    return name.removesuffix("Diff")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("shapes4")
    weights = save_tiny_clip(str(root / "tiny.pt"))
    return make_shapes_caltech(str(root / "data"), n_classes=4, n_per_class=8), weights


@pytest.fixture(scope="module")
def runs() -> dict:
    """Trained trainers, keyed by (trainer, extra options), shared by the tests of this module."""
    return {}


def _args(data, out: str, name: str, *opts: str) -> list[str]:
    root, weights = data
    cfg, prec_key, extra = SPECS[_baseline(name)]
    diff = DIFF_OPTS if name.endswith("Diff") else ()
    return train_args(
        root,
        str(out),
        name,
        f"{name}/{cfg}",
        weights,
        *extra,
        "OPTIM.MAX_EPOCH",
        str(EPOCHS),
        *diff,
        *opts,
        prec_key=prec_key,
    )


def _build(args: list[str]):
    import promptdiff.datasets  # noqa: F401
    import promptdiff.trainers  # noqa: F401
    from promptdiff.host import build_trainer, set_random_seed

    cfg = setup_cfg(build_parser().parse_args(args))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def _train(args: list[str]):
    """What train.py does, in process, so that the trained trainer can be inspected."""
    from promptdiff.host import setup_logger

    cfg = setup_cfg(build_parser().parse_args(args))
    setup_logger(cfg.OUTPUT_DIR)
    trainer = _build(args)
    trainer.train()
    return trainer


def _trained(runs, data, tmp_path_factory, name: str, *opts: str):
    key = (name, opts)
    if key not in runs:
        out = tmp_path_factory.mktemp(name)
        runs[key] = (_train(_args(data, out, name, *opts)), str(out))
    return runs[key]


@torch.no_grad()
def _test_logits(trainer) -> torch.Tensor:
    """The logits trainer.test() classifies with, for the whole test split."""
    trainer.set_model_mode("eval")
    trainer.before_test("test")
    return torch.cat([trainer.model_inference(b["img"]) for b in trainer.test_loader])


def _one_batch(trainer) -> tuple[torch.Tensor, torch.Tensor]:
    batch = next(iter(trainer.test_loader))
    return batch["img"], batch["label"]


def _n_test(root: str, labels) -> int:
    with open(os.path.join(root, "caltech-101", "split_zhou_Caltech101.json")) as f:
        return sum(1 for _, label, _ in json.load(f)["test"] if label in labels)


# ---- end to end -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", TRAINERS)
def test_trains_and_eval_only_reload_reproduces_results(name, data, runs, tmp_path_factory):
    trainer, out = _trained(runs, data, tmp_path_factory, name)
    trained = read_results(out)
    assert trained["trainer"] == name and trained["total"] == _n_test(data[0], range(4))

    ev = tmp_path_factory.mktemp(f"{name}_eval")
    args = _args(data, ev, name)
    assert cli(["--eval-only", "--model-dir", out, "--load-epoch", str(EPOCHS), *args]) == 0
    reloaded = read_results(ev)
    for key in ("total", "correct", "accuracy", "macro_f1"):
        assert reloaded[key] == trained[key], key
    # stronger than the accuracy of 8 images: every logit of the reloaded model is the same
    fresh = _build(_args(data, tmp_path_factory.mktemp(f"{name}_fresh"), name))
    before = _test_logits(fresh)
    fresh.load_model(out, epoch=EPOCHS)
    after = _test_logits(fresh)
    assert not torch.equal(before, after)  # loading changed the model ...
    assert torch.equal(after, _test_logits(trainer))  # ... into the trained one


@pytest.mark.parametrize("name", TRAINERS)
def test_base_to_new(name, data, tmp_path_factory):
    root = data[0]
    out = tmp_path_factory.mktemp(f"{name}_base")
    assert cli(_args(data, out, name, "DATASET.SUBSAMPLE_CLASSES", "base")) == 0
    assert read_results(out)["total"] == _n_test(root, {0, 1})  # base: the first 2 of 4 labels
    ev = tmp_path_factory.mktemp(f"{name}_new")
    args = _args(data, ev, name, "DATASET.SUBSAMPLE_CLASSES", "new")
    assert cli(["--eval-only", "--model-dir", str(out), "--load-epoch", str(EPOCHS), *args]) == 0
    res = read_results(ev)
    assert res["subsample_classes"] == "new" and res["total"] == _n_test(root, {2, 3})


@pytest.mark.parametrize("name", TRAINERS)
def test_checkpoints_hold_only_prompt_and_denoiser_tensors(name, data, runs, tmp_path_factory):
    trainer, out = _trained(runs, data, tmp_path_factory, name)
    models = ["prompt_learner", "denoiser"] if name.endswith("Diff") else ["prompt_learner"]
    listed = [*models, "checkpoints.json", "log.txt", "results.json", "tensorboard"]
    if name.endswith("Diff"):
        listed.append("heldout_fit.json")  # TRAINER.PD.HELDOUT_FIT's record
    assert sorted(os.listdir(out)) == sorted(listed)
    for model in models:  # the per-epoch insurance of epoch 1 was deleted once epoch 2 was saved
        assert sorted(os.listdir(os.path.join(out, model))) == [
            "checkpoint",
            f"model.pth.tar-{EPOCHS}",
        ]
    ckpt = torch.load(
        os.path.join(out, "prompt_learner", f"model.pth.tar-{EPOCHS}"), weights_only=True
    )
    assert set(ckpt["state_dict"]) == PROMPT_KEYS[_baseline(name)]
    if name.endswith("Diff"):
        ckpt = torch.load(
            os.path.join(out, "denoiser", f"model.pth.tar-{EPOCHS}"), weights_only=True
        )
        assert set(ckpt["state_dict"]) == set(trainer.diffusion.state_dict())
        assert {k.split(".")[0] for k in ckpt["state_dict"]} <= {
            "denoiser",
            "ema",
            "stats",
            "ema_updates",
            "overfit_lr",
        }


@pytest.mark.parametrize("name", TRAINERS)
def test_one_step_changes_only_prompt_parameters(name, data, tmp_path):
    # Diff trainers: STAGE1_EPOCHS 0 makes the step a stage-2 step (denoiser only)
    opts = ("TRAINER.PD.STAGE1_EPOCHS", "0") if name.endswith("Diff") else ()
    trainer = _build(_args(data, tmp_path, name, "OPTIM.WARMUP_EPOCH", "0", *opts))
    model = trainer.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("prompt_learner.") for n in trainable)
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    prompt_before = {k: v.clone() for k, v in model.prompt_learner.state_dict().items()}
    diff_before = (
        {k: v.clone() for k, v in trainer.diffusion.denoiser.state_dict().items()}
        if name.endswith("Diff")
        else {}
    )
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    trainer.forward_backward(next(iter(trainer.train_loader_x)))

    for k, v in model.clip.state_dict().items():
        assert torch.equal(v, clip_before[k]), k
    prompt_after = model.prompt_learner.state_dict()
    changed = {k for k, v in prompt_after.items() if not torch.equal(v, prompt_before[k])}
    if name.endswith("Diff"):
        assert not changed  # stage 2 trains the denoiser; the base prompt stays (UPDATE_BASE)
        diff_after = trainer.diffusion.denoiser.state_dict()
        assert any(not torch.equal(v, diff_before[k]) for k, v in diff_after.items())
    else:
        assert "ctx" in changed


# ---- CoCoOp ---------------------------------------------------------------------------------
def test_cocoop_per_image_context_and_meta_net_gradients(data, tmp_path):
    trainer = _build(_args(data, tmp_path, "CoCoOp"))
    model, learner = trainer.model, trainer.model.prompt_learner
    image, label = _one_batch(trainer)
    cond = model.condition(image)
    ctx = model.base_prompt(cond)
    assert ctx.shape == (image.shape[0], *learner.ctx.shape)
    shift = ctx - learner.ctx
    # one bias per image, the same for every context vector, and different between images
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
    assert torch.cdist(shift[:, 0], shift[:, 0]).add(torch.eye(len(image))).min() > 0
    torch.testing.assert_close(shift[:, 0], learner.meta_net(cond))

    logits = model(image)
    F.cross_entropy(logits, label).backward()
    for p in (learner.ctx, *learner.meta_net.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the batched path equals CoCoOp's upstream one-image-at-a-time loop
    with torch.no_grad():
        single = torch.cat([model(image[i : i + 1]) for i in range(len(image))])
    torch.testing.assert_close(logits.detach(), single, rtol=1e-5, atol=1e-5)


# ---- MaPLe ----------------------------------------------------------------------------------
def test_maple_vision_prompts_follow_text_prompts(data, tmp_path):
    trainer = _build(_args(data, tmp_path, "MaPLe"))
    model, learner = trainer.model, trainer.model.prompt_learner
    with torch.no_grad():
        text = learner.text_prompts()
        assert text.shape == (2, 2, 64)  # depth 2, N_CTX 2, tiny text width
        vision = learner.vision_prompts(text)
        assert vision.shape == (2, 2, 64)
        torch.testing.assert_close(vision[0], learner.proj(learner.ctx))
        deeper = learner.compound_prompt_projections[0](learner.compound_prompts_text[0])
        torch.testing.assert_close(vision[1], deeper)

        gen = torch.Generator().manual_seed(0)
        # random, not constant, changes: CLIP's per-token LayerNorms remove a constant shift
        moved = text.clone()
        moved[1] += torch.randn(moved[1].shape, generator=gen)
        moved_vision = learner.vision_prompts(moved)
        assert torch.equal(moved_vision[0], vision[0])
        assert not torch.allclose(moved_vision[1], vision[1])

        # the vision prompts reach the image encoder: with the class features fixed, a change of
        # the coupling alone changes the logits
        image, _ = _one_batch(trainer)
        model.cache_text_features()
        logits = model(image)
        change = torch.randn(learner.proj.bias.shape, generator=gen)
        learner.proj.bias += change
        assert not torch.allclose(model(image), logits)
        learner.proj.bias -= change
        model.clear_cache()

        # per image: image 1 gets other text-side prompts, image 0 keeps the shared ones
        cond = model.condition(image)
        prompts = model.base_prompt(cond).clone()
        prompts[1, 0] += torch.randn(prompts[1, 0].shape, generator=gen)
        per_image = model.logits_for(image, cond, prompts)
        shared = model(image)
        torch.testing.assert_close(per_image[0], shared[0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(per_image[1], shared[1])
        # image 1's logits are those of the baseline with image 1's prompts in both encoders
        learner.ctx.copy_(prompts[1, 0])
        learner.compound_prompts_text[0].copy_(prompts[1, 1])
        torch.testing.assert_close(per_image[1], model(image[1:2])[0], rtol=1e-5, atol=1e-5)


# ---- IVLP -----------------------------------------------------------------------------------
def test_ivlp_vision_prompts_are_independent_of_text_prompts(data, tmp_path):
    trainer = _build(_args(data, tmp_path, "IVLP"))
    model, learner = trainer.model, trainer.model.prompt_learner
    assert learner.vision_ctx.shape == (2, 2, 64)  # PROMPT_DEPTH_VISION x N_CTX_VISION x width
    image, _ = _one_batch(trainer)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        text = learner.text_prompts()
        moved = text + torch.randn(text.shape, generator=gen)
        assert learner.vision_prompts(moved) is learner.vision_ctx  # no coupling
        # the vision prompts reach the image encoder: with the class features fixed, a change of
        # the vision prompts alone changes the logits, and the image features are VPT's
        model.cache_text_features()
        logits = model(image)
        learner.vision_ctx += torch.randn(learner.vision_ctx.shape, generator=gen)
        assert not torch.allclose(model(image), logits)
        model.clear_cache()

    # the language-only config learns no vision prompts: the image side is CLIP's own
    lang = _build(
        _args(
            data,
            tmp_path / "lang",
            "IVLP",
            "TRAINER.IVLP.PROMPT_DEPTH_VISION",
            "0",
            "TRAINER.IVLP.N_CTX_VISION",
            "0",
        )
    )
    assert lang.model.prompt_learner.vision_ctx is None
    assert {n for n, _ in lang.model.prompt_learner.named_parameters()} == {
        "ctx",
        "compound_prompts_text.0",
    }
    with torch.no_grad():
        lang.model.cache_text_features()
        text_feats = lang.model._text_cache
        expected = logits_reference(
            lang.model.clip, lang.model.clip.encode_image(image), text_feats
        )
        torch.testing.assert_close(lang.model(image), expected, rtol=1e-5, atol=1e-5)


def test_ivlp_rejects_text_depth_zero(data, tmp_path):
    with pytest.raises(ValueError, match="TRAINER.IVLP.PROMPT_DEPTH_TEXT 0"):
        _build(_args(data, tmp_path, "IVLP", "TRAINER.IVLP.PROMPT_DEPTH_TEXT", "0"))


def logits_reference(clip_model, image_features, text_features) -> torch.Tensor:
    """CLIP's logits written out: scaled cosine similarity."""
    img = image_features.float() / image_features.float().norm(dim=-1, keepdim=True)
    txt = text_features.float() / text_features.float().norm(dim=-1, keepdim=True)
    return clip_model.logit_scale.exp().float() * img @ txt.t()


# ---- the Diff trainers ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, opts, shape",
    [
        ("CoCoOpDiff", (), (4, 64)),  # N_CTX 4 x text width (ViT-B/16: 4 x 512)
        ("VPTDiff", (), (2, 4, 64)),  # depth x tokens x vision width (ViT-B/16: 12 x 8 x 768)
        ("VPTDiff", ("TRAINER.PD.DIFFUSE_LAYERS", "1"), (1, 4, 64)),
        ("MaPLeDiff", (), (2, 2, 64)),  # depth x N_CTX x text width (ViT-B/16: 9 x 2 x 512)
        ("IVLPDiff", (), (2, 2, 64)),  # text depth x N_CTX_TEXT x text width
    ],
)
def test_diffused_prompt_shape_and_base_prompt_reproduces_baseline(
    name, opts, shape, data, tmp_path
):
    trainer = _build(_args(data, tmp_path, name, *opts))
    assert trainer.diffusion.prompt_shape == shape
    model = trainer.model
    image, _ = _one_batch(trainer)
    with torch.no_grad():
        cond = model.condition(image)
        base = model.base_prompt(cond)
        assert base.shape == (len(image), *shape)
        # plugging the baseline's own prompt back in gives the baseline's logits
        torch.testing.assert_close(
            model.logits_for(image, cond, base), model(image), rtol=1e-5, atol=1e-5
        )


def test_vptdiff_rejects_more_diffused_layers_than_prompt_layers(data, tmp_path):
    with pytest.raises(ValueError, match="DIFFUSE_LAYERS 3"):
        _build(_args(data, tmp_path, "VPTDiff", "TRAINER.PD.DIFFUSE_LAYERS", "3"))


def test_vpt_baseline_ignores_the_diffusion_layer_count(data, tmp_path):
    # TRAINER.PD.DIFFUSE_LAYERS is VPTDiff's: the baseline's prompt is always all its layers
    model = _build(_args(data, tmp_path, "VPT", "TRAINER.PD.DIFFUSE_LAYERS", "1")).model
    assert model.diffuse_layers == model.prompt_learner.ctx.shape[0] == 2


@pytest.mark.parametrize("name", ["CoCoOpDiff", "VPTDiff", "MaPLeDiff", "IVLPDiff"])
def test_diff_stage2_runs_and_inference_samples_prompts(name, data, runs, tmp_path_factory):
    trainer, out = _trained(runs, data, tmp_path_factory, name)
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "Stage 2 (overfit, then diffuse) from epoch 2" in log
    stage2 = [line for line in log.splitlines() if line.startswith(f"epoch [{EPOCHS}/")]
    assert stage2 and all(
        re.search(r" diff [0-9.]+ .* of_before [0-9.]+ .* of_after [0-9.]+ ", line)
        for line in stage2
    )

    calls = []
    sample = trainer.diffusion.sample

    def spy(*args, **kwargs):
        calls.append(kwargs["steps"])
        return sample(*args, **kwargs)

    trainer.diffusion.sample = spy
    try:
        trainer.test()
    finally:
        del trainer.diffusion.sample
    # one draw per test batch, with the shipped STEPS 1
    assert calls == [trainer.cfg.TRAINER.PD.STEPS] * len(trainer.test_loader) == [1] * len(calls)

    image, _ = _one_batch(trainer)
    with torch.no_grad():
        trainer.before_test("test")
        first = trainer.model_inference(image)
        second = trainer.model_inference(image)  # the generator moved on: other noise
        trainer.before_test("test")
        again = trainer.model_inference(image)
        baseline = trainer.model(image)
    assert torch.equal(first, again)  # each evaluation starts from TRAINER.PD.NOISE_SEED
    assert not torch.allclose(first, second)  # the prompts come from the noise ...
    assert not torch.allclose(first, baseline)  # ... and are not the baseline's prompt


# ---- VPT ------------------------------------------------------------------------------------
def test_vpt_text_features_are_fixed_and_computed_once(data, tmp_path, monkeypatch):
    import clip

    trainer = _build(_args(data, tmp_path, "VPT"))
    model = trainer.model
    names = [c.replace("_", " ") for c in trainer.dm.dataset.classnames]
    with torch.no_grad():
        reference = model.clip.encode_text(clip.tokenize([f"a photo of a {c}." for c in names]))
    torch.testing.assert_close(model.class_text_features, reference, rtol=1e-5, atol=1e-5)
    assert "class_text_features" not in model.state_dict()

    def no_text_encoder(*args, **kwargs):
        raise AssertionError("the text encoder ran during training")

    monkeypatch.setattr(model.clip.transformer, "forward", no_text_encoder)
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    trainer.forward_backward(next(iter(trainer.train_loader_x)))


# ---- precision ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CoCoOp", "VPT", "MaPLe", "IVLP"])
def test_fp16_clip_trains_fp32_prompts(name):
    """What PREC fp16 does on a GPU, done on the CPU: half CLIP, fp32 master prompt tensors, for
    the baseline forward and for the Diff trainers' per-image path."""
    from yacs.config import CfgNode as CN

    from promptdiff.backbone import cast_for_precision, tiny_clip
    from promptdiff.trainers.cocoop import CoCoOpCLIP, CoCoOpPromptLearner
    from promptdiff.trainers.ivlp import IVLPPromptLearner
    from promptdiff.trainers.maple import MaPLePromptLearner, MultiModalPromptedCLIP
    from promptdiff.trainers.vpt import VisionPromptedCLIP, VPTPromptLearner

    clip_model = tiny_clip()
    assert cast_for_precision(clip_model, "fp16", torch.device("cuda")) == "fp16"
    clip_model.requires_grad_(False)
    classes = ["dog", "cat", "red car"]
    if name == "CoCoOp":
        opts = CN({"N_CTX": 4, "CTX_INIT": "a photo of a"})
        model = CoCoOpCLIP(CoCoOpPromptLearner(opts, classes, clip_model), clip_model)
    elif name == "VPT":
        opts = CN({"N_CTX_VISION": 4, "PROMPT_DEPTH_VISION": 2})
        model = VisionPromptedCLIP(VPTPromptLearner(opts, clip_model), clip_model, classes, "a {}")
    elif name == "MaPLe":
        opts = CN({"N_CTX": 2, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 2})
        model = MultiModalPromptedCLIP(MaPLePromptLearner(opts, classes, clip_model), clip_model)
    else:
        opts = CN({"N_CTX_TEXT": 2, "N_CTX_VISION": 2, "CTX_INIT": "a photo of a",
                   "PROMPT_DEPTH_TEXT": 2, "PROMPT_DEPTH_VISION": 2})  # fmt: skip
        model = MultiModalPromptedCLIP(IVLPPromptLearner(opts, classes, clip_model), clip_model)
    learner = model.prompt_learner.float()
    image, label = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    cond = model.condition(image)
    delta = torch.zeros_like(model.base_prompt(cond)).requires_grad_(True)
    for logits in (
        model(image),
        model.logits_for(image, cond, model.base_prompt(cond) + delta),
    ):
        assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
        F.cross_entropy(logits, label).backward()
    assert delta.grad.dtype == torch.float32 and delta.grad.abs().sum() > 0
    for p in learner.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all()
    assert all(p.grad is None for p in clip_model.parameters())
