"""Held-out fit of the denoiser (R^2 / cosine against the val images' over-fitted targets) and set
context (neighbours' mean condition as an extra denoiser token), against hand computations."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F
from test_pd_modes import _args, _build, _logits

from promptdiff.diffusion import PromptDiffusion, fit_figures, fit_sums, neighbour_context
from train import cli


# ---- the pure pieces -----------------------------------------------------------------------------
def test_fit_figures_by_hand():
    target = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    pred = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    mean = torch.tensor([2.0, 0.0])
    figures = fit_figures(fit_sums(pred, target, mean))
    sse, sst = 1 + 1, (1 + 4) + (1 + 1)
    cos = (3 / (math.sqrt(5) * math.sqrt(2)) + 7 / (math.sqrt(10) * math.sqrt(5))) / 2
    # around the mean: pred - mean = (-1, 1), (0, -1); target - mean = (-1, 2), (1, -1)
    cos_c = (3 / (math.sqrt(2) * math.sqrt(5)) + 1 / (1 * math.sqrt(2))) / 2
    assert figures["r2"] == pytest.approx(1 - sse / sst, abs=1e-12)
    assert figures["cosine"] == pytest.approx(cos, abs=1e-12)
    assert figures["cosine_centred"] == pytest.approx(cos_c, abs=1e-12)
    assert fit_figures(fit_sums(target, target, mean))["r2"] == 1.0
    assert fit_figures(fit_sums(mean.expand_as(target), target, mean))["r2"] == 0.0
    # sums add over batches: two halves give the whole
    halves = fit_sums(pred[:1], target[:1], mean) + fit_sums(pred[1:], target[1:], mean)
    torch.testing.assert_close(halves, fit_sums(pred, target, mean))
    with pytest.raises(ValueError, match="must match"):
        fit_sums(pred[:1], target, mean)


def test_neighbour_context_by_hand():
    # angles 0, 10, 80, 90 degrees (lengths differ: cosine ignores them, the mean does not)
    angles = torch.tensor([0.0, 10.0, 80.0, 90.0]) * math.pi / 180
    lengths = torch.tensor([1.0, 2.0, 3.0, 4.0])
    cond = torch.stack([angles.cos(), angles.sin()], 1) * lengths[:, None]
    one = neighbour_context(cond, 1)
    torch.testing.assert_close(one, cond[[1, 0, 3, 2]])
    two = neighbour_context(cond, 2)
    # nearest two of row 0: 1, 2; of row 1: 0, 2; of row 2: 3, 1; of row 3: 2, 1
    expected = torch.stack([cond[[1, 2]], cond[[0, 2]], cond[[1, 3]], cond[[1, 2]]]).mean(1)
    torch.testing.assert_close(two, expected)
    # k >= B - 1: every other row
    others = (cond.sum(0, keepdim=True) - cond) / 3
    for k in (3, 10):
        torch.testing.assert_close(neighbour_context(cond, k), others)
    assert neighbour_context(cond[:1], 5) is None and neighbour_context(cond, 0) is None
    # from a pool: neighbours are pool rows, the row itself is not excluded
    torch.testing.assert_close(neighbour_context(cond[:2], 1, pool=cond[2:]), cond[[2, 2]])
    with pytest.raises(ValueError, match="k must be >= 0"):
        neighbour_context(cond, -1)


def _pair():
    """A model with a context token and one without, same seed; heads made non-zero so the
    output depends on the input."""
    kwargs = dict(depth=2, width=16, heads=2, dropout=0.0, use_ema=False)
    models = []
    for context in (False, True):
        torch.manual_seed(3)
        model = PromptDiffusion((3, 4), 5, context=context, **kwargs)
        torch.manual_seed(4)
        torch.nn.init.normal_(model.denoiser.head.weight)
        model.stats.update(torch.randn(8, 3, 4))
        models.append(model.eval())
    return models


def test_context_token_absent_is_exactly_no_context():
    plain, ctx = _pair()
    shared = {k: v for k, v in ctx.state_dict().items() if "context" not in k}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in shared.items())
    assert set(ctx.state_dict()) - set(shared) == {
        "denoiser.context_in.weight",
        "denoiser.context_in.bias",
        "denoiser.context_pos",
    }
    cond = torch.randn(1, 5)
    noise = torch.randn(1, 3, 4)
    # a batch of one has no neighbours: exactly the model without context
    context = neighbour_context(cond, 3)
    assert context is None
    out = ctx.sample(cond, steps=3, noise=noise, context=context)
    assert torch.equal(out, plain.sample(cond, steps=3, noise=noise))
    x0 = torch.randn(1, 3, 4)
    g1, g2 = (torch.Generator().manual_seed(0) for _ in range(2))
    loss_ctx, est_ctx = ctx.training_loss(x0, cond, g1, context=None)
    loss_plain, est_plain = plain.training_loss(x0, cond, g2)
    assert torch.equal(loss_ctx, loss_plain) and torch.equal(est_ctx, est_plain)
    # given, the context changes the output
    given = ctx.sample(cond, steps=3, noise=noise, context=torch.randn(1, 5))
    assert not torch.allclose(given, out)
    with pytest.raises(ValueError, match="context=False"):
        plain.sample(cond, steps=3, noise=noise, context=torch.randn(1, 5))
    with pytest.raises(ValueError, match="context must have cond's shape"):
        ctx.sample(cond, steps=3, noise=noise, context=torch.randn(2, 5))


# ---- the trainer -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """CoOpDiff with SET_CONTEXT 2: one baseline epoch, one stage-2 epoch, held-out fit on."""
    from promptdiff.backbone import save_tiny_clip
    from promptdiff.worlds.shapes_caltech import make_shapes_caltech

    root = tmp_path_factory.mktemp("context")
    weights = save_tiny_clip(str(root / "tiny.pt"))
    data = make_shapes_caltech(str(root / "data"), n_classes=6, n_per_class=10)
    out = root / "run"
    common = (
        "OPTIM.MAX_EPOCH",
        "2",
        "TRAINER.PD.STAGE1_EPOCHS",
        "1",
        "TRAINER.PD.SET_CONTEXT",
        "2",
    )
    assert cli(_args(data, weights, out, *common)) == 0
    return data, weights, str(out), common


def test_training_logs_and_writes_the_heldout_fit(trained):
    data, weights, out, common = trained
    trainer = _build(_args(data, weights, out + "-probe", *common))
    with open(os.path.join(out, "heldout_fit.json")) as f:
        record = json.load(f)
    assert record["images"] == len(trainer.val_loader.dataset) > 0
    assert record["epoch"] == 2 and record["steps"] == trainer.cfg.TRAINER.PD.STEPS
    log = open(os.path.join(out, "log.txt")).read()
    line = re.search(
        r"Held-out fit on (\d+) val images: R\^2 one-step (\S+), R\^2 sampled (\S+) ", log
    )
    assert line and int(line.group(1)) == record["images"]
    assert float(line.group(2)) == pytest.approx(record["one_step"]["r2"], abs=1e-3)
    assert float(line.group(3)) == pytest.approx(record["sampled"]["r2"], abs=1e-3)
    # logged before the final test
    assert log.index("Held-out fit on") < log.rindex("Evaluate on the *test* set")


def test_trained_set_context_is_deterministic_and_a_batch_of_one_has_none(trained, tmp_path):
    data, weights, out, common = trained
    trainer = _build(_args(data, weights, tmp_path / "a", *common))
    first = _logits(trainer, out)
    assert torch.equal(first, _logits(trainer, out))
    assert torch.equal(first, _logits(_build(_args(data, weights, tmp_path / "b", *common)), out))

    # one image: no neighbours, so exactly the core's sample without context
    pd = trainer.cfg.TRAINER.PD
    image = next(iter(trainer.test_loader))["img"][:1]
    trainer.before_test("test")
    with torch.no_grad():
        got = trainer.model_inference(image)
        model = trainer.model
        cond = model.condition(image)
        noise = torch.Generator().manual_seed(pd.NOISE_SEED)
        x = trainer.diffusion.sample(cond, steps=pd.STEPS, sampler=pd.SAMPLER, generator=noise)
        prompts = model.base_prompt(cond) + x
        assert torch.equal(got, model.logits_for(image, cond, prompts).float())

        # a batch: each image's context is its two nearest neighbours' mean condition
        images = next(iter(trainer.test_loader))["img"]
        cond = model.condition(images)
        context = neighbour_context(cond, 2)
        noise = torch.Generator().manual_seed(pd.NOISE_SEED)
        x = trainer.diffusion.sample(
            cond, steps=pd.STEPS, sampler=pd.SAMPLER, generator=noise, context=context
        )
        expected = model.logits_for(images, cond, model.base_prompt(cond) + x).float()
        torch.testing.assert_close(first[: len(images)], expected)
        noise = torch.Generator().manual_seed(pd.NOISE_SEED)
        x = trainer.diffusion.sample(cond, steps=pd.STEPS, sampler=pd.SAMPLER, generator=noise)
        without = model.logits_for(images, cond, model.base_prompt(cond) + x).float()
        assert not torch.allclose(first[: len(images)], without)


def test_context_pools_are_fixed_and_eval_only_may_choose_them(trained, tmp_path, capsys):
    data, weights, out, common = trained
    batch = _logits(_build(_args(data, weights, tmp_path / "batch", *common)), out)
    pooled = {}
    for pool in ("split", "train"):
        opts = (*common, "TRAINER.PD.SET_CONTEXT_POOL", pool)
        trainer = _build(_args(data, weights, tmp_path / pool, *opts))
        pooled[pool] = _logits(trainer, out)
        assert trainer.context_pool.shape[0] == min(16, len(trainer.test_loader.dataset))
        assert torch.equal(pooled[pool], _logits(trainer, out))
        assert not torch.allclose(pooled[pool], batch)
    assert not torch.allclose(pooled["split"], pooled["train"])

    # the pool is test-time only; SET_CONTEXT itself defines the trained model
    def evaluate(*opts):
        args = _args(data, weights, tmp_path / "eval", *common, *opts)
        return cli(["--eval-only", "--model-dir", out, "--load-epoch", "2", *args])

    assert evaluate("TRAINER.PD.SET_CONTEXT_POOL", "split") == 0
    capsys.readouterr()
    assert evaluate("TRAINER.PD.SET_CONTEXT", "3") != 0
    assert "TRAINER.PD.SET_CONTEXT: 2 -> 3" in capsys.readouterr().err


def test_bad_context_keys_are_one_sentence(shapes_root, tiny_weights, tmp_path):
    with pytest.raises(ValueError, match="TRAINER.PD.SET_CONTEXT_POOL 'domain' is unknown"):
        _build(_args(shapes_root, tiny_weights, tmp_path, "TRAINER.PD.SET_CONTEXT_POOL", "domain"))
    with pytest.raises(ValueError, match=r"TRAINER.PD.SET_CONTEXT must be >= 0 \(got -1\)"):
        _build(_args(shapes_root, tiny_weights, tmp_path, "TRAINER.PD.SET_CONTEXT", "-1"))


def test_heldout_fit_of_an_untrained_and_of_a_perfect_denoiser(shapes_root, tiny_weights, tmp_path):
    """The untrained denoiser (zero head) predicts the training-target mean: R^2 exactly 0. A
    stand-in that returns the val targets recomputed from the core's pieces: R^2 1."""
    from promptdiff.diffusion import overfit_per_sample, prompt_to_target

    opts = ("TRAINER.PD.STAGE1_EPOCHS", "0", "TRAINER.PD.OVERFIT_LR", "0.01")
    trainer = _build(_args(shapes_root, tiny_weights, tmp_path, *opts))
    torch.manual_seed(0)
    trainer.diffusion.stats.update(torch.randn(8, *trainer.diffusion.prompt_shape))
    zero = trainer.heldout_fit()
    assert zero["one_step"]["r2"] == 0.0
    assert zero["sampled"]["r2"] == 0.0 and zero["one_step"]["cosine_centred"] == 0.0
    with open(tmp_path / "heldout_fit.json") as f:
        assert json.load(f) == zero

    model, pd = trainer.model, trainer.cfg.TRAINER.PD
    targets = []
    for batch in trainer.val_loader:
        image, label = batch["img"], batch["label"]
        with torch.no_grad():
            cond = model.condition(image)
            base = model.base_prompt(cond)

        def per_sample_ce(delta, image=image, cond=cond, base=base, label=label):
            logits = model.logits_for(image, cond, base + delta).float()
            return F.cross_entropy(logits, label, reduction="none")

        fit = overfit_per_sample(
            per_sample_ce, torch.zeros_like(base[0]), len(image), pd.OVERFIT_STEPS, 0.01, "adam"
        )
        targets += [prompt_to_target(base + fit.targets, base)] * 2  # one-step, then sampled
    trainer.diffusion.sample = lambda cond, **kwargs: targets.pop(0)
    perfect = trainer.heldout_fit()
    assert not targets
    for name in ("one_step", "sampled"):
        assert perfect[name]["r2"] == pytest.approx(1.0, abs=1e-6)
        assert perfect[name]["cosine"] == pytest.approx(1.0, abs=1e-6)

    trainer.val_loader = None
    assert trainer.heldout_fit() is None
