"""Zero silent wrong results, round two (issue 20): stale few-shot caches, non-finite checkpoints,
inconsistent splits, silently accepted options, evaluations replacing training records, failed
writes, interrupts, unclear messages and the read-only dataset root. Each numbered case of the
issue has its reproduction and a variant that is not the exact reproduction."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import read_json, read_results, train_args, write_json

import promptdiff.datasets  # noqa: F401  (registers every dataset)
from promptdiff.engine import get_cfg_default, set_random_seed, setup_logger
from promptdiff.engine.checkpoint import MANIFEST
from promptdiff.engine.registry import build_dataset
from promptdiff.engine.utils import LOCK_NAME
from promptdiff.results import tables
from promptdiff.results.record import read_run
from promptdiff.tools import predict as predict_tool
from promptdiff.worlds.shapes_caltech import class_names, make_shapes_caltech
from train import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = "CoOp/vit_b16_ep50_ctxv1"
ZS_CFG = "CoOp/vit_b16_ep50"
FOLDER = "caltech-101"
SPLIT = os.path.join(FOLDER, "split_zhou_Caltech101.json")
CACHE = os.path.join(FOLDER, "split_fewshot", "shot_2-seed_1.json")


def error_line(capsys) -> str:
    """The single stderr line of a failed run."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def data(tmp_path) -> str:
    """4 classes of 6 images (3 train, 1 val, 2 test each), ours to damage."""
    return make_shapes_caltech(str(tmp_path / "data"), n_classes=4, n_per_class=6)


def build(root: str, shots: int = -1):
    setup_logger(None)
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS, cfg.SEED = (
        root,
        "Caltech101",
        shots,
        1,
    )
    set_random_seed(1)
    return build_dataset(cfg)


def picks(ds) -> list[tuple[str, int, str]]:
    return [(d.impath, d.label, d.classname) for d in ds.train_x]


def assert_labels_match_folders(ds) -> None:
    """Every training image carries the label and name of the class folder it lies in."""
    for item in ds.train_x:
        folder = os.path.basename(os.path.dirname(item.impath))
        assert item.classname == folder, item
        assert ds.classnames[item.label] == folder, item


def zero_shot(root: str, out: str, weights: str, *opts: str) -> list[str]:
    return ["--eval-only", *train_args(root, out, "ZeroshotCLIP", ZS_CFG, weights, *opts,
                                       prec_key="ZSCLIP")]  # fmt: skip


def coop(root: str, out: str, weights: str, *opts: str) -> list[str]:
    return train_args(root, out, "CoOp", CFG, weights, "OPTIM.MAX_EPOCH", "2",
                      "DATASET.NUM_SHOTS", "2", *opts)  # fmt: skip


@pytest.fixture(scope="module")
def coop_run(shapes_root, tiny_weights, tmp_path_factory) -> str:
    """A finished 2-epoch CoOp run; tests copy it before damaging it."""
    out = str(tmp_path_factory.mktemp("coop") / "run")
    assert cli(coop(shapes_root, out, tiny_weights)) == 0
    return out


def copy_run(run: str, dst: Path) -> str:
    out = str(dst / "run")
    shutil.copytree(run, out)
    return out


def edit_checkpoint(path: str, edit) -> None:
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


# ---- 1. few-shot caches carry what they were drawn from ----------------------------------------


def test_fewshot_cache_is_redrawn_after_a_class_folder_is_added(data):
    first = build(data, shots=2)  # writes the split and the 4-class cache
    assert first.num_classes == 4
    # a fifth class folder, then the split regenerated as the error messages advise
    make_shapes_caltech(data, n_classes=5, n_per_class=6)
    os.remove(os.path.join(data, SPLIT))
    build(data)  # the new split (consumes the split RNG, as a first run does)
    again = build(data, shots=2)
    assert again.num_classes == 5 and sorted(again.classnames) == sorted(class_names(5))
    assert_labels_match_folders(again)
    assert {d.label for d in again.train_x} == set(range(5))
    assert read_json(os.path.join(data, CACHE))["source"]["classes"] == again.classnames
    # the redrawn subset is the one a run without any cache draws
    os.remove(os.path.join(data, CACHE))
    assert picks(build(data, shots=2)) == picks(again)


def test_fewshot_cache_is_redrawn_after_the_split_renames_a_class(data):
    build(data, shots=2)
    split = read_json(os.path.join(data, SPLIT))
    old = split["train"][0][2]
    for key in ("train", "val", "test"):
        split[key] = [[p, y, "crimson_dot" if c == old else c] for p, y, c in split[key]]
    write_json(split, os.path.join(data, SPLIT))
    ds = build(data, shots=2)
    assert "crimson_dot" in ds.classnames and old not in ds.classnames
    assert {d.classname for d in ds.train_x} == set(ds.classnames)


def test_fewshot_cache_without_source_is_used_while_it_fits_the_split(data):
    """Caches written before they recorded their source (and upstream's) still load when every
    image is in the split under the same label; one that is not is drawn again."""
    build(data, shots=2)
    cache = os.path.join(data, CACHE)
    content = read_json(cache)
    del content["source"]
    split = read_json(os.path.join(data, SPLIT))
    # another image of the same class, still in the split's train list
    path, label, name = content["train"][0]
    listed = {p for p, _, _ in content["train"]}
    other = next(f"101_ObjectCategories/{p}" for p, y, _ in split["train"]
                 if y == label and f"101_ObjectCategories/{p}" not in listed)  # fmt: skip
    content["train"][0] = [other, label, name]
    write_json(content, cache)
    kept = build(data, shots=2)
    assert sorted(picks(kept)) == sorted(
        (os.path.join(data, FOLDER, p), y, c) for p, y, c in content["train"]
    )
    # an image the split's train and val lists do not hold under that label: drawn again
    content["train"][0] = [f"101_ObjectCategories/{split['test'][0][0]}", *split["test"][0][1:]]
    write_json(content, cache)
    redrawn = build(data, shots=2)
    assert_labels_match_folders(redrawn)
    assert "source" in read_json(cache)


def test_stale_upstream_pickle_cache_is_redrawn(data, monkeypatch):
    from test_upstream import _upstream_pickle

    full = build(data)  # the split file, as a first upstream run writes it
    rows = [(x.impath, x.label, 0, x.classname) for x in full.train_x if x.label < 4][::3]
    pkl = os.path.join(data, FOLDER, "split_fewshot", "shot_2-seed_1.pkl")
    os.makedirs(os.path.dirname(pkl))
    with open(pkl, "wb") as f:
        f.write(_upstream_pickle(monkeypatch, {"train": rows, "val": []}))
    monkeypatch.undo()  # the reader must not need Dassl
    # a class folder sorted first shifts every label; the split is regenerated
    os.makedirs(os.path.join(data, FOLDER, "101_ObjectCategories", "aaa_blob"))
    for i in range(6):
        shutil.copy(rows[0][0], os.path.join(data, FOLDER, "101_ObjectCategories", "aaa_blob",
                                             f"{i}.png"))  # fmt: skip
    os.remove(os.path.join(data, SPLIT))
    build(data)
    ds = build(data, shots=2)
    assert ds.num_classes == 5 and ds.classnames[0] == "aaa_blob"
    assert_labels_match_folders(ds)
    assert os.path.isfile(os.path.join(data, CACHE))  # the redrawn subset, in this project's format


def test_imagenet_refuses_a_cache_drawn_for_other_classes(tmp_path):
    """ImageNet does not list its training images when a cache exists, so it cannot redraw."""
    from synthetic_layouts import make_imagenet

    root = make_imagenet(str(tmp_path / "data"), n_classes=4, n_per_class=8)
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS, cfg.SEED = root, "ImageNet", 2, 1
    build_dataset(cfg)  # writes the cache
    names = Path(root, "imagenet", "classnames.txt")
    lines = names.read_text().splitlines()
    lines[1] = lines[1].split(" ", 1)[0] + " renamed class"
    names.write_text("\n".join(lines) + "\n")
    cache = os.path.join(root, "imagenet", "split_fewshot", "shot_2-seed_1.json")
    with pytest.raises(ValueError, match=f"few-shot cache {cache} was drawn from another split"):
        build_dataset(cfg)


# ---- 2. non-finite checkpoints ----------------------------------------------------------------


def test_nan_context_is_refused_by_eval_only_and_predict(coop_run, shapes_root, tiny_weights,
                                                         tmp_path, capsys):  # fmt: skip
    run = copy_run(coop_run, tmp_path)
    path = os.path.join(run, "prompt_learner", "model.pth.tar-2")
    edit_checkpoint(path, lambda c: c["state_dict"]["ctx"].view(-1).__setitem__(3, float("nan")))
    ev = str(tmp_path / "ev")
    args = ["--eval-only", "--model-dir", run, "--load-epoch", "2", *coop(shapes_root, ev,
            tiny_weights)]  # fmt: skip
    assert cli(args) == 1
    line = error_line(capsys)
    assert f"Checkpoint {path} holds NaN or inf in the tensor ctx" in line
    assert not os.path.exists(os.path.join(ev, "results.json"))
    names = tmp_path / "names.txt"
    names.write_text("red circle\ngreen circle\n")
    image = os.path.join(shapes_root, FOLDER, "101_ObjectCategories", "red_circle",
                         "image_0000.png")  # fmt: skip
    argv = ["--model-dir", run, "--images", image, "--classnames", str(names), "--format", "json"]
    assert predict_tool.main(argv) == 1
    captured = capsys.readouterr()
    assert '"probability"' not in captured.out and "NaN" not in captured.out
    assert f"Checkpoint {path} holds NaN or inf in the tensor ctx" in captured.err


def test_non_finite_logits_never_reach_predict_output(coop_run, shapes_root, tmp_path, capsys,
                                                      monkeypatch):  # fmt: skip
    """A finite checkpoint whose model still gives NaN (here forced) is one sentence, not NaN."""
    import promptdiff

    predictor = promptdiff.load(coop_run)
    image = os.path.join(shapes_root, FOLDER, "101_ObjectCategories", "red_circle",
                         "image_0001.png")  # fmt: skip
    good = predictor.predict([image], ["red circle", "blue square"])
    assert torch.isfinite(good).all()
    trainer = predictor._trainer
    monkeypatch.setattr(trainer, "model_inference", lambda x: torch.full((len(x), 2), float("inf")))
    with pytest.raises(FloatingPointError, match="NaN or inf logits for images 1-1"):
        predictor.predict([image], ["red circle", "blue square"])


def test_inf_in_the_denoiser_ema_is_refused(shapes_root, tiny_weights, tmp_path, capsys):
    out = str(tmp_path / "diff")
    opts = ("OPTIM.MAX_EPOCH", "2", "TRAINER.PD.STAGE1_EPOCHS", "1", "DATASET.NUM_SHOTS", "1",
            "TRAINER.PD.WIDTH", "16", "TRAINER.PD.DEPTH", "1", "TRAINER.PD.HEADS", "2",
            "TRAINER.PD.OVERFIT_STEPS", "1")  # fmt: skip
    diff_cfg = "CoOpDiff/vit_b16_ep50_ctxv1"
    assert cli(train_args(shapes_root, out, "CoOpDiff", diff_cfg, tiny_weights, *opts)) == 0
    path = os.path.join(out, "denoiser", "model.pth.tar-2")
    state = torch.load(path, weights_only=True)["state_dict"]
    key = next(k for k, v in state.items() if k.startswith("ema.") and v.is_floating_point())

    def poison(ckpt):
        ckpt["state_dict"][key].view(-1)[0] = float("inf")

    edit_checkpoint(path, poison)
    ev = str(tmp_path / "ev")
    args = train_args(shapes_root, ev, "CoOpDiff", diff_cfg, tiny_weights, *opts)
    assert cli(["--eval-only", "--model-dir", out, "--load-epoch", "2", *args]) == 1
    assert f"Checkpoint {path} holds NaN or inf in the tensor {key}" in error_line(capsys)


# ---- 3. a split whose train list lacks a class ------------------------------------------------


def _drop_train_class(data: str) -> tuple[str, str]:
    build(data)  # writes the split
    path = os.path.join(data, SPLIT)
    split = read_json(path)
    gone = next(c for _, y, c in split["train"] if y == 1)
    split["train"] = [e for e in split["train"] if e[1] != 1]
    write_json(split, path)
    return path, gone


def test_split_lacking_a_train_class_is_refused_by_eval_only(data, tiny_weights, tmp_path, capsys):
    path, gone = _drop_train_class(data)
    out = str(tmp_path / "zs")
    assert cli(zero_shot(data, out, tiny_weights)) == 1
    line = error_line(capsys)
    assert path in line and f"1 ({gone})" in line and "no train image of the classes" in line
    assert not os.path.exists(os.path.join(out, "results.json"))


def test_split_lacking_a_train_class_is_refused_by_training(data, tiny_weights, tmp_path, capsys):
    path, gone = _drop_train_class(data)
    assert cli(coop(data, str(tmp_path / "coop"), tiny_weights)) == 1
    line = error_line(capsys)
    assert path in line and f"1 ({gone})" in line


def test_split_naming_a_label_twice_is_refused(data, tiny_weights, tmp_path, capsys):
    build(data)
    path = os.path.join(data, SPLIT)
    split = read_json(path)
    first = split["test"][0]
    split["test"][0] = [first[0], first[1], "not_" + first[2]]
    write_json(split, path)
    assert cli(zero_shot(data, str(tmp_path / "zs"), tiny_weights)) == 1
    line = error_line(capsys)
    assert path in line and f"calls label {first[1]} '{first[2]}' in its train list" in line


# ---- 4. silently accepted options, a misplaced seed -------------------------------------------


@pytest.mark.parametrize("shots, expected, warned", [("1000", 3, True), ("4", 3, True),
                                                     ("2", 2, False)])  # fmt: skip
def test_num_shots_beyond_the_images_warns_and_records_the_true_count(
    data, tiny_weights, tmp_path, capsys, shots, expected, warned
):
    out = str(tmp_path / "zs")
    assert cli(zero_shot(data, out, tiny_weights, "DATASET.NUM_SHOTS", shots)) == 0
    assert read_results(out)["num_shots"] == expected
    stdout = capsys.readouterr().out
    assert (f"DATASET.NUM_SHOTS is {shots}, but 4 of the 4 classes" in stdout) == warned


@pytest.mark.parametrize("key, value", [("TEST.SPLIT", "foo"), ("TEST.FINAL_MODEL", "foo"),
                                        ("TEST.SPLIT", "Test")])  # fmt: skip
def test_unknown_test_keys_are_refused(shapes_root, tiny_weights, tmp_path, capsys, key, value):
    out = str(tmp_path / "zs")
    assert cli(zero_shot(shapes_root, out, tiny_weights, key, value)) == 1
    assert f"{key} {value!r} is unknown" in error_line(capsys)
    assert not os.path.exists(os.path.join(out, "results.json"))


def test_table_skips_a_result_whose_seed_disagrees_with_its_folder(tmp_path, capsys):
    def record(folder: Path, accuracy: float, seed: int, subsample: str) -> None:
        folder.mkdir(parents=True)
        metrics = {"accuracy": accuracy, "macro_f1": accuracy, "error": 100 - accuracy,
                   "total": 10, "correct": 1, "split": "test"}  # fmt: skip
        (folder / "results.json").write_text(
            json.dumps({**metrics, "seed": seed, "subsample_classes": subsample})
        )

    cell = ("caltech101", "shots_16", "CoOp", "vit_b16_ep50")
    for tree, subsample, values in (
        ("train_base", "base", (80, 90)),
        ("test_new", "new", (70, 60)),
    ):
        folder = tmp_path.joinpath("base2new", tree, *cell)
        record(folder / "seed1", values[0], 1, subsample)
        # seed 1's results copied into seed2: the seed-1 run counted twice
        record(folder / "seed2", values[1], 2 if tree == "test_new" else 1, subsample)
    [res] = tables.base2new_results(tmp_path)
    entry = res.entries[("caltech101", "CoOp")]
    assert entry.base.n == 1 and entry.base.mean == 80
    assert entry.new.n == 2
    err = capsys.readouterr().err
    assert "records seed 1 but lies in seed2 (skipped)" in err


# ---- 5. an evaluation never replaces another run's results ------------------------------------


def test_eval_only_into_its_own_training_folder_is_refused(coop_run, shapes_root, tiny_weights,
                                                           tmp_path, capsys):  # fmt: skip
    run = copy_run(coop_run, tmp_path)
    before = Path(run, "results.json").read_bytes()
    args = coop(shapes_root, run, tiny_weights, "DATASET.SUBSAMPLE_CLASSES", "new")
    assert cli(["--eval-only", "--model-dir", run, "--load-epoch", "2", *args]) == 1
    line = error_line(capsys)
    assert f"Output folder {run} holds a training run" in line and "another --output-dir" in line
    assert Path(run, "results.json").read_bytes() == before
    assert not os.path.exists(os.path.join(run, LOCK_NAME))
    # the results library reads the training run's record
    assert read_run(run).meta["subsample_classes"] == "all"


def test_eval_only_over_another_evaluation_is_refused_but_a_rerun_is_not(
    shapes_root, tiny_weights, tmp_path, capsys
):
    out = str(tmp_path / "zs")
    base = zero_shot(shapes_root, out, tiny_weights, "DATASET.SUBSAMPLE_CLASSES", "base")
    assert cli(base) == 0
    before = read_results(out)
    new = zero_shot(shapes_root, out, tiny_weights, "DATASET.SUBSAMPLE_CLASSES", "new")
    assert cli(new) == 1
    line = error_line(capsys)
    assert "holds the results of a run with other options" in line
    assert "DATASET.SUBSAMPLE_CLASSES: 'base' -> 'new'" in line
    assert read_results(out) == before
    # the same evaluation again (other test-time keys too) replaces its own record
    assert cli([*base, "DATALOADER.TEST.BATCH_SIZE", "5"]) == 0
    assert read_results(out)["accuracy"] == before["accuracy"]


# ---- 6. failed writes: the lock on a full disk, torch's own write error ------------------------


def _file_size_limit() -> None:
    # every write to a regular file fails (EFBIG), as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))


def test_lock_that_cannot_be_written_is_one_sentence_and_leaves_no_lock(coop_run, shapes_root,
                                                                       tiny_weights, tmp_path):  # fmt: skip
    run = copy_run(coop_run, tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "train.py", *coop(shapes_root, run, tiny_weights)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=_file_size_limit,
    )  # fmt: skip
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr[-2000:]
    assert err[0].startswith(f"error: Cannot write {run}/{LOCK_NAME} (File too large, EFBIG)")
    assert "nothing in the folder was changed" in err[0]
    assert not os.path.exists(os.path.join(run, LOCK_NAME))


def test_torch_serialisation_error_names_the_path_and_what_was_kept(
    shapes_root, tiny_weights, tmp_path, capsys, monkeypatch
):
    out = str(tmp_path / "coop")
    real_save = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            f.write(b"PK\x03\x04")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 320 vs 214"
            )
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    assert cli(coop(shapes_root, out, tiny_weights)) == 1
    line = error_line(capsys)
    path = os.path.join(out, "prompt_learner", "model.pth.tar-2")
    assert line.startswith(f"error: Cannot write {path} (torch.save could not finish the file")
    assert f"the last complete checkpoint (model.pth.tar-1 in {out}) is kept" in line
    assert read_json(os.path.join(out, MANIFEST))["last"] == "model.pth.tar-1"


# ---- 7. SIGINT and SIGTERM --------------------------------------------------------------------


def test_ctrl_c_mid_epoch_is_one_line_and_the_rerun_resumes(shapes_root, tiny_weights, tmp_path,
                                                            capsys, monkeypatch):  # fmt: skip
    from promptdiff.engine.trainer import TrainerX

    out = str(tmp_path / "coop")
    run_epoch = TrainerX.run_epoch

    def interrupted(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return run_epoch(self)

    monkeypatch.setattr(TrainerX, "run_epoch", interrupted)
    try:
        code = cli(coop(shapes_root, out, tiny_weights))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C reached the caller as a KeyboardInterrupt traceback")
    assert code == 128 + signal.SIGINT
    line = error_line(capsys)
    assert line == (
        f"error: Interrupted (SIGINT); the last complete checkpoint is model.pth.tar-1 (epoch 1) "
        f"in {out}, and running the same command again resumes from it."
    )
    assert not os.path.exists(os.path.join(out, LOCK_NAME))
    monkeypatch.undo()
    assert cli(coop(shapes_root, out, tiny_weights)) == 0
    assert read_results(out)["epoch"] == 2


def test_sigterm_is_one_line_naming_the_last_checkpoint(shapes_root, tiny_weights, tmp_path):
    out = str(tmp_path / "coop")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = coop(shapes_root, out, tiny_weights, "OPTIM.MAX_EPOCH", "200")
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 240
        while not os.path.exists(os.path.join(out, MANIFEST)) and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = err.strip().splitlines()
    assert proc.returncode == 128 + signal.SIGTERM and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("error: Interrupted (SIGTERM); the last complete checkpoint is ")
    assert f"in {out}, and running the same command again resumes from it." in lines[0]
    last = read_json(os.path.join(out, MANIFEST))["last"]
    assert f"is {last} (epoch" in lines[0]
    assert not os.path.exists(os.path.join(out, LOCK_NAME))


# ---- 8. unclear messages ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["--config-file", "--dataset-config-file"])
def test_binary_yaml_names_the_file(shapes_root, tiny_weights, tmp_path, capsys, which):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"OPTIM:\n  LR: 0.002\n\xff\xfe\x00junk\n")
    args = coop(shapes_root, str(tmp_path / "o"), tiny_weights)
    args[args.index(which) + 1] = str(bad)
    assert cli(args) == 1
    line = error_line(capsys)
    assert f"Config file '{bad}' is not UTF-8 text (byte 0xff)" in line


@pytest.mark.parametrize(
    "where, entry",
    [
        ("scheduler", "scheduler._schedulers.1.base_lrs.0"),
        ("optimizer lr", "optimizer.param_groups.0.lr"),
        ("momentum", "optimizer.state."),
    ],
)
def test_resuming_a_unit_holding_nan_is_one_sentence(coop_run, shapes_root, tiny_weights,
                                                     tmp_path, capsys, where, entry):  # fmt: skip
    run = copy_run(coop_run, tmp_path)
    path = os.path.join(run, "prompt_learner", "model.pth.tar-2")

    def poison(ckpt):
        if where == "scheduler":  # the unit the issue resumed from said "Invalid learning rate"
            ckpt["scheduler"]["_schedulers"][1]["base_lrs"][0] = float("nan")
        elif where == "optimizer lr":
            ckpt["optimizer"]["param_groups"][0]["lr"] = float("nan")
        else:
            state = next(iter(ckpt["optimizer"]["state"].values()))
            state["momentum_buffer"].view(-1)[0] = float("inf")

    edit_checkpoint(path, poison)
    assert cli(coop(shapes_root, run, tiny_weights)) == 1
    line = error_line(capsys)
    assert f"Checkpoint {path} holds NaN or inf in the entry {entry}" in line
    assert "Invalid learning rate" not in line


@pytest.mark.parametrize(
    "key, value",
    [
        ("DATALOADER.TRAIN_X.BATCH_SIZE", "0"),
        ("DATALOADER.TEST.BATCH_SIZE", "-4"),
        ("OPTIM.LR", "-0.1"),
        ("OPTIM.WEIGHT_DECAY", "-0.0005"),
    ],
)
def test_bad_batch_size_and_learning_rate_name_the_key(shapes_root, tiny_weights, tmp_path, capsys,
                                                       key, value):  # fmt: skip
    out = str(tmp_path / "coop")
    assert cli(coop(shapes_root, out, tiny_weights, key, value)) == 1
    line = error_line(capsys)
    assert line.startswith(f"error: {key} is {value}") or line.startswith(
        f"error: {key} is {float(value)!r}"
    )
    assert not os.path.exists(os.path.join(out, "prompt_learner"))


# ---- 9. the read-only dataset root ------------------------------------------------------------


def _read_only(monkeypatch, folder: str) -> None:
    """Writes under `folder` fail as on a read-only mount (tests may run as root)."""
    import promptdiff.fileio as fileio

    real = fileio.tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir and os.path.abspath(dir).startswith(folder):
            raise OSError(errno.EROFS, "Read-only file system", dir)
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("state", ["split file missing", "split_fewshot present"])
def test_read_only_dataset_root_warns_and_continues(data, tiny_weights, tmp_path, capsys,
                                                    monkeypatch, state):  # fmt: skip
    folder = os.path.join(data, FOLDER)
    if state == "split_fewshot present":
        build(data)  # the split file exists, the cache folder too (another shot count)
        os.makedirs(os.path.join(folder, "split_fewshot"))
    _read_only(monkeypatch, os.path.abspath(folder))
    out = str(tmp_path / "zs")
    assert cli(zero_shot(data, out, tiny_weights, "DATASET.NUM_SHOTS", "2")) == 0
    stdout = capsys.readouterr().out
    cache = os.path.join(folder, "split_fewshot", "shot_2-seed_1.json")
    assert f"cannot write the few-shot cache file {cache} (Read-only file system)" in stdout
    split = os.path.join(folder, "split_zhou_Caltech101.json")
    assert (f"cannot write the split file {split}" in stdout) == (state == "split file missing")
    assert not os.path.exists(cache)
    assert read_results(out)["num_shots"] == 2
