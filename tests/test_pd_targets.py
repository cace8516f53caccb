"""Residual targets without the label push: class-centred targets (TRAINER.PD.CENTER) and label-free
over-fitting (TRAINER.PD.OVERFIT_TARGET entropy, INFERENCE tune)."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import crash_after_first_epoch, read_results, train_args
from test_pd_modes import SMALL, _build

from promptdiff.diffusion import ClassMeans, PromptDiffusion, overfit_per_sample
from promptdiff.trainers import overfit_entropy
from promptdiff.trainers.overfit_entropy import (
    augment_views,
    entropy,
    entropy_loss,
    marginal_entropy,
)
from train import cli

CFG = "CoOpDiff/vit_b16_ep50_ctxv1"
FAST = ("TRAINER.PD.STAGE1_EPOCHS", "0", "TRAINER.PD.OVERFIT_LR", "0.01")


def _args(root, weights, out, *opts):
    return train_args(root, str(out), "CoOpDiff", CFG, weights, *SMALL, *opts)


def _stage2_batches(trainer, n: int, capture: dict) -> None:
    """n stage-2 steps, recording what was over-fitted and what the denoiser was given."""
    overfit, loss = trainer.overfit, trainer.diffusion.training_loss

    def overfit_spy(image, label, cond, base):
        fit, acc = overfit(image, label, cond, base)
        capture.setdefault("fit", []).append((fit.targets, base.detach(), label))
        return fit, acc

    def loss_spy(x0, cond, *a, **kw):
        capture.setdefault("x0", []).append(x0.detach().clone())
        capture.setdefault("mean", []).append(trainer.diffusion.centres.mean.clone())
        return loss(x0, cond, *a, **kw)

    trainer.overfit, trainer.diffusion.training_loss = overfit_spy, loss_spy
    trainer.set_model_mode("train")
    trainer.num_batches = n
    for index, batch in zip(range(n), trainer.train_loader_x):
        trainer.batch_idx = index
        trainer.forward_backward(batch)


# ---- class-centred targets --------------------------------------------------------------------
def test_class_means_equal_a_hand_computation_over_two_batches(shapes_root, tiny_weights, tmp_path):
    opts = (*FAST, "TRAINER.PD.CENTER", "mean")
    trainer = _build(_args(shapes_root, tiny_weights, tmp_path, *opts))
    seen = {}
    _stage2_batches(trainer, 2, seen)
    residuals, labels = [], []
    for (targets, base, label), x0, mean in zip(seen["fit"], seen["x0"], seen["mean"]):
        residual = (base.float() + targets) - base  # prompt_to_target's residual
        residuals.append(residual)
        labels.append(label)
        # the denoiser learns the residual minus its class's mean so far (this batch included)
        assert torch.equal(x0, residual - mean[label])
    residuals, labels = torch.cat(residuals), torch.cat(labels)
    centres = trainer.diffusion.centres
    for c in range(trainer.num_classes):
        rows = residuals[labels == c].double()
        assert centres.count[c] == len(rows)
        hand = rows.mean(0) if len(rows) else torch.zeros_like(rows[0:1].sum(0))
        torch.testing.assert_close(centres.total[c] / max(len(rows), 1), hand, rtol=0, atol=1e-12)
    assert centres.count.sum() == 8 and len(labels.unique()) >= 2


def test_span_removes_exactly_the_mean_direction():
    torch.manual_seed(0)
    means = ClassMeans(3, (4, 5))
    means.update(torch.randn(6, 4, 5), torch.tensor([0, 0, 1, 1, 1, 2]))
    x, labels = torch.randn(5, 4, 5), torch.tensor([0, 1, 2, 1, 0])
    out = means.centre(x, labels, "span")
    mu = means.mean[labels].flatten(1)
    cos = (out.flatten(1) * mu).sum(1) / (out.flatten(1).norm(dim=1) * mu.norm(dim=1))
    assert cos.abs().max() < 1e-6
    # what was removed lies along mu_y: x = out + c mu_y
    coef = ((x - out).flatten(1) * mu).sum(1) / mu.square().sum(1)
    torch.testing.assert_close(out.flatten(1) + coef[:, None] * mu, x.flatten(1))
    # a class never seen has no mean to remove; `none` is the identity
    fresh = ClassMeans(2, (3,))
    assert torch.equal(
        fresh.centre(x[:, 0, :3], torch.zeros(5, dtype=torch.long), "span"), x[:, 0, :3]
    )
    assert means.centre(x, labels, "none") is x
    with pytest.raises(ValueError, match="training classes"):
        means.update(torch.randn(1, 4, 5), torch.tensor([3]))


def test_span_targets_in_training_are_orthogonal_to_the_class_mean(
    shapes_root, tiny_weights, tmp_path
):
    opts = (*FAST, "TRAINER.PD.CENTER", "span")
    trainer = _build(_args(shapes_root, tiny_weights, tmp_path, *opts))
    seen = {}
    _stage2_batches(trainer, 2, seen)
    x0, (_, _, label), mean = seen["x0"][1], seen["fit"][1], seen["mean"][1]
    mu = mean[label].flatten(1)
    cos = (x0.flatten(1) * mu).sum(1) / (x0.flatten(1).norm(dim=1) * mu.norm(dim=1) + 1e-30)
    assert cos.abs().max() < 1e-6 and x0.abs().max() > 0


@pytest.mark.parametrize(
    "opts, words",
    [
        (("TRAINER.PD.CENTER", "span", "TRAINER.PD.TARGET", "absolute"),
         "TRAINER.PD.CENTER 'span' centres residuals"),
        (("TRAINER.PD.CENTER", "median"), "TRAINER.PD.CENTER 'median' is unknown"),
        (("TRAINER.PD.OVERFIT_TARGET", "margin"), "TRAINER.PD.OVERFIT_TARGET 'margin' is unknown"),
        (("TRAINER.PD.OVERFIT_CONFIDENT", "0.0"), "TRAINER.PD.OVERFIT_CONFIDENT must lie in (0, 1]"),
        (("TRAINER.PD.OVERFIT_VIEWS", "0"), "TRAINER.PD.OVERFIT_VIEWS must be >= 1"),
        (("TRAINER.PD.OVERFIT_NEIGHBOURS", "0"), "TRAINER.PD.OVERFIT_NEIGHBOURS must be >= 1"),
        (("TRAINER.PD.OVERFIT_TARGET", "near"), "TRAINER.PD.OVERFIT_TARGET 'near' is unknown"),
    ],
)  # fmt: skip
def test_bad_target_keys_are_one_sentence(shapes_root, tiny_weights, tmp_path, opts, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        _build(_args(shapes_root, tiny_weights, tmp_path, *opts))


def test_class_means_load_into_a_model_built_for_other_classes():
    saved = PromptDiffusion((2, 3), 4, depth=1, width=8, heads=2, class_centres=6)
    saved.centres.update(torch.randn(3, 2, 3), torch.tensor([0, 5, 5]))
    other = PromptDiffusion((2, 3), 4, depth=1, width=8, heads=2, class_centres=3)
    state = saved.state_dict()
    other.centres.fit_saved(state, "centres.")
    other.load_state_dict(state)  # strict
    assert torch.equal(other.centres.total, saved.centres.total)
    assert torch.equal(other.centres.count, saved.centres.count)


# ---- save, resume, reload, new classes (both variants together) ------------------------------
RESUME_OPTS = ("OPTIM.MAX_EPOCH", "2", "TRAINER.PD.STAGE1_EPOCHS", "0", "DATASET.NUM_SHOTS", "2",
               "TRAINER.PD.CENTER", "span", "TRAINER.PD.OVERFIT_TARGET", "entropy",
               "TRAINER.PD.OVERFIT_VIEWS", "4", "TRAINER.PD.OVERFIT_CONFIDENT", "0.5")  # fmt: skip


def test_centred_label_free_run_resumes_reloads_and_evaluates_new_classes(
    shapes_root, tiny_weights, tmp_path, monkeypatch
):
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli(_args(shapes_root, tiny_weights, full, *RESUME_OPTS)) == 0
    log = (full / "log.txt").read_text()
    for epoch in (1, 2):
        fit = re.search(
            rf"Over-fitting in epoch {epoch}/2: per-sample entropy \(label-free\) ([0-9.]+) -> "
            r"([0-9.]+)",
            log,
        )
        assert fit and float(fit.group(2)) < float(fit.group(1))
        removed = re.search(
            rf"Class-centred targets in epoch {epoch}/2 \(TRAINER.PD.CENTER span\): mu_y removed "
            r"([0-9.]+)% of the residual energy",
            log,
        )
        assert removed and 0 < float(removed.group(1)) <= 100

    undo = crash_after_first_epoch(monkeypatch)
    # Ctrl-C ends the run with one line and exit code 128 + SIGINT (130)
    assert 130 == cli(_args(shapes_root, tiny_weights, part, *RESUME_OPTS))
    undo()
    assert cli(_args(shapes_root, tiny_weights, part, *RESUME_OPTS)) == 0
    assert "Resumed from the checkpoint of epoch 1" in (part / "log.txt").read_text()
    name = "denoiser/model.pth.tar-2"
    a = torch.load(full / name, weights_only=True)["state_dict"]
    b = torch.load(part / name, weights_only=True)["state_dict"]
    assert set(a) == set(b) and a["centres.count"].sum() > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert read_results(full)["accuracy"] == read_results(part)["accuracy"]

    fresh = _build(_args(shapes_root, tiny_weights, tmp_path / "fresh", *RESUME_OPTS))
    fresh.load_model(str(full), epoch=2)
    for key, value in fresh.diffusion.state_dict().items():
        assert torch.equal(value, a[key]), key

    # base-to-new: the model has 3 classes, the saved means 6; strict loading still succeeds
    load = ["--eval-only", "--model-dir", str(full), "--load-epoch", "2"]
    new = ("DATASET.SUBSAMPLE_CLASSES", "new", *RESUME_OPTS)
    assert cli([*load, *_args(shapes_root, tiny_weights, tmp_path / "new", *new)]) == 0
    assert read_results(tmp_path / "new")["subsample_classes"] == "new"
    on_new = _build(_args(shapes_root, tiny_weights, tmp_path / "new2", *new))
    assert on_new.num_classes == 3 and on_new.diffusion.centres.total.shape[0] == 3
    on_new.load_model(str(full), epoch=2)
    assert torch.equal(on_new.diffusion.centres.total, a["centres.total"])
    assert torch.equal(on_new.diffusion.centres.count, a["centres.count"])

    # INFERENCE tune is a test-time key: --eval-only accepts it and times the tuning
    tune = (*RESUME_OPTS, "TRAINER.PD.INFERENCE", "tune")
    assert cli([*load, *_args(shapes_root, tiny_weights, tmp_path / "tune", *tune)]) == 0
    log = (tmp_path / "tune" / "log.txt").read_text()
    assert re.search(
        r"Test-time prompt tuning \(TRAINER.PD.INFERENCE tune\): [0-9.]+ ms per image", log
    )
    assert read_results(tmp_path / "tune")["total"] == read_results(full)["total"]


# ---- label-free over-fitting ------------------------------------------------------------------
def test_views_are_seeded_and_view_zero_is_the_image():
    image = torch.randn(3, 3, 16, 16)
    a = augment_views(image, 5, torch.Generator().manual_seed(4))
    b = augment_views(image, 5, torch.Generator().manual_seed(4))
    c = augment_views(image, 5, torch.Generator().manual_seed(5))
    assert a.shape == (15, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.view(3, 5, 3, 16, 16)[:, 0], image)


def test_full_crops_are_the_image_or_its_mirror(monkeypatch):
    monkeypatch.setattr(overfit_entropy, "CROP_AREA", (1.0, 1.0))
    monkeypatch.setattr(overfit_entropy, "CROP_RATIO", (1.0, 1.0))
    image = torch.randn(2, 3, 8, 8)
    views = augment_views(image, 16, torch.Generator().manual_seed(0)).view(2, 16, 3, 8, 8)
    flipped = 0
    for i in range(2):
        for v in range(1, 16):
            same = torch.allclose(views[i, v], image[i], atol=1e-5)
            mirror = torch.allclose(views[i, v], image[i].flip(-1), atol=1e-5)
            assert same or mirror
            flipped += mirror
    assert 0 < flipped < 30


def test_marginal_entropy_equals_the_plain_formula():
    logits = torch.randn(4, 3, 7)
    p = logits.softmax(-1).mean(1)
    torch.testing.assert_close(marginal_entropy(logits), -(p * p.log()).sum(-1))
    torch.testing.assert_close(marginal_entropy(logits[:, :1]), entropy(logits[:, 0]))


@pytest.fixture
def entropy_trainer(shapes_root, tiny_weights, tmp_path):
    opts = (*FAST, "TRAINER.PD.OVERFIT_TARGET", "entropy", "TRAINER.PD.OVERFIT_VIEWS", "6",
            "TRAINER.PD.OVERFIT_CONFIDENT", "0.5")  # fmt: skip
    return _first_batch(_build(_args(shapes_root, tiny_weights, tmp_path, *opts)))


def _first_batch(trainer):
    """(trainer in train mode, image, label, condition and base prompt of its first batch)."""
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx = 0, 0
    image, label = trainer.parse_batch_train(next(iter(trainer.train_loader_x)))
    with torch.no_grad():
        cond = trainer.model.condition(image)
    return trainer, image, label, cond, trainer.model.base_prompt(cond).detach()


def test_label_free_targets_never_read_the_label(entropy_trainer):
    trainer, image, label, cond, base = entropy_trainer
    fit, acc = trainer.overfit(image, label, cond, base)
    for other in (label.flip(0), (label + 1) % trainer.num_classes):
        again, _ = trainer.overfit(image, other, cond, base)
        assert torch.equal(again.targets, fit.targets)
        assert torch.equal(again.loss_before, fit.loss_before)
        assert torch.equal(again.loss_after, fit.loss_after)
    # the label only scores the result: accuracy of the over-fitted prompts on their images
    logits = trainer.model.logits_for(image, cond, base + fit.targets)
    assert acc == 100 * (logits.argmax(1) == label).float().mean().item()


def test_label_free_fit_lowers_the_confident_views_entropy(entropy_trainer):
    trainer, image, label, cond, base = entropy_trainer
    fit, _ = trainer.overfit(image, label, cond, base)
    assert (fit.loss_after < fit.loss_before).all()
    # by hand: the 3 lowest-entropy of the 6 seeded views under the base prompt, their mean
    # probability's entropy
    views = augment_views(image, 6, trainer.view_generator())
    with torch.no_grad():
        logits = trainer.model.logits_for(
            views, trainer.model.condition(views), base.repeat_interleave(6, 0)
        ).view(len(image), 6, -1)
    keep = entropy(logits).sort(1).indices[:, :3]
    picked = torch.stack([logits[i, keep[i]] for i in range(len(image))])
    torch.testing.assert_close(fit.loss_before, marginal_entropy(picked))


def test_label_free_loss_is_separable_across_images(entropy_trainer):
    trainer, image, _, _, base = entropy_trainer
    loss = entropy_loss(trainer.model, image, base, 6, 3, 0, torch.Generator().manual_seed(1))
    delta = torch.zeros_like(base, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(delta)[0][0], delta)
    assert grad[0].abs().sum() > 0 and torch.equal(grad[1:], torch.zeros_like(grad[1:]))


def test_tune_inference_equals_a_hand_tuning(shapes_root, tiny_weights, tmp_path):
    opts = (*FAST, "TRAINER.PD.INFERENCE", "tune", "TRAINER.PD.OVERFIT_VIEWS", "4",
            "TRAINER.PD.NOISE_SEED", "3")  # fmt: skip
    trainer = _build(_args(shapes_root, tiny_weights, tmp_path, *opts))
    trainer.set_model_mode("eval")
    trainer.before_test("test")
    batch = next(iter(trainer.test_loader))
    tuned = trainer.model_inference(batch["img"])
    assert trainer.tune_images == len(batch["img"]) and trainer.tune_seconds > 0

    model, image = trainer.model, batch["img"]
    with torch.no_grad():
        cond = model.condition(image)
        base = model.base_prompt(cond)
    loss = entropy_loss(model, image, base, 4, 1, 64, torch.Generator().manual_seed(3))
    fit = overfit_per_sample(
        loss, torch.zeros_like(base[0]), len(image), 5, 0.01, "adam", has_aux=True
    )
    with torch.no_grad():
        hand = model.logits_for(image, cond, base + fit.targets)
        plain = model.logits_for(image, cond, base)
    assert torch.equal(tuned, hand) and not torch.equal(tuned, plain)


# ---- neighbourhood targets (OVERFIT_TARGET neighbours) ------------------------------------------


@pytest.fixture
def neighbour_trainer(shapes_root, tiny_weights, tmp_path):
    opts = (*FAST, "TRAINER.PD.OVERFIT_TARGET", "neighbours", "TRAINER.PD.OVERFIT_NEIGHBOURS", "2",
            "TRAINER.PD.OVERFIT_CLASSES", "0")  # fmt: skip
    return _first_batch(_build(_args(shapes_root, tiny_weights, tmp_path, *opts)))


def test_neighbour_targets_never_read_their_own_label(neighbour_trainer):
    trainer, image, label, cond, base = neighbour_trainer
    fit, _ = trainer.overfit(image, label, cond, base)
    i = 0
    changed = label.clone()
    changed[i] = (label[i] + 1) % trainer.num_classes
    again, _ = trainer.overfit(image, changed, cond, base)
    assert torch.equal(again.targets[i], fit.targets[i])
    # the copies whose neighbourhood holds image i do read its label
    near = trainer.overfit_neighbours(cond, trainer.cfg.TRAINER.PD)
    readers = [j for j in range(len(label)) if i in near[j].tolist()]
    assert readers and all(not torch.equal(again.targets[j], fit.targets[j]) for j in readers)
    assert fit.mean_after < fit.mean_before


def test_neighbour_targets_equal_a_hand_over_fitting(neighbour_trainer):
    """Copy i over-fitted on the mean cross-entropy of its 2 nearest other images (cosine of the
    condition feature), each scored with its own base prompt plus copy i's residual."""
    trainer, image, label, cond, base = neighbour_trainer
    fit, _ = trainer.overfit(image, label, cond, base)
    sim = (
        torch.nn.functional.normalize(cond, dim=-1) @ torch.nn.functional.normalize(cond, dim=-1).T
    )
    sim.fill_diagonal_(-float("inf"))
    i = 1
    near = sim[i].topk(2).indices.sort().values
    picked = trainer.overfit_neighbours(cond, trainer.cfg.TRAINER.PD)
    assert picked.shape[1] == 2 and picked[i].tolist() == near.tolist()

    def loss(delta):  # one copy, alone: a batch of 1 over the two neighbours
        logits = trainer.model.logits_for(
            image[near], cond[near], base[near] + delta.expand(2, *delta.shape[1:])
        )
        return torch.nn.functional.cross_entropy(logits.float(), label[near]).reshape(1)

    pd = trainer.cfg.TRAINER.PD
    zero = torch.zeros_like(base[0])
    hand = overfit_per_sample(loss, zero, 1, pd.OVERFIT_STEPS, 0.01, pd.OVERFIT_OPTIM)
    torch.testing.assert_close(fit.targets[i], hand.targets[0], rtol=1e-5, atol=1e-6)
