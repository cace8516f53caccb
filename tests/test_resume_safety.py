"""Nothing lost, nothing silent: kills, resumes, run identity, strict loads, locks, full disks.

The kill tests run train.py in a subprocess and SIGKILL it at exact points of a checkpoint save
(PROMPTDIFF_TEST_KILL_AT) or after a random delay; rerunning the same command must finish with
the tensors and metrics of an uninterrupted run (CPU, NUM_WORKERS 0, so runs are bit-exact).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import read_results, train_args

from promptdiff.backbone import save_tiny_clip
from promptdiff.engine.checkpoint import MANIFEST, load_checkpoint
from promptdiff.engine.runinfo import file_identity, run_config
from promptdiff.engine.utils import LOCK_NAME, TMP_PREFIX, atomic_write
from train import build_parser, cli, setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIFF = "CoOpDiff/vit_b16_ep50_ctxv1"
# 6 classes x 2 shots = 12 images in 3 batches of 4; epoch 1 trains CoOp, epochs 2-3 the
# denoiser and (UPDATE_BASE) the prompt, so both models change in every stage-2 epoch
DIFF_OPTS = ("OPTIM.MAX_EPOCH", "3", "TRAINER.PD.STAGE1_EPOCHS", "1", "DATASET.NUM_SHOTS", "2",
             "TRAINER.PD.WIDTH", "32", "TRAINER.PD.DEPTH", "1", "TRAINER.PD.HEADS", "2",
             "TRAINER.PD.OVERFIT_STEPS", "1", "TRAINER.PD.UPDATE_BASE", "True")  # fmt: skip
COOP_OPTS = ("OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "2")
MODELS = ("prompt_learner", "denoiser")


def _diff_args(root: str, weights: str, out: str, *extra: str) -> list[str]:
    return train_args(root, out, "CoOpDiff", DIFF, weights, *DIFF_OPTS, *extra)


def _coop_args(root: str, weights: str, out: str, *extra: str, **kw) -> list[str]:
    return train_args(root, out, "CoOp", "CoOp/vit_b16_ep50_ctxv1", weights, *COOP_OPTS, *extra,
                      **kw)  # fmt: skip


def _start(args: list[str], kill_at: str = "") -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("PROMPTDIFF_TEST_KILL_AT", None)
    if kill_at:
        env["PROMPTDIFF_TEST_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(args: list[str], kill_at: str = "") -> int:
    proc = _start(args, kill_at)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
    return proc.returncode


@pytest.fixture
def one_thread():
    """In-process runs with the one thread the subprocesses get, so all runs are bit-equal."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _manifest(out: str) -> dict:
    with open(os.path.join(out, MANIFEST)) as f:
        return json.load(f)


def _final(out: str, epoch: int = 3) -> dict:
    """Every model's final tensors, and the results."""
    tensors = {
        m: load_checkpoint(os.path.join(out, m, f"model.pth.tar-{epoch}"))["state_dict"]
        for m in MODELS
    }
    res = read_results(out)
    return {"tensors": tensors, "metrics": (res["accuracy"], res["correct"], res["macro_f1"])}


def _assert_same_run(got: dict, ref: dict) -> None:
    assert got["metrics"] == ref["metrics"]
    for model, state in ref["tensors"].items():
        assert state.keys() == got["tensors"][model].keys()
        for key, value in state.items():
            assert torch.equal(got["tensors"][model][key], value), f"{model}.{key} differs"


def _tmp_files(out: str) -> list[str]:
    return glob.glob(os.path.join(out, "**", TMP_PREFIX + "*"), recursive=True)


def _assert_consistent(out: str) -> None:
    """Every checkpoint file on disk loads; every unit the manifest names is complete."""
    for path in glob.glob(os.path.join(out, "*", "model*.pth.tar*")):
        load_checkpoint(path)
    if not os.path.exists(os.path.join(out, MANIFEST)):
        return
    manifest = _manifest(out)
    for unit, info in manifest["units"].items():
        for model in MODELS:
            ckpt = load_checkpoint(os.path.join(out, model, unit))
            assert ckpt["epoch"] == info["epoch"]
    if manifest["last"]:
        assert manifest["last"] in manifest["units"]


@pytest.fixture(scope="module")
def reference(shapes_root, tiny_weights, tmp_path_factory) -> dict:
    """An uninterrupted CoOpDiff run on one thread, like the killed subprocesses."""
    out = str(tmp_path_factory.mktemp("reference"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli(_diff_args(shapes_root, tiny_weights, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return _final(out)


@pytest.mark.parametrize(
    "kill_at, resumed_epoch",
    [
        ("unit:2", 2),  # right after epoch 2's checkpoint unit was complete
        ("saved:prompt_learner:2", 1),  # between the two models' files of epoch 2
    ],
)
def test_kill_at_a_save_then_rerun_equals_uninterrupted_run(
    shapes_root, tiny_weights, tmp_path, capsys, one_thread, reference, kill_at, resumed_epoch
):
    out = str(tmp_path / "run")
    args = _diff_args(shapes_root, tiny_weights, out)
    assert _run(args, kill_at) == -signal.SIGKILL
    _assert_consistent(out)
    manifest = _manifest(out)
    assert manifest["last"] == f"model.pth.tar-{resumed_epoch}"
    records = set()
    for model in MODELS:  # Dassl's records follow the manifest: they may lag, never lead
        with open(os.path.join(out, model, "checkpoint")) as f:
            records.add(f.read().strip())
    assert len(records) == 1 and records <= {"model.pth.tar-1", manifest["last"]}
    # what a kill in the middle of a write leaves behind
    for folder in (out, os.path.join(out, "denoiser")):
        with open(os.path.join(folder, TMP_PREFIX + "model.pth.tar-2-x1y2"), "wb") as f:
            f.write(b"half")
    assert os.path.exists(os.path.join(out, LOCK_NAME))  # the killed run's lock
    if resumed_epoch == 1:  # epoch 2 is no complete unit: evaluating it is refused
        ev = _diff_args(shapes_root, tiny_weights, str(tmp_path / "ev"))
        assert cli(["--eval-only", "--model-dir", out, "--load-epoch", "2", *ev]) == 1
        assert (
            f"{out} holds no complete checkpoint model.pth.tar-2 (complete ones: "
            "model.pth.tar-1); pass --load-epoch of a complete one." in _error(capsys)
        )

    assert cli(args) == 0  # the same command again
    _assert_same_run(_final(out), reference)
    assert _tmp_files(out) == [] and not os.path.exists(os.path.join(out, LOCK_NAME))
    assert not glob.glob(os.path.join(out, "log.txt-*"))
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "Removed 2 temporary file(s) an interrupted run left" in log
    assert f"Resumed from the checkpoint of epoch {resumed_epoch} (model.pth.tar-" in log
    assert read_results(out)["epoch"] == 3
    # crash insurance is deleted once a newer unit exists; the final one stays
    assert sorted(os.listdir(os.path.join(out, "denoiser"))) == ["checkpoint", "model.pth.tar-3"]


def test_timed_kills_leave_consistent_checkpoints(
    shapes_root, tiny_weights, tmp_path, one_thread, reference
):
    out = str(tmp_path / "run")
    args = _diff_args(shapes_root, tiny_weights, out)
    rng = random.Random(0)
    log = os.path.join(out, "log.txt")
    for _ in range(3):
        # kill at a random moment after a random batch line of the log (saves included)
        target = rng.randint(1, 4)
        proc = _start(args)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            text = open(log).read() if os.path.exists(log) else ""
            text = text.rsplit("this log continues", 1)[-1]  # this attempt's lines
            if len(re.findall(r"^epoch \[", text, re.M)) >= target:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.communicate()
        _assert_consistent(out)
    assert cli(args) == 0
    _assert_consistent(out)
    _assert_same_run(_final(out), reference)
    assert _tmp_files(out) == []


# ---- run identity ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coop_run(shapes_root, tiny_weights, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("coop"))
    assert cli(_coop_args(shapes_root, tiny_weights, out)) == 0
    return out


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_results_record_identity_weights_commit_and_versions(coop_run, tiny_weights):
    import clip  # noqa: F401
    import torchvision

    res = read_results(coop_run)
    cfg = setup_cfg(build_parser().parse_args(_coop_args("x", tiny_weights, coop_run)))
    assert res["run_config"] == run_config(cfg) and len(res["fingerprint"]) == 16
    assert res["run_config"]["SEED"] == 1 and "OUTPUT_DIR" not in res["run_config"]
    assert res["clip_weights"] == file_identity(tiny_weights)
    assert res["versions"]["torch"] == torch.__version__
    assert res["versions"]["torchvision"] == torchvision.__version__
    assert res["versions"]["clip"] and res["versions"]["promptdiff"]
    commit = res["git_commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    ckpt = load_checkpoint(os.path.join(coop_run, "prompt_learner", "model.pth.tar-2"))
    assert ckpt["trainer"] == "CoOp" and ckpt["run"]["fingerprint"] == res["fingerprint"]


def test_resume_with_other_options_is_refused(coop_run, shapes_root, tiny_weights, capsys):
    before = os.path.getmtime(os.path.join(coop_run, "results.json"))
    args = _coop_args(shapes_root, tiny_weights, coop_run, "OPTIM.LR", "0.01", seed=2)
    assert cli(args) == 1
    line = _error(capsys)
    assert f"Output folder {coop_run} holds a run with other options" in line
    assert "SEED: 1 -> 2" in line and "OPTIM.LR: 0.002 -> 0.01" in line
    assert os.path.getmtime(os.path.join(coop_run, "results.json")) == before
    # resuming the finished run with its own options tests it again, labelled with its epoch
    assert cli(_coop_args(shapes_root, tiny_weights, coop_run)) == 0
    assert read_results(coop_run)["epoch"] == 2


def test_eval_only_refuses_training_options_but_not_data_or_test_keys(
    coop_run, shapes_root, tiny_weights, tmp_path, capsys
):
    def evaluate(*extra, weights=tiny_weights, out="ev", **kw) -> int:
        args = _coop_args(shapes_root, weights, str(tmp_path / out), *extra, **kw)
        return cli(["--eval-only", "--model-dir", coop_run, "--load-epoch", "2", *args])

    assert evaluate("DATASET.NUM_SHOTS", "4") == 1
    assert "trained with other options than this evaluation (DATASET.NUM_SHOTS: 2 -> 4)" in (
        _error(capsys)
    )
    assert evaluate(seed=3) == 1 and "SEED: 1 -> 3" in _error(capsys)
    other = save_tiny_clip(str(tmp_path / "other.pt"), seed=1)
    assert evaluate(weights=other) == 1 and "CLIP weights:" in _error(capsys)
    # the new classes, another precision and test-time keys are what evaluations change
    assert evaluate("DATASET.SUBSAMPLE_CLASSES", "new", "TRAINER.COOP.PREC", "fp16",
                    "TEST.PER_CLASS_RESULT", "True", "DATALOADER.TEST.BATCH_SIZE", "5") == 0  # fmt: skip
    assert read_results(str(tmp_path / "ev"))["epoch"] == 2
    # another trainer's block does not define CoOp's model; CoOp's own block does
    assert evaluate("TRAINER.COOP.CLASS_TOKEN_POSITION", "middle") == 1
    assert "TRAINER.COOP.CLASS_TOKEN_POSITION: 'end' -> 'middle'" in _error(capsys)
    assert evaluate("TRAINER.IVLP.N_CTX_TEXT", "4", "TRAINER.PD.DIFF_WEIGHT", "3", out="ev2") == 0


def test_same_run_ignores_other_trainers_blocks(coop_run, shapes_root, tiny_weights, capsys):
    """--same-run (the scripts' skip test) compares CoOp's own options only."""
    foreign = ("TRAINER.MAPLE.N_CTX", "5", "TRAINER.PD.DIFF_WEIGHT", "3")
    args = _coop_args(shapes_root, tiny_weights, coop_run, *foreign)
    assert cli(["--same-run", *args]) == 0
    own = _coop_args(shapes_root, tiny_weights, coop_run, "TRAINER.COOP.N_CTX", "8")
    assert cli(["--same-run", *own]) == 3


# ---- strict loads ----------------------------------------------------------------------------


def _copy_run(src: str, dst: str, edit) -> str:
    """A copy of a run's prompt_learner checkpoint, as an older or foreign tool would write it."""
    os.makedirs(os.path.join(dst, "prompt_learner"))
    ckpt = load_checkpoint(os.path.join(src, "prompt_learner", "model.pth.tar-2"))
    for key in ("trainer", "run", "clip_weights"):
        ckpt.pop(key)  # upstream Dassl checkpoints carry none of these
    edit(ckpt["state_dict"])
    torch.save(ckpt, os.path.join(dst, "prompt_learner", "model.pth.tar-2"))
    return dst


def test_load_is_strict_but_keeps_upstream_token_buffers(
    coop_run, shapes_root, tiny_weights, tmp_path, capsys
):
    ctx = load_checkpoint(os.path.join(coop_run, "prompt_learner", "model.pth.tar-2"))[
        "state_dict"
    ]["ctx"]

    def evaluate(model_dir: str, trainer: str = "CoOp", *extra: str) -> int:
        # another trainer's evaluation may not replace the CoOp one's results (issue 20, case 5)
        out = str(tmp_path / ("ev" if trainer == "CoOp" else f"ev_{trainer}"))
        args = train_args(shapes_root, out, trainer, "CoOp/vit_b16_ep50_ctxv1", tiny_weights,
                          *COOP_OPTS, *extra, prec_key="COCOOP" if trainer == "CoCoOp" else "COOP")  # fmt: skip
        return cli(["--eval-only", "--model-dir", model_dir, "--load-epoch", "2", *args])

    def upstream(sd):  # CoOp's own files also hold the frozen class-token buffers
        sd["token_prefix"] = torch.zeros(6, 1, 8)
        sd["token_suffix"] = torch.zeros(6, 72, 8)

    assert evaluate(_copy_run(coop_run, str(tmp_path / "up"), upstream)) == 0
    assert read_results(str(tmp_path / "ev"))["accuracy"] == read_results(coop_run)["accuracy"]

    def foreign(sd):
        sd.pop("ctx")
        for i in range(5):
            sd[f"meta_net.linear{i}.weight"] = torch.zeros(1)

    assert evaluate(_copy_run(coop_run, str(tmp_path / "bad"), foreign)) == 1
    line = _error(capsys)
    assert (
        "does not fit this run's prompt_learner: missing ctx; unexpected meta_net.linear0" in line
    )
    assert "(5 in all)" in line

    def shorter(sd):
        sd["ctx"] = sd["ctx"][:2]

    assert evaluate(_copy_run(coop_run, str(tmp_path / "short"), shorter)) == 1
    assert f"wrong shape ctx (2, {ctx.shape[1]}) (model: (4, {ctx.shape[1]}))" in _error(capsys)
    # a checkpoint of another trainer is refused by name
    assert evaluate(coop_run, "CoCoOp") == 1
    assert "was saved by trainer CoOp, not CoCoOp; evaluate it with --trainer CoOp." in _error(
        capsys
    )


# ---- stopping bad runs -----------------------------------------------------------------------


def test_diverging_run_stops_before_saving(shapes_root, tiny_weights, tmp_path, capsys):
    out = str(tmp_path / "lr")
    assert cli(_coop_args(shapes_root, tiny_weights, out, "OPTIM.LR", "1e6")) == 1
    line = _error(capsys)
    # epoch 1 is the config's warmup at lr 1e-5; the first epoch at 1e6 is stopped
    assert "Training diverged at epoch 2/2: the norm of prompt_learner's trainable tensors" in line
    assert "OPTIM.LR is 1e+06" in line
    assert f"the last complete checkpoint in {out} is kept" in line
    files = glob.glob(os.path.join(out, "prompt_learner", "model.pth.tar-*"))
    assert [os.path.basename(f) for f in files] == ["model.pth.tar-1"]
    assert _manifest(out)["last"] == "model.pth.tar-1"
    ctx = load_checkpoint(files[0])["state_dict"]["ctx"]
    assert ctx.norm() < 10  # the saved prompt is the sane one
    assert not os.path.exists(os.path.join(out, "results.json"))


@pytest.mark.parametrize(
    "term, stage1, nth, where",
    [
        ("ce", "2", 4, "epoch 2/3, batch 1/3"),  # stage 1: 3 batches per epoch
        ("diff", "1", 5, "epoch 3/3, batch 2/3"),  # stage 2 from epoch 2
        ("overfit", "1", 4, "epoch 3/3, batch 1/3"),
    ],
)
def test_non_finite_loss_names_term_epoch_batch_and_keeps_checkpoint(
    shapes_root, tiny_weights, tmp_path, capsys, monkeypatch, term, stage1, nth, where
):
    import types

    import torch.nn.functional as F

    import promptdiff.trainers.base
    import promptdiff.trainers.prompt_diffusion as pd_mod
    from promptdiff.diffusion import PromptDiffusion

    calls = {"n": 0}

    def poisoned(value):
        calls["n"] += 1
        return value * float("nan") if calls["n"] == nth else value

    if term == "ce":
        fake = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
        fake.cross_entropy = lambda *a, **k: poisoned(F.cross_entropy(*a, **k))
        monkeypatch.setattr(promptdiff.trainers.base, "F", fake)
    elif term == "diff":
        original = PromptDiffusion.training_loss

        def training_loss(self, *a, **k):
            loss, x0 = original(self, *a, **k)
            return poisoned(loss), x0

        monkeypatch.setattr(PromptDiffusion, "training_loss", training_loss)
    else:
        original_fit = pd_mod.PromptDiffusionMixin.overfit

        def fit(self, *a, **k):  # one call per batch (after any OVERFIT_LR auto calibration)
            result, acc = original_fit(self, *a, **k)
            result.targets = poisoned(result.targets)
            return result, acc

        monkeypatch.setattr(pd_mod.PromptDiffusionMixin, "overfit", fit)
    out = str(tmp_path / "nan")
    args = _diff_args(shapes_root, tiny_weights, out, "TRAINER.PD.STAGE1_EPOCHS", stage1)
    assert cli(args) == 1
    line = _error(capsys)
    assert f"The {term} loss is not finite at {where}; training stopped" in line
    good = int(where.split()[1].split("/")[0]) - 1
    assert _manifest(out)["last"] == f"model.pth.tar-{good}"
    monkeypatch.undo()
    ev = _diff_args(shapes_root, tiny_weights, str(tmp_path / "ev"), "TRAINER.PD.STAGE1_EPOCHS",
                    stage1)  # fmt: skip
    assert cli(["--eval-only", "--model-dir", out, "--load-epoch", str(good), *ev]) == 0
    for model in MODELS:
        state = load_checkpoint(os.path.join(out, model, f"model.pth.tar-{good}"))["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ---- checkpoint frequency, output folders, disks and modes ------------------------------------


def test_checkpoint_freq_overrides_per_epoch_default(shapes_root, tiny_weights, tmp_path):
    out = str(tmp_path / "freq")
    args = _coop_args(shapes_root, tiny_weights, out, "OPTIM.MAX_EPOCH", "3",
                      "TRAIN.CHECKPOINT_FREQ", "2")  # fmt: skip
    assert cli(args) == 0
    names = sorted(os.listdir(os.path.join(out, "prompt_learner")))
    assert names == ["checkpoint", "model.pth.tar-2", "model.pth.tar-3"]
    assert sorted(_manifest(out)["units"]) == ["model.pth.tar-2", "model.pth.tar-3"]


def test_damaged_last_unit_falls_back_to_the_previous_complete_one(
    shapes_root, tiny_weights, tmp_path
):
    out = str(tmp_path / "freq")
    args = _coop_args(shapes_root, tiny_weights, out, "OPTIM.MAX_EPOCH", "3",
                      "TRAIN.CHECKPOINT_FREQ", "1")  # fmt: skip
    assert cli(args) == 0
    last = os.path.join(out, "prompt_learner", "model.pth.tar-3")
    ctx = load_checkpoint(last)["state_dict"]["ctx"]
    accuracy = read_results(out)["accuracy"]
    os.remove(os.path.join(out, "results.json"))
    with open(last, "r+b") as f:  # damaged on disk after it was written
        f.truncate(100)
    assert cli(args) == 0
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "Cannot resume from model.pth.tar-3 (Cannot read checkpoint" in log
    assert "Resumed from the checkpoint of epoch 2 (model.pth.tar-2" in log
    assert torch.equal(load_checkpoint(last)["state_dict"]["ctx"], ctx)  # epoch 3 redone exactly
    assert read_results(out)["accuracy"] == accuracy


def _zero_shot(shapes_root: str, tiny_weights: str, out: str) -> list[str]:
    args = train_args(shapes_root, out, "ZeroshotCLIP", "CoOp/vit_b16_ep50", tiny_weights,
                      prec_key="ZSCLIP")  # fmt: skip
    return ["--eval-only", *args]


def test_output_folder_in_use_is_refused_and_stale_lock_taken_over(
    shapes_root, tiny_weights, tmp_path, capsys
):
    out = str(tmp_path / "zs")
    os.makedirs(out)
    lock = os.path.join(out, LOCK_NAME)
    live = subprocess.Popen(["sleep", "60"])
    try:
        with open(lock, "w") as f:
            f.write(f"{live.pid} {socket.gethostname()}\n")
        assert cli(_zero_shot(shapes_root, tiny_weights, out)) == 1
        line = _error(capsys)
        assert f"Output folder {out} is in use by process {live.pid}" in line
        assert not os.path.exists(os.path.join(out, "results.json"))
    finally:
        live.kill()
        live.wait()
    # the holder is gone (killed without cleaning up): its lock is taken over
    assert cli(_zero_shot(shapes_root, tiny_weights, out)) == 0
    assert os.path.exists(os.path.join(out, "results.json")) and not os.path.exists(lock)


def test_read_only_output_folder_is_one_sentence(
    shapes_root, tiny_weights, tmp_path, capsys, monkeypatch
):
    out = str(tmp_path / "ro")
    os.makedirs(out)
    real_open = os.open

    def read_only(path, *a, **k):  # root ignores chmod, so the file system says it
        if str(path).startswith(out):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    assert cli(_zero_shot(shapes_root, tiny_weights, out)) == 1
    line = _error(capsys)
    assert f"Cannot write {out}/{LOCK_NAME} (Read-only file system, EROFS)" in line
    assert f"make {out} writable or choose another output folder" in line


def test_full_disk_during_a_save_keeps_the_last_complete_checkpoint(
    shapes_root, tiny_weights, tmp_path, capsys, monkeypatch
):
    out = str(tmp_path / "full")
    real_save = torch.save

    def save(obj, f, *a, **k):
        denoiser = isinstance(obj, dict) and "stats.count" in obj.get("state_dict", {})
        if denoiser and obj["epoch"] == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    args = _diff_args(shapes_root, tiny_weights, out)
    assert cli(args) == 1
    line = _error(capsys)
    assert f"Cannot write {out}/denoiser/model.pth.tar-2 (No space left on device, ENOSPC)" in line
    assert f"the last complete checkpoint (model.pth.tar-1 in {out}) is kept" in line
    assert f"free disk space for {out}/denoiser" in line
    assert _manifest(out)["last"] == "model.pth.tar-1" and _tmp_files(out) == []
    assert not os.path.exists(os.path.join(out, "prompt_learner", "model.pth.tar-2"))
    monkeypatch.undo()
    assert cli(args) == 0  # space freed: the same command continues from epoch 1
    assert read_results(out)["epoch"] == 3


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_honour_the_umask(shapes_root, tiny_weights, tmp_path, umask):
    old = os.umask(umask)
    try:
        path = str(tmp_path / "a.json")
        atomic_write(path, lambda f: f.write("{}"))
        out = str(tmp_path / "zs")
        assert cli(_zero_shot(shapes_root, tiny_weights, out)) == 0
    finally:
        os.umask(old)
    for written in (path, os.path.join(out, "results.json")):
        assert os.stat(written).st_mode & 0o777 == 0o666 & ~umask


def test_best_val_unit_is_recorded_and_loaded(shapes_root, tiny_weights, tmp_path):
    out = str(tmp_path / "best")
    opts = ("TEST.FINAL_MODEL", "best_val")
    assert cli(_coop_args(shapes_root, tiny_weights, out, *opts)) == 0
    manifest = _manifest(out)
    assert manifest["last"] == "model.pth.tar-2" and "model-best.pth.tar" in manifest["units"]
    best = manifest["units"]["model-best.pth.tar"]
    ckpt = load_checkpoint(os.path.join(out, "prompt_learner", "model-best.pth.tar"))
    assert ckpt["epoch"] == best["epoch"] and ckpt["val_result"] == best["val_result"]
    assert read_results(out)["epoch"] == best["epoch"]  # results describe the deployed model
    ev = str(tmp_path / "ev")
    assert cli(["--eval-only", "--model-dir", out, *_coop_args(shapes_root, tiny_weights, ev)]) == 0
    assert read_results(ev)["accuracy"] == read_results(out)["accuracy"]
