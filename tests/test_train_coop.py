"""CoOp / CoOpDiff / ZeroshotCLIP through train.py on the shapes dataset with the tiny CLIP."""

from __future__ import annotations

import os
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import read_results, train_args

from train import build_parser, cli, setup_cfg


def _last_ctx(out: str, epoch: int) -> torch.Tensor:
    ckpt = torch.load(
        os.path.join(out, "prompt_learner", f"model.pth.tar-{epoch}"), weights_only=True
    )
    assert set(ckpt["state_dict"]) == {"ctx"}  # only the learned context, no CLIP weights
    return ckpt["state_dict"]["ctx"]


def _losses(out: str) -> list[float]:
    with open(os.path.join(out, "log.txt")) as f:
        return [float(m) for m in re.findall(r" loss ([0-9.]+) \(", f.read())]


def test_coop_end_to_end_and_eval_only_reload(shapes_root, tiny_weights, tmp_path):
    out = str(tmp_path / "coop")
    args = train_args(shapes_root, out, "CoOp", "CoOp/vit_b16_ep50_ctxv1", tiny_weights,
                      "OPTIM.MAX_EPOCH", "6", "DATASET.NUM_SHOTS", "4")  # fmt: skip
    assert cli(args) == 0
    losses = _losses(out)
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6  # the loss falls
    trained = read_results(out)
    assert trained["trainer"] == "CoOp" and trained["split"] == "test"
    assert trained["total"] == 6 * 3  # 30 % of 10 images in each of 6 classes
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert re.search(r"=> result\n\* total: 18\n\* correct: \d+\n\* accuracy: [0-9.]+%\n"
                     r"\* error: [0-9.]+%\n\* macro_f1: [0-9.]+%", log)  # fmt: skip
    assert "Finish training" in log

    ev = str(tmp_path / "eval")
    args = train_args(shapes_root, ev, "CoOp", "CoOp/vit_b16_ep50_ctxv1", tiny_weights,
                      "OPTIM.MAX_EPOCH", "6", "DATASET.NUM_SHOTS", "4")  # fmt: skip
    assert cli(["--eval-only", "--model-dir", out, "--load-epoch", "6", *args]) == 0
    reloaded = read_results(ev)
    assert reloaded["accuracy"] == trained["accuracy"]
    assert reloaded["correct"] == trained["correct"]


def test_resume_after_interruption_matches_uninterrupted_run(
    shapes_root, tiny_weights, tmp_path, monkeypatch
):
    opts = ("OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "DATASET.NUM_SHOTS", "4",
            "TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "4")  # fmt: skip
    full = str(tmp_path / "full")
    assert cli(train_args(shapes_root, full, "CoOp", "CoOp/vit_b16_ep50", tiny_weights, *opts)) == 0

    from promptdiff.engine.trainer import SimpleTrainer

    original = SimpleTrainer.after_epoch

    def crash_after_first_epoch(self):
        original(self)
        if self.epoch == 0:
            raise KeyboardInterrupt

    part = str(tmp_path / "part")
    monkeypatch.setattr(SimpleTrainer, "after_epoch", crash_after_first_epoch)
    # Ctrl-C ends the run with one line and exit code 128 + SIGINT (130)
    assert 130 == cli(
        train_args(shapes_root, part, "CoOp", "CoOp/vit_b16_ep50", tiny_weights, *opts)
    )
    assert not os.path.exists(os.path.join(part, "results.json"))
    monkeypatch.setattr(SimpleTrainer, "after_epoch", original)
    assert cli(train_args(shapes_root, part, "CoOp", "CoOp/vit_b16_ep50", tiny_weights, *opts)) == 0
    assert torch.equal(_last_ctx(part, 2), _last_ctx(full, 2))
    assert read_results(part)["accuracy"] == read_results(full)["accuracy"]


def test_coop_with_photo_init_equals_zero_shot_clip(shapes_root, tiny_weights, tmp_path):
    import clip

    import promptdiff.trainers  # noqa: F401
    from promptdiff.host import build_trainer

    args = build_parser().parse_args(
        train_args(
            shapes_root, str(tmp_path / "ref"), "CoOp", "CoOp/vit_b16_ep50_ctxv1", tiny_weights
        )  # fmt: skip
    )
    trainer = build_trainer(setup_cfg(args))
    model = trainer.model
    model.prompt_learner.eval()
    image = torch.randn(3, 3, 32, 32)
    names = [c.replace("_", " ") for c in trainer.dm.dataset.classnames]
    with torch.no_grad():
        text = model.clip.encode_text(clip.tokenize([f"a photo of a {c}." for c in names]))
        img = model.clip.encode_image(image)
        img, text = F.normalize(img, dim=-1), F.normalize(text, dim=-1)
        reference = model.clip.logit_scale.exp() * img @ text.t()
        got = model(image)
        trainer.before_test("test")  # the per-evaluation cache gives the same logits
        cached = model(image)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-4)
    assert torch.equal(got, cached)


def test_zero_shot_clip_eval_only(shapes_root, tiny_weights, tmp_path):
    out = str(tmp_path / "zs")
    args = train_args(shapes_root, out, "ZeroshotCLIP", "CoOp/vit_b16_ep50", tiny_weights,
                      prec_key="ZSCLIP")  # fmt: skip
    assert cli(["--eval-only", *args]) == 0
    res = read_results(out)
    assert res["trainer"] == "ZeroshotCLIP" and res["total"] == 18


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"--trainer": "NoSuchTrainer"}, "NoSuchTrainer"),
        ({"DATASET.NAME": "NoSuchData"}, "NoSuchData"),
        ({"--root": "/nonexistent/data"}, "/nonexistent/data/caltech-101"),
        ({"MODEL.BACKBONE.PATH": "/nonexistent/w.pt"}, "/nonexistent/w.pt"),
        ({"OPTIM.NO_SUCH_KEY": "1"}, "OPTIM.NO_SUCH_KEY"),
        ({"TRAINER.COOP.PREC": "fp8"}, "fp8"),
    ],
)
def test_bad_input_is_one_line_error(shapes_root, tiny_weights, tmp_path, capsys, change,
                                     expected):  # fmt: skip
    args = train_args(shapes_root, str(tmp_path / "bad"), "CoOp", "CoOp/vit_b16_ep50",
                      tiny_weights, "OPTIM.MAX_EPOCH", "1")  # fmt: skip
    for key, value in change.items():
        if key in args:
            args[args.index(key) + 1] = value
        else:
            args += [key, value]
    assert cli(args) == 1
    assert expected in _error_line(capsys)


def test_missing_split_image_is_one_line_error(shapes_root, tiny_weights, tmp_path, capsys):
    import json
    import shutil

    root = str(tmp_path / "copy")
    shutil.copytree(shapes_root, root)
    split = os.path.join(root, "caltech-101", "split_zhou_Caltech101.json")
    with open(split, "w") as f:
        json.dump({"train": [["red_circle/gone.png", 0, "red circle"]], "val": [], "test": []}, f)
    args = train_args(root, str(tmp_path / "o"), "CoOp", "CoOp/vit_b16_ep50", tiny_weights)
    assert cli(args) == 1
    line = _error_line(capsys)
    assert "gone.png" in line and "split_zhou_Caltech101.json" in line


def test_coopdiff_two_stages_and_exact_reload(shapes_root, tiny_weights, tmp_path):
    diff_opts = ("OPTIM.MAX_EPOCH", "3", "TRAINER.PD.STAGE1_EPOCHS", "1", "DATASET.NUM_SHOTS", "4",
                 "TRAINER.PD.WIDTH", "64", "TRAINER.PD.DEPTH", "1", "TRAINER.PD.HEADS", "2",
                 "TRAINER.PD.OVERFIT_STEPS", "3")  # fmt: skip
    out = str(tmp_path / "diff")
    cfg = "CoOpDiff/vit_b16_ep50_ctxv1"
    assert cli(train_args(shapes_root, out, "CoOpDiff", cfg, tiny_weights, *diff_opts)) == 0
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "Stage 2" in log
    before = [float(x) for x in re.findall(r"of_before ([0-9.]+) \(", log)]
    after = [float(x) for x in re.findall(r"of_after ([0-9.]+) \(", log)]
    assert before and all(a < b for a, b in zip(after, before))  # overfitting lowers each loss
    assert os.path.isfile(os.path.join(out, "denoiser", "model.pth.tar-3"))
    trained = read_results(out)

    for steps, name in (("5", "eval5"), ("1", "eval1"), ("10", "eval10")):
        ev = str(tmp_path / name)
        args = train_args(shapes_root, ev, "CoOpDiff", cfg, tiny_weights, *diff_opts,
                          "TRAINER.PD.STEPS", steps)  # fmt: skip
        assert cli(["--eval-only", "--model-dir", out, "--load-epoch", "3", *args]) == 0
        if steps == "1":  # the config's STEPS: what the training run evaluated
            assert read_results(ev)["accuracy"] == trained["accuracy"]
        else:
            assert read_results(ev)["total"] == trained["total"]


def test_stage2_batch_size_rebatches_only_stage_2(shapes_root, tiny_weights, tmp_path):
    out = str(tmp_path / "bs")
    opts = ("OPTIM.MAX_EPOCH", "2", "TRAINER.PD.STAGE1_EPOCHS", "1", "DATASET.NUM_SHOTS", "4",
            "TRAINER.PD.WIDTH", "64", "TRAINER.PD.DEPTH", "1", "TRAINER.PD.HEADS", "2",
            "TRAINER.PD.OVERFIT_STEPS", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "2",
            "TRAINER.PD.BATCH_SIZE", "8")  # fmt: skip
    cfg = "CoOpDiff/vit_b16_ep50_ctxv1"
    assert cli(train_args(shapes_root, out, "CoOpDiff", cfg, tiny_weights, *opts)) == 0
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    # 6 classes x 4 shots = 24 training images: 12 batches of 2, then 3 batches of 8
    assert set(re.findall(r"epoch \[1/2\] batch \[\d+/(\d+)\]", log)) == {"12"}
    assert set(re.findall(r"epoch \[2/2\] batch \[\d+/(\d+)\]", log)) == {"3"}
    assert "Stage 2 batch size: 8" in log
