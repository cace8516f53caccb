"""Validation before work: every bad input below exits non-zero before any training, with one
sentence naming the key, file or path (issue 9, part B)."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import read_json, train_args, write_json
from synthetic_layouts import LAYOUTS, make_imagenet, make_imagenet_sketch

import promptdiff.datasets  # noqa: F401  (registers every dataset)
from promptdiff.datasets.common import IMAGE_EXTENSIONS
from promptdiff.diffusion import (
    FORMULATIONS,
    OPTIMIZERS,
    PREDICTIONS,
    SAMPLERS,
    SCHEDULES,
    TARGET_MODES,
)
from promptdiff.engine import get_cfg_default, set_random_seed, setup_logger
from promptdiff.engine.data import ImageReadError, read_image
from promptdiff.engine.registry import build_dataset
from promptdiff.engine.trainer import UNIMPLEMENTED_KEYS, check_implemented
from promptdiff.tools import check_dataset
from promptdiff.worlds.shapes_caltech import make_shapes_caltech
from train import cli

CFG = "CoOp/vit_b16_ep50"
DIFF_CFG = "CoOpDiff/vit_b16_ep50_ctxv1"
SPLIT = os.path.join("caltech-101", "split_zhou_Caltech101.json")
IMAGES = os.path.join("caltech-101", "101_ObjectCategories")


def error_line(capsys) -> str:
    """The single stderr line of a failed run."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def assert_nothing_trained(out: str) -> None:
    assert not os.path.exists(os.path.join(out, "prompt_learner"))
    assert not os.path.exists(os.path.join(out, "results.json"))


@pytest.fixture
def data(tmp_path) -> str:
    """A small Caltech101-layout dataset of our own (tests here damage it)."""
    return make_shapes_caltech(str(tmp_path / "data"), n_classes=4, n_per_class=6)


def build(root: str, name: str = "Caltech101", shots: int = -1):
    setup_logger(None)  # log to this test's stdout, not to one an earlier cli() run captured
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS, cfg.SEED = root, name, shots, 1
    set_random_seed(1)
    return build_dataset(cfg)


# ---------------------------------------------------------------------------------------------
# 1. TRAINER.PD.* at build time, against the diffusion core's lists


@pytest.mark.parametrize(
    "opts, expected",
    [
        (("TRAINER.PD.SAMPLER", "foo"), ["TRAINER.PD.SAMPLER 'foo'", ", ".join(SAMPLERS)]),
        (("TRAINER.PD.FORMULATION", "ve"), ["TRAINER.PD.FORMULATION", ", ".join(FORMULATIONS)]),
        (("TRAINER.PD.SCHEDULE", "sqrt"), ["TRAINER.PD.SCHEDULE", ", ".join(SCHEDULES)]),
        (("TRAINER.PD.PREDICTION", "score"), ["TRAINER.PD.PREDICTION", ", ".join(PREDICTIONS)]),
        (("TRAINER.PD.TARGET", "delta"), ["TRAINER.PD.TARGET", ", ".join(TARGET_MODES)]),
        (
            ("TRAINER.PD.OVERFIT_OPTIM", "lbfgs"),
            ["TRAINER.PD.OVERFIT_OPTIM", ", ".join(OPTIMIZERS)],
        ),
        (("TRAINER.PD.STEPS", "200"), ["TRAINER.PD.STEPS 200", "TRAINER.PD.TIMESTEPS 100"]),
        (("TRAINER.PD.EMA", "2.0"), ["TRAINER.PD.EMA", "[0, 1)"]),
        (("TRAINER.PD.EMA", "1.0"), ["TRAINER.PD.EMA", "[0, 1)"]),
        (("TRAINER.PD.EMA", "-0.5"), ["TRAINER.PD.EMA", "[0, 1)"]),
        (("TRAINER.PD.DROPOUT", "1.0"), ["TRAINER.PD.DROPOUT"]),
        (("TRAINER.PD.WIDTH", "100", "TRAINER.PD.HEADS", "8"), ["WIDTH 100", "HEADS 8"]),
        (("TRAINER.PD.OVERFIT_STEPS", "0"), ["TRAINER.PD.OVERFIT_STEPS 0", "STAGE1_EPOCHS"]),
        (("TRAINER.PD.TIMESTEPS", "0"), ["TRAINER.PD.TIMESTEPS"]),
        (("TRAINER.PD.DEPTH", "0"), ["TRAINER.PD.DEPTH"]),
        (("TRAINER.PD.LR", "0.0"), ["TRAINER.PD.LR"]),
        (
            ("TRAINER.PD.FORMULATION", "flow", "TRAINER.PD.PREDICTION", "eps"),
            ["TRAINER.PD.PREDICTION 'eps'", "TRAINER.PD.FORMULATION 'flow'"],
        ),
    ],
)
def test_bad_pd_key_fails_before_training(
    shapes_root, tiny_weights, tmp_path, capsys, opts, expected
):
    out = str(tmp_path / "out")
    args = train_args(shapes_root, out, "CoOpDiff", DIFF_CFG, tiny_weights, "OPTIM.MAX_EPOCH", "2",
                      "TRAINER.PD.STAGE1_EPOCHS", "1", *opts)  # fmt: skip
    assert cli(args) == 1
    line = error_line(capsys)
    for text in expected:
        assert text in line
    assert_nothing_trained(out)


def _pd_check(*opts: str) -> None:
    import promptdiff.trainers  # noqa: F401
    from promptdiff.config_keys import extend_cfg
    from promptdiff.engine import TRAINER_REGISTRY

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_list(["OPTIM.MAX_EPOCH", 2, "TRAINER.PD.STAGE1_EPOCHS", 1, *opts])
    cls = TRAINER_REGISTRY.get("CoOpDiff")
    cls.check_cfg(object.__new__(cls), cfg)


def test_pd_check_accepts_what_the_core_accepts():
    # every name of the core's lists passes, and STEPS > TIMESTEPS only matters for vp
    for sampler in SAMPLERS:
        _pd_check("TRAINER.PD.SAMPLER", sampler)
    for pred in PREDICTIONS:
        _pd_check("TRAINER.PD.PREDICTION", pred)
    _pd_check("TRAINER.PD.FORMULATION", "flow", "TRAINER.PD.STEPS", 200)
    _pd_check("TRAINER.PD.EMA", 0.0, "TRAINER.PD.OVERFIT_STEPS", 0, "TRAINER.PD.STAGE1_EPOCHS", 2)
    with pytest.raises(ValueError, match="TRAINER.PD.STEPS 200"):
        _pd_check("TRAINER.PD.FORMULATION", "vp", "TRAINER.PD.STEPS", 200)


# ---------------------------------------------------------------------------------------------
# 2. --eval-only without --model-dir; 3. INPUT.SIZE against the backbone


@pytest.mark.parametrize("trainer, cfg", [("CoOp", CFG), ("CoOpDiff", DIFF_CFG)])
def test_eval_only_needs_model_dir(shapes_root, tiny_weights, tmp_path, capsys, trainer, cfg):
    out = str(tmp_path / "out")
    assert cli(["--eval-only", *train_args(shapes_root, out, trainer, cfg, tiny_weights)]) == 1
    line = error_line(capsys)
    assert "--eval-only" in line and "--model-dir" in line and trainer in line
    assert not os.path.exists(os.path.join(out, "results.json"))


@pytest.mark.parametrize("trainer, prec", [("CoOp", "COOP"), ("ZeroshotCLIP", "ZSCLIP")])
def test_input_size_must_match_backbone(shapes_root, tiny_weights, tmp_path, capsys, trainer, prec):
    out = str(tmp_path / "out")
    args = train_args(shapes_root, out, trainer, CFG, tiny_weights, "INPUT.SIZE", "(64, 64)",
                      prec_key=prec)  # fmt: skip
    assert cli(["--eval-only", *args] if trainer == "ZeroshotCLIP" else args) == 1
    line = error_line(capsys)
    assert "INPUT.SIZE (64, 64)" in line and "32x32" in line and "(32, 32)" in line
    assert_nothing_trained(out)


# ---------------------------------------------------------------------------------------------
# 4. malformed config and split files


def test_malformed_yaml_names_file_and_line(shapes_root, tiny_weights, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM:\n  NAME: sgd\n   LR: 0.1\n")
    args = train_args(shapes_root, str(tmp_path / "o"), "CoOp", CFG, tiny_weights)
    args[args.index("--config-file") + 1] = str(bad)
    assert cli(args) == 1
    line = error_line(capsys)
    assert str(bad) in line and "line 3" in line
    bad.write_text("- a\n- b\n")
    assert cli(args) == 1
    assert str(bad) in error_line(capsys)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "is not valid JSON"),
        ('{"train": [], "test": []}', "train, val, test"),
        ('{"train": [["a.png", 0]], "val": [], "test": []}', "train[0]"),
        ('{"train": [["a.png", "zero", "a"]], "val": [], "test": []}', "train[0]"),
    ],
)
def test_malformed_split_file_names_it(data, tiny_weights, tmp_path, capsys, content, expected):
    split = os.path.join(data, SPLIT)
    with open(split, "w") as f:
        f.write(content)
    out = str(tmp_path / "o")
    assert cli(train_args(data, out, "CoOp", CFG, tiny_weights)) == 1
    line = error_line(capsys)
    assert split in line and expected in line
    assert_nothing_trained(out)


def test_out_of_range_label_in_split_is_an_error(data, tiny_weights, tmp_path, capsys):
    build(data)  # writes the split
    split = os.path.join(data, SPLIT)
    content = read_json(split)
    n_classes = 1 + max(label for _, label, _ in content["train"])
    path = content["test"][0][0]
    content["test"][0][1] = n_classes  # one past the last class
    write_json(content, split)
    out = str(tmp_path / "o")
    assert cli(train_args(data, out, "CoOp", CFG, tiny_weights)) == 1
    line = error_line(capsys)
    assert split in line and path in line and f"label {n_classes}" in line
    assert_nothing_trained(out)


def test_out_of_range_label_in_fewshot_cache_is_an_error(data):
    ds = build(data, shots=2)
    cache = os.path.join(data, "caltech-101", "split_fewshot", "shot_2-seed_1.json")
    content = read_json(cache)
    assert len(content["train"]) == 2 * ds.num_classes
    content["train"][0][1] = -1
    write_json(content, cache)
    with pytest.raises(ValueError, match=cache):
        build(data, shots=2)


# ---------------------------------------------------------------------------------------------
# 5. image files


def test_stray_files_in_class_folders_are_ignored(data):
    folder = os.path.join(data, IMAGES, sorted(os.listdir(os.path.join(data, IMAGES)))[-1])
    for name in ("notes.txt", "Thumbs.db", "archive.zip"):
        with open(os.path.join(folder, name), "w") as f:
            f.write("not an image")
    shutil.copy(os.path.join(folder, "image_0000.png"), os.path.join(folder, "UPPER.PNG"))
    ds = build(data)
    paths = [x.impath for x in ds.train_x + ds.val + ds.test]
    assert all(p.lower().endswith(IMAGE_EXTENSIONS) for p in paths)
    assert os.path.join(folder, "UPPER.PNG") in paths  # extensions match in any case
    assert len(paths) == 4 * 6 + 1
    listed = [item[0] for key in ("train", "val", "test") for item in read_json(
        os.path.join(data, SPLIT))[key]]  # fmt: skip
    assert not any(p.endswith((".txt", ".db", ".zip")) for p in listed)


def test_bad_split_images_reported_by_count_and_path(data, tiny_weights, tmp_path, capsys):
    ds = build(data)
    removed = [x.impath for x in ds.test[:4]]
    for path in removed:
        os.remove(path)
    empty = ds.test[4].impath
    open(empty, "w").close()  # zero bytes
    out = str(tmp_path / "o")
    assert cli(train_args(data, out, "CoOp", CFG, tiny_weights)) == 1
    line = error_line(capsys)
    total = len(ds.train_x) + len(ds.val) + len(ds.test)
    assert f"5 of the {total} images" in line and os.path.join(data, SPLIT) in line
    # the first few by path (split order: train, val, test), then a count of the rest
    assert removed[0] in line and "and 2 more" in line
    assert_nothing_trained(out)


def test_zero_byte_image_in_generated_split_is_an_error(data):
    folder = os.path.join(data, IMAGES, sorted(os.listdir(os.path.join(data, IMAGES)))[1])
    empty = os.path.join(folder, "image_0003.png")
    open(empty, "w").close()
    with pytest.raises(FileNotFoundError, match=f"{empty} \\(empty\\)"):
        build(data)


def test_zero_byte_and_missing_fgvc_images_counted(tmp_path):
    root = LAYOUTS["FGVCAircraft"](str(tmp_path / "data"))
    ds = build(root, "FGVCAircraft")
    empty, gone = ds.test[0].impath, ds.test[1].impath
    open(empty, "w").close()
    os.remove(gone)
    listing = os.path.join(root, "fgvc_aircraft", "images_variant_test.txt")
    with pytest.raises(FileNotFoundError, match=f"2 of the {len(ds.test)} images listed in "
                       f"{listing} are missing, unreadable or empty: {empty} \\(empty\\), {gone} \\(missing\\)"):  # fmt: skip
        build(root, "FGVCAircraft")


def _truncate(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read()
    with open(path, "wb") as f:
        f.write(head[: len(head) // 2])


def test_undecodable_image_is_one_sentence(tmp_path):
    path = str(tmp_path / "x.png")
    make_shapes_caltech(str(tmp_path / "d"), n_classes=1, n_per_class=1)
    src = os.path.join(str(tmp_path / "d"), IMAGES)
    shutil.copy(os.path.join(src, os.listdir(src)[0], "image_0000.png"), path)
    _truncate(path)
    with pytest.raises(ImageReadError, match=path):
        read_image(path)
    with open(path, "w") as f:
        f.write("plain text with an image name")
    with pytest.raises(ImageReadError, match=path):
        read_image(path)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_undecodable_test_image_through_train_py(data, tiny_weights, tmp_path, capsys, workers):
    ds = build(data)
    bad = ds.test[-1].impath
    _truncate(bad)
    args = train_args(data, str(tmp_path / "o"), "ZeroshotCLIP", CFG, tiny_weights,
                      "DATALOADER.NUM_WORKERS", workers, prec_key="ZSCLIP")  # fmt: skip
    assert cli(["--eval-only", *args]) == 1
    line = error_line(capsys)  # one line, also when a DataLoader worker raised it
    assert line.startswith(f"error: Image {bad} cannot be read")


# ---------------------------------------------------------------------------------------------
# 6. permissions


def _deny_stat(monkeypatch, denied: str) -> None:
    """os.stat raising PermissionError below `denied`, as for a folder without read/search
    permission (tests may run as root, which no chmod stops)."""
    real = os.stat

    def stat(path, *a, **kw):
        if os.path.abspath(os.fspath(path)).startswith(denied + os.sep):
            raise PermissionError(13, "Permission denied", path)
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "stat", stat)


def test_unreadable_dataset_folder_says_permission_denied(data, tiny_weights, tmp_path, capsys,
                                                          monkeypatch):  # fmt: skip
    _deny_stat(monkeypatch, os.path.abspath(data))
    assert cli(train_args(data, str(tmp_path / "o"), "CoOp", CFG, tiny_weights)) == 1
    line = error_line(capsys)
    assert "Permission denied" in line and os.path.join(data, "caltech-101") in line
    assert "does not exist" not in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder whatever its mode")
def test_unreadable_dataset_folder_real_chmod(data, tiny_weights, tmp_path, capsys):
    os.chmod(data, 0)
    try:
        assert cli(train_args(data, str(tmp_path / "o"), "CoOp", CFG, tiny_weights)) == 1
    finally:
        os.chmod(data, 0o755)
    assert "Permission denied" in error_line(capsys)


def test_read_only_dataset_root_warns_and_continues(data, tiny_weights, tmp_path, capsys,
                                                     monkeypatch):  # fmt: skip
    import promptdiff.datasets.common as common

    folder = os.path.join(data, "caltech-101")

    def read_only(obj, path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(common, "write_json", read_only)
    out = str(tmp_path / "o")
    args = train_args(data, out, "ZeroshotCLIP", CFG, tiny_weights, "DATASET.NUM_SHOTS", "2",
                      prec_key="ZSCLIP")  # fmt: skip
    assert cli(["--eval-only", *args]) == 0
    stdout = capsys.readouterr().out
    split = os.path.join(folder, "split_zhou_Caltech101.json")
    cache = os.path.join(folder, "split_fewshot", "shot_2-seed_1.json")
    assert f"cannot write the split file {split} (Permission denied)" in stdout
    assert f"cannot write the few-shot cache file {cache} (Permission denied)" in stdout
    assert not os.path.exists(split)
    assert os.path.isfile(os.path.join(out, "results.json"))


# ---------------------------------------------------------------------------------------------
# 7. ImageNet labels come from classnames.txt


def test_imagenet_missing_val_class_with_cached_fewshot_is_an_error(tmp_path):
    root = make_imagenet(str(tmp_path / "data"), n_classes=4, n_per_class=8)
    first = build(root, "ImageNet", shots=2)  # writes the few-shot cache
    wnids = sorted(os.listdir(os.path.join(root, "imagenet", "images", "val")))
    # labels are positions in the (sorted) class list
    assert {x.label: x.classname for x in first.test} == {
        i: dict(line.split(" ", 1) for line in open(os.path.join(root, "imagenet",
                "classnames.txt")).read().splitlines())[w] for i, w in enumerate(wnids)
    }  # fmt: skip
    shutil.rmtree(os.path.join(root, "imagenet", "images", "val", wnids[0]))
    with pytest.raises(FileNotFoundError, match=f"1 of the 4 classes .*{wnids[0]}"):
        build(root, "ImageNet", shots=2)


def test_imagenet_sketch_missing_class_is_an_error(tmp_path):
    root = make_imagenet_sketch(str(tmp_path / "data"), n_classes=4)
    images = os.path.join(root, "imagenet-sketch", "images")
    gone = sorted(os.listdir(images))[1]
    shutil.rmtree(os.path.join(images, gone))
    with pytest.raises(FileNotFoundError, match=gone):
        build(root, "ImageNetSketch")


# ---------------------------------------------------------------------------------------------
# 8. tools/check_dataset.py


def run_checker(capsys, root, *names):
    rc = check_dataset.main(["--root", str(root), *names])
    return rc, capsys.readouterr().out


def test_checker_lists_all_missing_and_zero_byte_images(data, capsys):
    ds = build(data)
    removed = [x.impath for x in ds.test[:5]]
    for path in removed:
        os.remove(path)
    empty = ds.train_x[0].impath
    open(empty, "w").close()
    rc, out = run_checker(capsys, data, "Caltech101")
    assert rc == 1
    assert all(p in out for p in removed[:3]) and "and 2 more" in out
    assert "5 of " in out and "zero bytes" in out and empty in out


def test_checker_flags_missing_imagenet_val_class_and_empty_class_folder(tmp_path, capsys):
    root = make_imagenet(str(tmp_path / "data"), n_classes=4, n_per_class=8)
    val = os.path.join(root, "imagenet", "images", "val")
    gone = sorted(os.listdir(val))[2]
    shutil.rmtree(os.path.join(val, gone))
    rc, out = run_checker(capsys, root, "ImageNet")
    assert rc == 1 and f"class folders in {val} for 1 of the 4 classes" in out and gone in out

    data = make_shapes_caltech(str(tmp_path / "c"), n_classes=3, n_per_class=6)
    added = os.path.join(data, IMAGES, "zebra")
    os.makedirs(added)
    with open(os.path.join(added, "notes.txt"), "w") as f:
        f.write("todo")
    rc, out = run_checker(capsys, data, "Caltech101")
    assert rc == 1 and "images in 1 class folders" in out and added in out


# ---------------------------------------------------------------------------------------------
# 9. Dassl keys this engine accepts but does not implement


def _other_value(default) -> str:
    """A command-line value of the default's type that differs from it."""
    if isinstance(default, bool):
        return str(not default)
    if isinstance(default, (int, float)):
        return str(default + 3)
    if isinstance(default, str):
        return "other"
    return "(1,)"  # a tuple


@pytest.mark.parametrize("key", UNIMPLEMENTED_KEYS)
def test_unimplemented_dassl_key_rejected_with_a_sentence(key):
    cfg = get_cfg_default()
    value = cfg
    for part in key.split("."):
        value = value[part]
    check_implemented(cfg)  # the default passes
    cfg.merge_from_list([key, _other_value(value)])
    with pytest.raises(ValueError) as err:
        check_implemented(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{key} is ") and msg.count(". ") == 0 and msg.endswith(".")
    assert f"does not implement {key}" in msg and "--host dassl" in msg


def test_default_dassl_keys_pass_in_every_config():
    """Every shipped trainer config (merged as train.py does) keeps those keys at their defaults."""
    import glob

    import promptdiff.trainers  # noqa: F401  (declares the trainers' keys)
    from promptdiff.config_keys import extend_cfg
    from promptdiff.engine.config import merge_file

    files = sorted(glob.glob("configs/trainers/*/*.yaml"))
    assert files
    for path in files:
        cfg = get_cfg_default()
        extend_cfg(cfg)
        merge_file(cfg, path)
        check_implemented(cfg)


@pytest.mark.parametrize(
    "opts", [("OPTIM.STAGED_LR", "True"), ("MODEL.HEAD.NAME", "mlp"), ("--head", "mlp")]
)
def test_unimplemented_dassl_key_fails_before_training(
    shapes_root, tiny_weights, tmp_path, capsys, opts
):
    out = str(tmp_path / "out")
    if opts[0].startswith("--"):  # Dassl's CLI flag for the same key
        args = [*opts, *train_args(shapes_root, out, "CoOp", CFG, tiny_weights)]
    else:
        args = train_args(shapes_root, out, "CoOp", CFG, tiny_weights, *opts)
    assert cli(args) == 1
    line = error_line(capsys)
    key = "MODEL.HEAD.NAME" if opts[0] == "--head" else opts[0]
    assert f"does not implement {key}" in line and "--host dassl" in line
    assert_nothing_trained(out)
