"""PromptSRC against upstream's code (tests/promptsrc_oracle.py runs it in its own process on the
same tiny CLIP and inputs), its Gaussian prompt aggregation, upstream checkpoints, PromptSRCDiff.

The tiny CLIP has 4 vision and 4 text layers, so the base-to-new config's depth 9 of ViT-B/16's 12
layers becomes 3.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import read_results, train_args

import promptdiff.datasets  # noqa: F401  (registers every dataset)
import promptdiff.trainers  # noqa: F401  (registers every trainer)
from promptdiff.backbone import save_tiny_clip
from promptdiff.backbone.templates import IMAGENET_TEMPLATES
from promptdiff.engine import set_random_seed
from promptdiff.engine.checkpoint import load_checkpoint
from promptdiff.trainers.ivlp import from_upstream
from promptdiff.trainers.promptsrc import PromptSRC
from train import build_parser, cli, setup_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("PROMPTDIFF_SHARED") or os.path.join(ROOT, "..", "shared")
UPSTREAM = os.path.join(SHARED, "upstream")
B2N = "vit_b16_c2_ep20_batch4_4+4ctx"
STEPS = 3
# one step per epoch, so GPA runs after each; warmup (1e-5) then cosine from LR
OPTS = ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "3", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "3",
        "OPTIM.MAX_EPOCH", str(STEPS), "OPTIM.LR", "0.05", "TRAINER.PROMPTSRC.GPA_MEAN", "2"]  # fmt: skip
IVLP_OPTS = ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", "3", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "2",
             "TRAINER.IVLP.N_CTX_VISION", "3", "TRAINER.IVLP.N_CTX_TEXT", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("clip4") / "tiny4.pt"
    return save_tiny_clip(str(path), vision_layers=4, text_layers=4)


def _trainer(shapes_root, weights, out, trainer="PromptSRC", cfg=f"PromptSRC/{B2N}", opts=OPTS):
    args = train_args(shapes_root, str(out), trainer, cfg, weights, *opts, prec_key=trainer.upper())
    cfg = setup_cfg(build_parser().parse_args(args))
    set_random_seed(cfg.SEED)
    from promptdiff.host import build_trainer

    return build_trainer(cfg)


@pytest.fixture(scope="module")
def oracle(shapes_root, weights, tmp_path_factory):
    """What upstream computes: initial state, forward outputs, steps, checkpoints, logits."""
    if not os.path.isdir(os.path.join(UPSTREAM, "promptsrc")):
        pytest.skip(
            f"{UPSTREAM}/promptsrc is absent: the oracles live in ../shared beside the repo"
        )
    work = tmp_path_factory.mktemp("oracle")
    trainer = _trainer(shapes_root, weights, work / "probe")
    gen = torch.Generator().manual_seed(0)
    job = {
        "weights": weights,
        "classnames": trainer.dm.dataset.classnames,
        "images": torch.randn(4, 3, 32, 32, generator=gen),
        "labels": torch.tensor([0, 3, 5, 1]),
        "seed": 1,
        "steps": STEPS,
        "out": str(work),
        "promptsrc_config": f"PromptSRC/{B2N}.yaml",
        "promptsrc_opts": [*OPTS, "INPUT.SIZE", "(32, 32)", "TRAINER.PROMPTSRC.PREC", "fp32"],
        "ivlp_config": "IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
        "ivlp_opts": [*IVLP_OPTS, "INPUT.SIZE", "(32, 32)", "TRAINER.IVLP.PREC", "fp32"],
    }
    torch.save(job, work / "job.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PROMPTSRC_UPSTREAM=UPSTREAM, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "promptsrc_oracle.py"), "job.pt", "out.pt"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return job, torch.load(work / "out.pt", weights_only=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: on a busy 2-core machine two threads make the tiny CLIP 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_upstream_state(trainer, state: dict) -> None:
    fixed = trainer.filter_loaded_state_dict("prompt_learner", state)
    trainer.load_state_strict("prompt_learner", fixed, "the oracle's state")


def test_forward_equals_upstream(shapes_root, weights, tmp_path, oracle):
    job, ref = oracle
    trainer = _trainer(shapes_root, weights, tmp_path)
    _load_upstream_state(trainer, ref["initial"])
    model, images = trainer.model, job["images"]
    with torch.no_grad():
        prompts = model.shared_prompt()
        text = F.normalize(model.text_features(prompts), dim=-1)
        image = F.normalize(model.image_features(images, prompts), dim=-1)
        zs_image = model.condition(images)
        logits = model(images)
    fwd = ref["forward"]
    assert text.shape == fwd["text"].shape == (6, 32)
    for ours, theirs in (
        (text, fwd["text"]),
        (image, fwd["image"]),
        (logits, fwd["logits"]),
        (model.frozen_text(), fwd["fixed_text"]),
        (zs_image, fwd["zs_image"]),
    ):
        assert (ours - theirs).abs().max() < 1e-5
    # the prompts change both towers (so the comparison above is not CLIP's own output)
    assert (image - zs_image).abs().max() > 1e-3


def test_training_steps_and_gpa_equal_upstream(shapes_root, weights, tmp_path, oracle):
    job, ref = oracle
    trainer = _trainer(shapes_root, weights, tmp_path)
    _load_upstream_state(trainer, ref["initial"])
    learner = trainer.model.prompt_learner
    start = {k: v.detach().clone() for k, v in learner.named_parameters()}
    batch = {"img": job["images"], "label": job["labels"]}
    trainer.set_model_mode("train")
    for step, theirs in enumerate(ref["steps"]):
        trainer.epoch, trainer.batch_idx, trainer.num_batches = step, 0, 1
        summary = trainer.forward_backward(batch)
        (_, ce), (_, text), (_, image), (_, kl) = theirs["terms"]
        assert summary["ce"] == pytest.approx(ce, abs=1e-5)
        assert summary["scl_text"] == pytest.approx(25 * text, abs=1e-5)
        assert summary["scl_image"] == pytest.approx(10 * image, abs=1e-5)
        assert summary["scl_logits"] == pytest.approx(kl / (4 * 6), abs=1e-6)
        expected = from_upstream(theirs["prompts"])
        for name, p in learner.named_parameters():
            assert (p.detach() - expected[name]).abs().max() < 1e-6, (step, name)
    moved = max((p.detach() - start[n]).abs().max() for n, p in learner.named_parameters())
    assert moved > 1e-1  # 1e5 x the tolerance: the steps are not no-ops


def test_upstream_promptsrc_and_ivlp_checkpoints_evaluate_with_upstreams_logits(
    shapes_root, weights, tmp_path, oracle
):
    job, ref = oracle
    for name, trainer_name, cfg, opts, epoch in (
        ("promptsrc", "PromptSRC", f"PromptSRC/{B2N}", OPTS, STEPS),
        ("ivlp", "IVLP", "IVLP/vit_b16_c2_ep5_batch4_2+2ctx", IVLP_OPTS, 1),
    ):
        trainer = _trainer(shapes_root, weights, tmp_path / name, trainer_name, cfg, opts)
        trainer.load_model(os.path.join(job["out"], name), epoch=epoch)
        trainer.set_model_mode("eval")
        trainer.before_test("test")
        with torch.no_grad():
            logits = trainer.model_inference(job["images"])
        assert (logits - ref[f"{name}_eval_logits"]).abs().max() < 1e-4, name
        assert trainer.evaluated_epoch == epoch
        # evaluation never encodes PromptSRC's 60 templates x the classes
        assert getattr(trainer.model, "fixed_text", None) is None


def test_templates_are_upstreams(oracle):
    assert list(IMAGENET_TEMPLATES) == oracle[1]["templates"]


# ---- Gaussian prompt aggregation -------------------------------------------------------------

GPA_OPTS = ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION",
            "2", "OPTIM.MAX_EPOCH", "3", "DATASET.NUM_SHOTS", "2", "TRAINER.PROMPTSRC.GPA_MEAN",
            "2", "TRAINER.PROMPTSRC.GPA_STD", "1"]  # fmt: skip


def test_gpa_evaluates_the_gaussian_weighted_sum_of_the_epochs_prompts(
    shapes_root, tiny_weights, tmp_path, monkeypatch
):
    epochs, seen = [], []
    aggregate = PromptSRC.aggregate_prompts

    def record_epoch(self):
        epochs.append(
            {k: v.detach().clone() for k, v in self.model.prompt_learner.named_parameters()}
        )
        aggregate(self)

    monkeypatch.setattr(PromptSRC, "aggregate_prompts", record_epoch)
    before_test = PromptSRC.before_test
    monkeypatch.setattr(
        PromptSRC,
        "before_test",
        lambda self, split: (
            seen.append(self.model.shared_prompt().detach().clone()) or before_test(self, split)
        ),
    )
    out = str(tmp_path / "run")
    cfg = f"PromptSRC/{B2N}"
    assert cli(train_args(shapes_root, out, "PromptSRC", cfg, tiny_weights, *GPA_OPTS,
                          prec_key="PROMPTSRC")) == 0  # fmt: skip
    density = [math.exp(-0.5 * (e - 2) ** 2) for e in (1, 2, 3)]
    weights = [d / sum(density) for d in density]
    assert len(epochs) == 3
    by_hand = {k: sum(w * p[k] for w, p in zip(weights, epochs)) for k in epochs[0]}
    final = load_checkpoint(os.path.join(out, "prompt_learner", "model.pth.tar-3"))["state_dict"]
    for key, value in by_hand.items():
        assert torch.allclose(final[key], value, atol=1e-7), key
    # the epochs' prompts differ, so the aggregate is not one of them
    assert (epochs[2]["ctx"] - by_hand["ctx"]).abs().max() > 1e-5
    stack = torch.stack([by_hand["ctx"], by_hand["compound_prompts_text.0"]])
    assert torch.allclose(seen[-1], stack, atol=1e-7)
    # --eval-only of the last epoch evaluates the aggregate
    evaluated = str(tmp_path / "eval")
    flags = ["--eval-only", "--model-dir", out, "--load-epoch", "3"]
    assert cli([*flags, *train_args(shapes_root, evaluated, "PromptSRC", cfg, tiny_weights,
                                    *GPA_OPTS, prec_key="PROMPTSRC")]) == 0  # fmt: skip
    assert torch.allclose(seen[-1], stack, atol=1e-7)
    assert read_results(evaluated)["accuracy"] == read_results(out)["accuracy"]
    # tools/interpret_prompt.py lists the aggregate's deep text prompts layer by layer
    from promptdiff.tools.interpret_prompt import interpret

    rows = interpret(out, 1, [])
    assert [(r[1], r[2]) for r in rows] == [(str(i), t) for i in range(2) for t in range(1, 5)]


def test_killed_and_resumed_run_keeps_the_aggregate(
    shapes_root, tiny_weights, tmp_path, monkeypatch
):
    args = {
        name: train_args(
            shapes_root,
            str(tmp_path / name),
            "PromptSRC",
            f"PromptSRC/{B2N}",
            tiny_weights,
            *GPA_OPTS,
            prec_key="PROMPTSRC",
        )  # fmt: skip
        for name in ("whole", "killed")
    }
    assert cli(args["whole"]) == 0

    # in process, the run stops where tests/test_resume_safety.py SIGKILLs train.py: epoch 2's
    # file written, its unit not yet complete (so the run resumes from epoch 1's)
    class Killed(BaseException):
        pass

    def kill_at(point: str) -> None:
        if point == "saved:prompt_learner:2":
            raise Killed(point)

    import promptdiff.engine.trainer as engine_trainer

    monkeypatch.setattr(engine_trainer, "test_hook", kill_at)
    with pytest.raises(Killed):
        cli(args["killed"])
    middle = load_checkpoint(str(tmp_path / "killed" / "prompt_learner" / "model.pth.tar-1"))
    assert middle["state_dict"]["gpa.epochs"] == 1 and middle["state_dict"]["gpa.sum_ctx"].any()
    monkeypatch.undo()
    assert cli(args["killed"]) == 0
    with open(tmp_path / "killed" / "log.txt") as f:
        assert "Resumed from the checkpoint of epoch 1" in f.read()
    whole, resumed = (
        load_checkpoint(str(tmp_path / n / "prompt_learner" / "model.pth.tar-3"))["state_dict"]
        for n in ("whole", "killed")
    )
    assert whole.keys() == resumed.keys() and any(k.startswith("gpa.") for k in whole)
    for key, value in whole.items():
        assert torch.equal(resumed[key], value), key
    assert whole["gpa.epochs"] == 3


# ---- PromptSRCDiff ---------------------------------------------------------------------------

DIFF_OPTS = [*GPA_OPTS[:-4], "OPTIM.MAX_EPOCH", "2", "TRAINER.PD.STAGE1_EPOCHS", "1",
             "TRAINER.PD.WIDTH", "32", "TRAINER.PD.DEPTH", "1", "TRAINER.PD.HEADS", "2",
             "TRAINER.PD.OVERFIT_STEPS", "2"]  # fmt: skip


def _diff_args(shapes_root, weights, out, *opts, trainer="PromptSRCDiff"):
    return train_args(shapes_root, str(out), trainer, f"{trainer}/{B2N}", weights, *DIFF_OPTS,
                      *opts, prec_key="PROMPTSRC")  # fmt: skip


@torch.no_grad()
def _logits(trainer, images) -> torch.Tensor:
    trainer.set_model_mode("eval")
    trainer.before_test("test")
    return trainer.model_inference(images)


def test_promptsrcdiff_trains_reloads_exactly_and_evaluates_new_classes(
    shapes_root, tiny_weights, tmp_path
):
    from promptdiff.host import build_trainer

    out = tmp_path / "base"
    # the regularisers on the generated prompts on (off by default), so their terms are logged
    scl = ["TRAINER.PROMPTSRC.SCL_ON_GENERATED", "True"]
    base = ["DATASET.SUBSAMPLE_CLASSES", "base", *scl]
    assert cli(_diff_args(shapes_root, tiny_weights, out, *base)) == 0
    with open(out / "log.txt") as f:
        stage2 = [line for line in f if line.startswith("epoch [2/2]")]
    assert stage2 and all(" scl_text " in line and " diff " in line for line in stage2)
    evaluated = tmp_path / "base_eval"
    flags = ["--eval-only", "--model-dir", str(out), "--load-epoch", "2"]
    assert cli([*flags, *_diff_args(shapes_root, tiny_weights, evaluated, *base)]) == 0
    for key in ("total", "correct", "accuracy", "macro_f1"):
        assert read_results(evaluated)[key] == read_results(out)[key], key
    new = tmp_path / "new"
    assert cli([*flags, *_diff_args(shapes_root, tiny_weights, new, "DATASET.SUBSAMPLE_CLASSES",
                                    "new", *scl)]) == 0  # fmt: skip
    result = read_results(new)
    assert result["subsample_classes"] == "new" and result["total"] == 3 * 3  # 3 test images each

    def built(trainer, *opts):
        args = _diff_args(shapes_root, tiny_weights, tmp_path / "x", *scl, *opts, trainer=trainer)
        cfg = setup_cfg(build_parser().parse_args(args))
        set_random_seed(cfg.SEED)
        made = build_trainer(cfg)
        made.load_model(str(out), epoch=2)
        return made

    diff, images = built("PromptSRCDiff"), next(iter(built("PromptSRC").test_loader))["img"]
    sampled = _logits(diff, images)
    assert torch.equal(sampled, _logits(built("PromptSRCDiff"), images))  # reloads exactly
    # INFERENCE base: PromptSRC's logits with the same weights
    base_logits = _logits(built("PromptSRCDiff", "TRAINER.PD.INFERENCE", "base"), images)
    assert torch.equal(base_logits, _logits(built("PromptSRC"), images))
    assert not torch.allclose(base_logits, sampled)


@pytest.mark.parametrize("on_generated", [True, False])
def test_stage2_regularisers_reach_the_denoiser_only_when_asked(
    shapes_root, tiny_weights, tmp_path, on_generated
):
    from promptdiff.host import build_trainer

    opts = ["TRAINER.PROMPTSRC.SCL_ON_GENERATED", str(on_generated),
            "TRAINER.PD.CE_WEIGHT", "0", "TRAINER.PD.DIFF_WEIGHT", "0"]  # fmt: skip
    cfg = setup_cfg(build_parser().parse_args(_diff_args(shapes_root, tiny_weights, tmp_path,
                                                         *opts)))  # fmt: skip
    trainer = build_trainer(cfg)
    batch = next(iter(trainer.train_loader_x))
    image, label = batch["img"], batch["label"]
    cond, base = trainer.condition_and_base(image)
    diff_loss, x0_hat = trainer.diffusion.training_loss(torch.zeros_like(base), cond)
    loss, logged = trainer.stage2_loss(image, label, cond, base, diff_loss, x0_hat)
    if not on_generated:
        assert loss.item() == 0 and "scl_text" not in logged
        return
    # with CE and diffusion weighted 0 the loss is the three terms on the generated prompts
    prompts = base + x0_hat  # TARGET residual
    _, terms = trainer.model.self_regulated(image, prompts, cond)
    assert loss.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)
    assert logged["scl_text"] == pytest.approx(terms["scl_text"].item(), rel=1e-6)
    loss.backward()
    grads = [p.grad for p in trainer.diffusion.denoiser.parameters() if p.grad is not None]
    assert grads and max(g.abs().max() for g in grads) > 0


def test_bad_gpa_and_upstream_folder_for_a_diff_trainer_are_one_sentence(
    shapes_root, tiny_weights, tmp_path, oracle, capsys
):
    assert cli(train_args(shapes_root, str(tmp_path / "a"), "PromptSRC", f"PromptSRC/{B2N}",
                          tiny_weights, *GPA_OPTS, "TRAINER.PROMPTSRC.GPA_STD", "0",
                          prec_key="PROMPTSRC")) != 0  # fmt: skip
    assert "TRAINER.PROMPTSRC.GPA_STD must be > 0 (got 0)" in capsys.readouterr().err
    from promptdiff.host import build_trainer

    cfg = setup_cfg(build_parser().parse_args(_diff_args(shapes_root, tiny_weights, tmp_path)))
    with pytest.raises(FileNotFoundError, match="evaluate it with --trainer PromptSRC"):
        build_trainer(cfg).load_model(os.path.join(oracle[0]["out"], "promptsrc"), epoch=STEPS)
