"""GenPT and GenPTDiff: reduction to CoOp, the InfoNCE term, class-wise mixing, the memory, the
ensemble, end to end (train, reload, new classes) and bad keys. Tiny CLIP, 4 synthetic classes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import crash_after_first_epoch, read_results, train_args

from promptdiff.backbone import save_tiny_clip
from promptdiff.trainers.genpt import ClassMemory, info_nce, mix_classwise
from promptdiff.worlds.shapes_caltech import make_shapes_caltech
from train import build_parser, cli, setup_cfg

CFG = {"GenPT": "GenPT/vit_b16_ep50_ctxv1", "GenPTDiff": "GenPTDiff/vit_b16_ep50_ctxv1"}
DIFF_OPTS = tuple(
    "TRAINER.PD.STAGE1_EPOCHS 1 TRAINER.PD.WIDTH 32 TRAINER.PD.DEPTH 1 TRAINER.PD.HEADS 2 "
    "TRAINER.PD.OVERFIT_STEPS 2".split()
)
RANDOM_CTX = ("TRAINER.GENPT.CTX_INIT", "", "TRAINER.GENPT.N_CTX", "4")
TERMS_OFF = ("TRAINER.GENPT.MI_WEIGHT", "0", "TRAINER.GENPT.AUG_MODE", "none")
EPOCHS = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("genpt")
    weights = save_tiny_clip(str(root / "tiny.pt"))
    return make_shapes_caltech(str(root / "data"), n_classes=4, n_per_class=8), weights


def _args(data, out, name: str, *opts: str) -> list[str]:
    root, weights = data
    cfg, prec = (CFG[name], "GENPT") if name in CFG else ("CoOp/vit_b16_ep50_ctxv1", "COOP")
    if name == "ZeroshotCLIP":
        prec = "ZSCLIP"
    diff = DIFF_OPTS if name.endswith("Diff") else ()
    return train_args(root, str(out), name, cfg, weights, "OPTIM.MAX_EPOCH", str(EPOCHS), *diff,
                      "OPTIM.WARMUP_EPOCH", "0", *opts, prec_key=prec)  # fmt: skip


def _build(args: list[str]):
    import promptdiff.datasets  # noqa: F401
    import promptdiff.trainers  # noqa: F401
    from promptdiff.host import build_trainer, set_random_seed

    cfg = setup_cfg(build_parser().parse_args(args))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


@torch.no_grad()
def _test_logits(trainer) -> torch.Tensor:
    trainer.set_model_mode("eval")
    trainer.before_test("test")
    return torch.cat([trainer.model_inference(b["img"]) for b in trainer.test_loader])


def _step(trainer, batch) -> dict:
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    return trainer.forward_backward(batch)


# ---- GenPT with both terms off is CoOp --------------------------------------------------------
def test_terms_off_logits_and_step_equal_coop(data, tmp_path):
    opts = ("TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "4")
    coop = _build(_args(data, tmp_path / "coop", "CoOp", *opts))
    genpt = _build(_args(data, tmp_path / "g", "GenPT", *RANDOM_CTX, *TERMS_OFF))
    on = _build(
        _args(data, tmp_path / "on", "GenPT", *RANDOM_CTX, "TRAINER.GENPT.AUG_MODE", "mixup")
    )
    ctx = torch.randn_like(coop.model.prompt_learner.ctx) * 0.02  # not CTX_INIT's embeddings
    for t in (coop, genpt, on):
        with torch.no_grad():
            t.model.prompt_learner.ctx.copy_(ctx)
    assert torch.equal(_test_logits(genpt), _test_logits(coop))

    batch = next(iter(coop.train_loader_x))
    batch = {"img": batch["img"][:4], "label": torch.tensor([0, 0, 1, 1])}  # pairs for mixup
    loss_coop, loss_genpt = _step(coop, batch)["loss"], _step(genpt, batch)["loss"]
    assert loss_genpt == loss_coop
    after = coop.model.prompt_learner.ctx
    assert not torch.equal(after, ctx)
    assert torch.equal(genpt.model.prompt_learner.ctx, after)
    summary = _step(on, batch)  # the terms on: another loss, another step
    assert summary["n_aug"] == 2 and summary["loss"] != loss_coop
    assert not torch.equal(on.model.prompt_learner.ctx, after)


def test_ensemble_mixes_in_zero_shot_clip_logits(data, tmp_path):
    """The hand-crafted view with the dataset's template is zero-shot CLIP."""
    zs = _build(_args(data, tmp_path / "zs", "ZeroshotCLIP"))
    # a random context: "a photo of a" would make the soft prompt the hand-crafted one
    soft = _test_logits(_build(_args(data, tmp_path / "a", "GenPT", *RANDOM_CTX)))
    w = ("TRAINER.GENPT.ENSEMBLE", "0.25")
    mixed = _test_logits(_build(_args(data, tmp_path / "b", "GenPT", *RANDOM_CTX, *w)))
    zero_shot = torch.cat([zs.model_inference(b["img"]) for b in zs.test_loader])
    torch.testing.assert_close(mixed, 0.75 * soft + 0.25 * zero_shot)
    assert not torch.allclose(soft, zero_shot, atol=1e-3)


def test_prefix_sharing_is_read_and_equals_the_full_sequences(data, tmp_path, monkeypatch):
    """MODEL.TEXT.SHARE_PREFIX reaches GenPT's model, and both paths give the same features and
    gradients (shared context and per-image contexts, as GenPTDiff's stage 2 uses them)."""
    import promptdiff.backbone.encoders as encoders

    calls, real = [], encoders.encode_text_shared_prefix
    monkeypatch.setattr(
        encoders, "encode_text_shared_prefix", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    cond = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(4)), dim=-1)
    weights = torch.randn(3, 4, generator=torch.Generator().manual_seed(6))
    outputs = {}
    for share in (True, False):
        opts = ("MODEL.TEXT.SHARE_PREFIX", str(share))
        model = _build(_args(data, tmp_path / str(share), "GenPT", *RANDOM_CTX, *opts)).model
        assert model.share_prefix is share
        ctx = model.prompt_learner.ctx
        delta = 0.1 * torch.randn(3, *ctx.shape, generator=torch.Generator().manual_seed(5))
        before = len(calls)
        text = model.text_features()
        logits = model.logits_for(None, cond, ctx + delta)
        assert (len(calls) > before) == share
        grads = torch.autograd.grad([text.sum(), (logits * weights).sum()], [ctx])
        outputs[share] = (ctx.detach(), text, logits, grads[0])
    (ctx_a, *fast), (ctx_b, *plain) = outputs[True], outputs[False]
    assert torch.equal(ctx_a, ctx_b)  # the same seeded initial context
    assert plain[-1].abs().sum() > 0
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


# ---- the mutual-information term -------------------------------------------------------------
def test_info_nce_equals_hand_computation():
    soft = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    hand = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 3.0]])
    tau = 0.5

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(
            sum(x * x for x in a) * sum(y * y for y in b)
        )

    expected = 0.0
    for c in range(3):
        scores = [math.exp(cos(soft[c].tolist(), hand[j].tolist()) / tau) for j in range(3)]
        expected += -math.log(scores[c] / sum(scores)) / 3
    assert info_nce(soft, hand, tau).item() == pytest.approx(expected, rel=1e-6)
    # matching views (cos 1 with the positive) give a lower loss than mismatched ones
    assert info_nce(hand, hand, tau) < info_nce(hand.flip(0), hand, tau)


def test_info_nce_gradient_reaches_only_the_context(data, tmp_path):
    trainer = _build(_args(data, tmp_path, "GenPT"))
    model = trainer.model
    assert not model.hand_features.requires_grad
    info_nce(model.text_features(), model.hand_features, 0.07).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"prompt_learner.ctx"}
    assert model.prompt_learner.ctx.grad.abs().sum() > 0


# ---- class-wise augmentation ------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.2, 1.0, 5.0])
def test_mixing_stays_within_each_class(alpha):
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 1, 3, 0, 4])
    classes = torch.unique(labels)
    # one-hot features: a mixed feature is its mixing weights
    mixed, mixed_labels = mix_classwise(torch.eye(len(labels)), labels, classes, 7, alpha)
    assert mixed_labels.tolist() == [0] * 7 + [1] * 7 + [2] * 7  # 3 and 4 have one image each
    assert (mixed >= 0).all()
    torch.testing.assert_close(mixed.sum(1), torch.ones(len(mixed)))
    other_class = labels.unsqueeze(0) != mixed_labels.unsqueeze(1)
    assert (mixed[other_class] == 0).all()
    assert (mixed[~other_class] > 0).all()


def test_mixing_weights_are_dirichlet():
    torch.manual_seed(0)
    labels = torch.tensor([5, 5, 5])
    w, _ = mix_classwise(torch.eye(3), labels, torch.tensor([5]), 4000, 2.0)
    # Dirichlet(2, 2, 2): mean 1/3, variance (1/3)(2/3)/7
    torch.testing.assert_close(w.mean(0), torch.full((3,), 1 / 3), atol=0.01, rtol=0)
    torch.testing.assert_close(w.var(0), torch.full((3,), 2 / 63), atol=0.003, rtol=0)


def test_memory_push_equals_one_write_per_feature():
    torch.manual_seed(0)
    n_cls, size = 4, 3
    memory = ClassMemory(n_cls, size, 2)
    slots = [[None] * size for _ in range(n_cls)]
    counts = [0] * n_cls
    for n in (5, 9, 1, 12):
        labels = torch.randint(0, n_cls - 1, (n,))  # class 3 never appears
        feats = torch.randn(n, 2)
        memory.push(feats, labels)
        for f, y in zip(feats, labels.tolist()):
            slots[y][counts[y] % size] = f
            counts[y] += 1
        assert memory.count.tolist() == counts
        for c in range(n_cls):
            for s in range(size):
                expected = slots[c][s] if slots[c][s] is not None else torch.zeros(2)
                assert torch.equal(memory.features[c, s], expected)
    feats, labels = memory.pool(torch.tensor([1, 3]))
    assert labels.tolist() == [1] * min(counts[1], size)
    assert torch.equal(feats, torch.stack(slots[1][: min(counts[1], size)]))


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["GenPT", "GenPTDiff"])
def test_trains_reloads_exactly_and_evaluates_new_classes(name, data, tmp_path):
    # GenPTDiff also ensembles, so the hand-crafted view is reloaded with the generated prompts
    opts = (
        "DATASET.SUBSAMPLE_CLASSES",
        "base",
        "TRAINER.GENPT.ENSEMBLE",
        "0.5" if name.endswith("Diff") else "0",
    )
    out = tmp_path / "train"
    assert cli(_args(data, out, name, *opts)) == 0
    trained = read_results(out)
    assert trained["trainer"] == name and trained["total"] == 4  # 2 base classes x 2 test images
    with open(out / "log.txt") as f:
        log = f.read()
    assert " mi_nce " in log and " mi_cos " in log and " n_aug " in log
    ckpt = torch.load(out / "prompt_learner" / f"model.pth.tar-{EPOCHS}", weights_only=True)
    # the context and (AUG_MODE prototype) the memory, which resuming needs: nothing of CLIP
    assert set(ckpt["state_dict"]) == {"ctx", "memory.features", "memory.count"}
    assert ckpt["state_dict"]["memory.count"].sum() == 2 * 4 * (EPOCHS - name.endswith("Diff"))

    ev = tmp_path / "eval"
    load = ["--eval-only", "--model-dir", str(out), "--load-epoch", str(EPOCHS)]
    assert cli([*load, *_args(data, ev, name, *opts)]) == 0
    reloaded = read_results(ev)
    for key in ("total", "correct", "accuracy", "macro_f1"):
        assert reloaded[key] == trained[key], key
    fresh = _build(_args(data, tmp_path / "fresh", name, *opts))
    before = _test_logits(fresh)
    fresh.load_model(str(out), epoch=EPOCHS)
    after = _test_logits(fresh)
    assert not torch.equal(before, after)
    trained_ctx = ckpt["state_dict"]["ctx"]
    assert torch.equal(fresh.model.prompt_learner.ctx, trained_ctx)
    assert fresh.model.prompt_learner.memory.count.sum() == 0  # memory is training state

    new = tmp_path / "new"
    new_opts = ("DATASET.SUBSAMPLE_CLASSES", "new", *opts[2:])
    assert cli([*load, *_args(data, new, name, *new_opts)]) == 0
    res = read_results(new)
    assert res["subsample_classes"] == "new" and res["total"] == 4

    # ENSEMBLE only weighs logits at inference: a trained model may be evaluated under another
    other = ("DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.GENPT.ENSEMBLE", "0.9")
    assert cli([*load, *_args(data, tmp_path / "ens", name, *other)]) == 0
    assert read_results(tmp_path / "ens")["total"] == 4


def test_resume_restores_the_prototype_memory(data, tmp_path, monkeypatch):
    opts = ("TRAIN.CHECKPOINT_FREQ", "1")
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli(_args(data, full, "GenPT", *opts)) == 0
    undo = crash_after_first_epoch(monkeypatch)
    # Ctrl-C ends the run with one line and exit code 128 + SIGINT (130)
    assert 130 == cli(_args(data, part, "GenPT", *opts))
    undo()
    assert cli(_args(data, part, "GenPT", *opts)) == 0
    name = f"prompt_learner/model.pth.tar-{EPOCHS}"
    a = torch.load(full / name, weights_only=True)["state_dict"]
    b = torch.load(part / name, weights_only=True)["state_dict"]
    assert b["memory.count"].sum() > 0 and set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- bad keys --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("AUG_MODE", "cutmix", "TRAINER.GENPT.AUG_MODE 'cutmix' is unknown"),
        ("AUG_STRENGTH", "0.0", "TRAINER.GENPT.AUG_STRENGTH must be > 0"),
        ("AUG_SAMPLES", "0", "TRAINER.GENPT.AUG_SAMPLES must be >= 1"),
        ("AUG_MEMORY", "0", "TRAINER.GENPT.AUG_MEMORY must be >= 1"),
        ("MI_TEMP", "-1.0", "TRAINER.GENPT.MI_TEMP must be > 0"),
        ("MI_WEIGHT", "-0.5", "TRAINER.GENPT.MI_WEIGHT must be >= 0"),
        ("ENSEMBLE", "1.5", "TRAINER.GENPT.ENSEMBLE must lie in [0, 1]"),
        ("TEMPLATES", "['a photo of a dog.']", "TRAINER.GENPT.TEMPLATES entry 'a photo of a dog.'"),
        ("TEMPLATES", "['{} of {name}']", "TRAINER.GENPT.TEMPLATES entry '{} of {name}'"),
        ("PREC", "fp8", "TRAINER.GENPT.PREC 'fp8' is unknown"),
    ],
)
def test_bad_key_is_one_sentence(data, tmp_path, capsys, key, value, expected):
    assert cli(_args(data, tmp_path, "GenPTDiff", f"TRAINER.GENPT.{key}", value)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {expected}"), err


def test_templates_are_averaged(data, tmp_path):
    from promptdiff.backbone.encoders import encode_text_tokens
    from promptdiff.backbone.prompts import tokenize

    templates = ["a photo of a {}.", "a drawing of the {}"]
    trainer = _build(_args(data, tmp_path, "GenPT", "TRAINER.GENPT.TEMPLATES", str(templates)))
    names = [n.replace("_", " ") for n in trainer.dm.dataset.classnames]
    clip = trainer.model.clip
    with torch.no_grad():
        views = [F.normalize(encode_text_tokens(clip, tokenize([t.format(n) for n in names])), dim=-1)
                 for t in templates]  # fmt: skip
    torch.testing.assert_close(
        trainer.model.hand_features, F.normalize(views[0] + views[1], dim=-1)
    )
