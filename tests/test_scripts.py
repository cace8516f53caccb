"""The experiment scripts (scripts/**) end to end: synthetic Caltech101, tiny CLIP, one epoch."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from promptdiff.backbone import save_tiny_clip
from promptdiff.results.record import METRICS, split_record
from promptdiff.worlds.shapes_caltech import make_shapes_caltech

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
TRAINED = ("base2new_train.sh", "base2new_test.sh", "xd_train.sh", "xd_test.sh", "few_shot.sh")
# trainer -> (config folder, default config, default config of the xd scripts)
TRAINERS = {
    "ZeroshotCLIP": ("CoOp", "vit_b16_ep50", "vit_b16_ep50"),
    "CoOp": ("CoOp", "vit_b16_ep50_ctxv1", "vit_b16_ep50_ctxv1"),
    "CoOpDiff": ("CoOpDiff", "vit_b16_ep50_ctxv1", "vit_b16_ep50_ctxv1"),
    "CoCoOp": ("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1", "vit_b16_c4_ep10_batch1_ctxv1"),
    "CoCoOpDiff": ("CoCoOpDiff", "vit_b16_c4_ep10_batch1_ctxv1", "vit_b16_c4_ep10_batch1_ctxv1"),
    "VPT": ("VPT", "vit_b16_c2_ep5_batch4_8ctx", "vit_b16_c2_ep5_batch4_8ctx"),
    "VPTDiff": ("VPTDiff", "vit_b16_c2_ep5_batch4_8ctx", "vit_b16_c2_ep5_batch4_8ctx"),
    "MaPLe": (
        "MaPLe",
        "vit_b16_c2_ep5_batch4_2ctx",
        "vit_b16_c2_ep5_batch4_2ctx_cross_datasets",
    ),
    "MaPLeDiff": (
        "MaPLeDiff",
        "vit_b16_c2_ep5_batch4_2ctx",
        "vit_b16_c2_ep5_batch4_2ctx_cross_datasets",
    ),
    "IVLP": ("IVLP", "vit_b16_c2_ep5_batch4_2+2ctx", "vit_b16_c2_ep5_batch4_2+2ctx"),
    "IVLPDiff": ("IVLPDiff", "vit_b16_c2_ep5_batch4_2+2ctx", "vit_b16_c2_ep5_batch4_2+2ctx"),
    "GenPT": ("GenPT", "vit_b16_c4_ep10_batch8_ctxv1", "vit_b16_ep50_ctxv1"),
    "GenPTDiff": ("GenPTDiff", "vit_b16_c4_ep10_batch8_ctxv1", "vit_b16_ep50_ctxv1"),
    "PromptSRC": (
        "PromptSRC",
        "vit_b16_c2_ep20_batch4_4+4ctx",
        "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets",
    ),
    "PromptSRCDiff": (
        "PromptSRCDiff",
        "vit_b16_c2_ep20_batch4_4+4ctx",
        "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets",
    ),
}
# few_shot.sh defaults that differ from the base-to-new one (GenPT: all classes, the xd config;
# PromptSRC: upstream's 50-epoch few-shot config)
FEW_SHOT_CFG = {
    "GenPT": "vit_b16_ep50_ctxv1",
    "GenPTDiff": "vit_b16_ep50_ctxv1",
    "PromptSRC": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot",
    "PromptSRCDiff": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot",
}
ALL_SCRIPTS = sorted(str(p.relative_to(REPO)) for p in SCRIPTS.glob("*/*.sh")) + [
    "scripts/run_base2new_all.sh",
    "scripts/run_xd_all.sh",
]
RUN = "shots_2/CoOp/vit_b16_ep50_ctxv1/seed1"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """DATA with 4 shape classes (8 images each) and EXTRA_OPTS whose values hold spaces."""
    tmp = tmp_path_factory.mktemp("scripts")
    weights = save_tiny_clip(str(tmp / "tiny clip" / "tiny.pt"))  # a path with a space
    data = make_shapes_caltech(str(tmp / "data"), n_classes=4, n_per_class=8)
    extra = (
        f"MODEL.BACKBONE.PATH {shlex.quote(weights)} TRAINER.COOP.PREC fp32 "
        'TRAINER.ZSCLIP.PREC fp32 INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH 1 '
        "DATALOADER.NUM_WORKERS 0 DATALOADER.TEST.BATCH_SIZE 8 DATALOADER.TRAIN_X.BATCH_SIZE 4"
    )
    return {"tmp": tmp, "data": data, "weights": weights, "extra": extra}


def run(setup: dict, output, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("CFG", "XD_SOURCE", "DRY_RUN")}
    full_env.update(
        DATA=setup["data"],
        OUTPUT=str(output),
        PYTHON=sys.executable,
        SHOTS="2",
        EXTRA_OPTS=setup["extra"],
    )
    full_env.update(env)
    return subprocess.run(
        ["bash", script, *args], cwd=REPO, env=full_env, capture_output=True, text=True
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def split_test_counts(setup: dict) -> tuple[int, int, int]:
    """Test images of the base classes, of the new classes, and in all (from the saved split)."""
    split = Path(setup["data"]) / "caltech-101" / "split_zhou_Caltech101.json"
    labels = [item[1] for item in json.loads(split.read_text())["test"]]
    m = math.ceil(len(set(labels)) / 2)  # base = the first half of the sorted labels
    base = sum(1 for y in labels if y < m)
    return base, len(labels) - base, len(labels)


@pytest.fixture(scope="module")
def trained(setup) -> Path:
    """OUTPUT after `base2new_train.sh caltech101 1` and `base2new_test.sh caltech101 1`."""
    out = setup["tmp"] / "output"
    ok(run(setup, out, "scripts/CoOp/base2new_train.sh", "caltech101", "1"))
    ok(run(setup, out, "scripts/CoOp/base2new_test.sh", "caltech101", "1"))
    return out


def test_every_trainer_has_short_scripts_that_source_common():
    import promptdiff.trainers  # noqa: F401  (registers the trainers)
    from promptdiff.host import TRAINER_REGISTRY

    registered = set(TRAINER_REGISTRY.registered_names())
    assert {p.name for p in SCRIPTS.iterdir() if p.is_dir()} == set(TRAINERS) == registered
    for trainer, (cfg_dir, cfg, xd_cfg) in TRAINERS.items():
        names = ("base2new_test.sh", "xd_test.sh") if trainer == "ZeroshotCLIP" else TRAINED
        assert sorted(p.name for p in (SCRIPTS / trainer).iterdir()) == sorted(names)
        for name in names:
            text = (SCRIPTS / trainer / name).read_text()
            assert len(text.splitlines()) <= 6, f"{trainer}/{name} should only name its trainer"
            default = xd_cfg if name.startswith("xd_") else cfg
            if name == "few_shot.sh":
                default = FEW_SHOT_CFG.get(trainer, default)
            assert f"TRAINER={trainer} CFG_DIR={cfg_dir} DEFAULT_CFG={default}\n" in text
            assert '/../common.sh"' in text


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_wrong_argument_count_exits_2(setup, tmp_path, script):
    proc = run(setup, tmp_path, script)
    assert proc.returncode == 2 and "usage: bash " in proc.stderr
    if not script.startswith("scripts/run_"):
        proc = run(setup, tmp_path, script, "caltech101", "1", "2", "3")
        assert proc.returncode == 2 and "usage: bash " in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_default_config_is_resolved_or_named(setup, tmp_path, trainer):
    """DRY_RUN=1 prints the train.py command; a config not written yet is named in the error."""
    cfg_dir, cfg, xd_cfg = TRAINERS[trainer]
    zero_shot = trainer == "ZeroshotCLIP"
    first = "base2new_test.sh" if zero_shot else "base2new_train.sh"
    # zero-shot CLIP evaluated on the xd source lands where the trained methods' source runs do
    xd = ("xd_test.sh", ("imagenet", "1")) if zero_shot else ("xd_train.sh", ("1",))
    for script, args, name in ((first, ("caltech101", "1"), cfg), (*xd, xd_cfg)):
        cfg_file = REPO / "configs" / "trainers" / cfg_dir / f"{name}.yaml"
        proc = run(setup, tmp_path, f"scripts/{trainer}/{script}", *args, DRY_RUN="1")
        if not cfg_file.is_file():
            assert proc.returncode == 1 and f"no trainer config {cfg_file}" in proc.stderr
            continue
        argv = shlex.split(ok(proc).splitlines()[0])
        assert argv[argv.index("--trainer") + 1] == trainer
        assert argv[argv.index("--config-file") + 1] == str(cfg_file)
        out = argv[argv.index("--output-dir") + 1]
        protocol = "base2new/train_base/caltech101" if script == first else "xd/train/imagenet"
        assert out == f"{tmp_path}/{protocol}/shots_2/{trainer}/{name}/seed1"
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def _dry_argv(setup, tmp_path, **env) -> list[str]:
    proc = run(
        setup, tmp_path, "scripts/CoOp/base2new_train.sh", "caltech101", "1", DRY_RUN="1", **env
    )
    return shlex.split(ok(proc).splitlines()[0])


def test_quiet_passes_quiet_to_train_py(setup, tmp_path):
    assert "--quiet" not in _dry_argv(setup, tmp_path)
    argv = _dry_argv(setup, tmp_path, QUIET="1")
    assert argv.index("--quiet") < argv.index("DATASET.NUM_SHOTS")  # a flag, before the options


def test_extra_opts_keep_spaces_and_parentheses_and_come_last(setup, tmp_path):
    argv = _dry_argv(setup, tmp_path)
    assert argv[-16:-12] == ["MODEL.BACKBONE.PATH", setup["weights"], "TRAINER.COOP.PREC", "fp32"]
    assert "(32, 32)" == argv[argv.index("INPUT.SIZE") + 1]
    assert argv.index("DATASET.NUM_SHOTS") < argv.index("MODEL.BACKBONE.PATH")  # EXTRA_OPTS win
    assert argv[argv.index("DATASET.SUBSAMPLE_CLASSES") + 1] == "base"
    # CFG picks another config of the trainer's folder; the output folder follows it
    argv = _dry_argv(setup, tmp_path, CFG="vit_b16_ep50")
    assert argv[argv.index("--config-file") + 1].endswith("configs/trainers/CoOp/vit_b16_ep50.yaml")
    assert argv[argv.index("--output-dir") + 1].endswith("/CoOp/vit_b16_ep50/seed1")
    for bad, message in (
        ("INPUT.SIZE (32, 32)", "KEY VALUE pairs"),  # an unquoted space splits the value
        ("INPUT.SIZE '(32, 32)", "cannot split EXTRA_OPTS"),
    ):
        proc = run(setup, tmp_path, "scripts/CoOp/base2new_train.sh", "caltech101", "1",
                   EXTRA_OPTS=bad)  # fmt: skip
        assert proc.returncode == 1 and message in proc.stderr


def test_missing_data_root_dataset_or_config_is_one_error_line(setup, tmp_path):
    script = "scripts/CoOp/base2new_train.sh"
    for env, args, needle in (
        ({"DATA": str(tmp_path / "nowhere")}, ("caltech101", "1"), f"DATA={tmp_path}/nowhere"),
        ({}, ("caltec", "1"), "configs/datasets/caltec.yaml"),
        ({"CFG": "nope"}, ("caltech101", "1"), "configs/trainers/CoOp/nope.yaml"),
        ({}, ("caltech101", "x"), "SEED must be a non-negative integer"),
    ):
        proc = run(setup, tmp_path, script, *args, **env)
        assert proc.returncode == 1 and needle in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_base2new_test_before_training_fails_with_one_line(setup, tmp_path):
    proc = run(setup, tmp_path, "scripts/CoOp/base2new_test.sh", "caltech101", "1")
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert str(tmp_path / "base2new/train_base/caltech101" / RUN) in line
    assert "scripts/CoOp/base2new_train.sh caltech101 1" in line
    assert not (tmp_path / "base2new" / "test_new").exists()


def test_base2new_train_then_test_write_results(setup, trained):
    n_base, n_new, _ = split_test_counts(setup)
    train_dir = trained / "base2new/train_base/caltech101" / RUN
    test_dir = trained / "base2new/test_new/caltech101" / RUN
    base, new = results(train_dir), results(test_dir)
    assert (base["subsample_classes"], base["total"], base["num_shots"]) == ("base", n_base, 2)
    assert (new["subsample_classes"], new["total"], new["num_shots"]) == ("new", n_new, 2)
    assert base["trainer"] == new["trainer"] == "CoOp" and new["seed"] == 1
    # the engine writes the record schema the readers read: the METRICS, the rest run fields
    metrics, meta = split_record(new)
    assert list(metrics) == list(METRICS) and metrics["total"] == n_new
    assert {"seed", "num_shots", "epoch", "split"} <= set(meta)
    log = (test_dir / "log.txt").read_text()
    assert f"Load {train_dir}/prompt_learner/model.pth.tar-1 to prompt_learner" in log


def test_second_call_skips_and_reruns_nothing(setup, trained):
    dirs = [
        trained / "base2new/train_base/caltech101" / RUN,
        trained / "base2new/test_new/caltech101" / RUN,
    ]

    def snapshot():
        return {p: p.stat().st_mtime_ns for d in dirs for p in d.rglob("*")}

    before = snapshot()
    for script, run_dir in zip(("base2new_train.sh", "base2new_test.sh"), dirs):
        out = ok(run(setup, trained, f"scripts/CoOp/{script}", "caltech101", "1"))
        assert out.strip() == f"Results are available in {run_dir}. Skip."
    assert snapshot() == before  # no new log.txt-<time>, log.txt untouched


def test_finished_run_with_other_options_is_not_skipped(setup, trained):
    run_dir = trained / "base2new/train_base/caltech101" / RUN
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    extra = setup["extra"] + " OPTIM.LR 0.5"
    proc = run(setup, trained, "scripts/CoOp/base2new_train.sh", "caltech101", "1",
               EXTRA_OPTS=extra)  # fmt: skip
    assert proc.returncode == 1 and "Skip" not in proc.stdout
    assert f"{run_dir} holds the results of a run with other options (OPTIM.LR: 0.002 -> 0.5)" in (
        proc.stderr
    )
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_run_with_checkpoint_but_no_results_is_resumed(setup, trained, tmp_path):
    # an interrupted run: checkpoint written, final test not reached
    run_dir = tmp_path / "base2new/train_base/caltech101" / RUN
    shutil.copytree(trained / "base2new/train_base/caltech101" / RUN, run_dir)
    (run_dir / "results.json").unlink()
    (run_dir / "log.txt").write_text("epoch [1/1] batch [1/1] ...\n")
    proc = run(setup, tmp_path, "scripts/CoOp/base2new_test.sh", "caltech101", "1")
    assert proc.returncode == 1 and "is unfinished" in proc.stderr
    assert "base2new_train.sh caltech101 1' again to resume" in proc.stderr

    out = ok(run(setup, tmp_path, "scripts/CoOp/base2new_train.sh", "caltech101", "1"))
    assert "Skip" not in out and f"Resuming the unfinished run in {run_dir}" in out
    assert not list(run_dir.glob("log.txt-*"))  # a resumed run continues its log.txt
    old_part, text = (run_dir / "log.txt").read_text().split("this log continues", 1)
    assert old_part.startswith("epoch [1/1] batch [1/1] ...\n")
    assert "(will resume training)" in text and "epoch [" not in text  # nothing retrained
    assert "Resumed from the checkpoint of epoch 1 (model.pth.tar-1 of prompt_learner" in text
    assert results(run_dir)["total"] == split_test_counts(setup)[0]

    # a folder left by a run that crashed before its first checkpoint is run, not skipped
    crashed = tmp_path / "base2new/train_base/caltech101/shots_2/CoOp/vit_b16_ep50_ctxv1/seed2"
    crashed.mkdir(parents=True)
    (crashed / "log.txt").write_text("Setting fixed seed: 2\n")
    proc = run(setup, tmp_path, "scripts/CoOp/base2new_train.sh", "caltech101", "2", DRY_RUN="1")
    assert f"--output-dir {crashed} " in ok(proc)


def test_xd_pair_with_xd_source(setup, tmp_path):
    """xd_train.sh on XD_SOURCE=caltech101 (no synthetic ImageNet needed), then xd_test.sh."""
    env = {"XD_SOURCE": "caltech101"}
    proc = run(setup, tmp_path, "scripts/CoOp/xd_test.sh", "caltech101", "1", **env)
    assert proc.returncode == 1 and "scripts/CoOp/xd_train.sh 1' first" in proc.stderr
    ok(run(setup, tmp_path, "scripts/CoOp/xd_train.sh", "1", **env))
    ok(run(setup, tmp_path, "scripts/CoOp/xd_test.sh", "caltech101", "1", **env))
    source = results(tmp_path / "xd/train/caltech101" / RUN)
    target = results(tmp_path / "xd/test/caltech101" / RUN)
    n_all = split_test_counts(setup)[2]
    assert source["subsample_classes"] == target["subsample_classes"] == "all"
    assert source["total"] == target["total"] == n_all
    assert target["accuracy"] == source["accuracy"]  # the same model on the same test set
    log = (tmp_path / "xd/test/caltech101" / RUN / "log.txt").read_text()
    assert f"{tmp_path}/xd/train/caltech101/{RUN}/prompt_learner/model.pth.tar-1" in log


def test_zeroshot_clip_writes_base_and_new_and_xd_source(setup, tmp_path):
    ok(run(setup, tmp_path, "scripts/ZeroshotCLIP/base2new_test.sh", "caltech101", "1"))
    n_base, n_new, _ = split_test_counts(setup)
    run_zs = "shots_2/ZeroshotCLIP/vit_b16_ep50/seed1"
    base = results(tmp_path / "base2new/train_base/caltech101" / run_zs)
    new = results(tmp_path / "base2new/test_new/caltech101" / run_zs)
    assert (base["subsample_classes"], base["total"]) == ("base", n_base)
    assert (new["subsample_classes"], new["total"]) == ("new", n_new)
    # the source dataset goes where the tables read the Source column; a target to xd/test
    for dataset, where in (("caltech101", "xd/train"), ("dtd", "xd/test")):
        proc = run(setup, tmp_path, "scripts/ZeroshotCLIP/xd_test.sh", dataset, "1",
                   XD_SOURCE="caltech101", DRY_RUN="1")  # fmt: skip
        assert f"--output-dir {tmp_path}/{where}/{dataset}/{run_zs} " in ok(proc)


def test_run_all_loops_skip_finished_and_report_failures(setup, trained):
    out = ok(run(setup, trained, "scripts/run_base2new_all.sh", "CoOp", "1", DATASETS="caltech101"))
    assert out.count(". Skip.") == 2 and "All base2new runs of CoOp finished (seeds: 1)." in out
    proc = run(setup, trained, "scripts/run_base2new_all.sh", "CoOp", "1", DATASETS="nosuch")
    assert proc.returncode == 1 and "CoOp/base2new_train.sh nosuch 1" in proc.stderr
    proc = run(setup, trained, "scripts/run_xd_all.sh", "NoTrainer")
    assert proc.returncode == 2 and "ZeroshotCLIP" in proc.stderr


def test_table_tool_reads_the_scripts_outputs(setup, trained):
    """Scripts -> results.json -> results_table: Base, New and HM as a hand computation gives."""
    base = results(trained / "base2new/train_base/caltech101" / RUN)["accuracy"]
    new = results(trained / "base2new/test_new/caltech101" / RUN)["accuracy"]
    hm = 2 * base * new / (base + new) if base + new else 0.0
    proc = subprocess.run(
        [sys.executable, "tools/results_table.py", "--root", str(trained), "--protocol",
         "base2new", "--shots", "2", "--trainers", "CoOp", "--format", "csv"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's promptdiff
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = {line.split(",")[1]: line.split(",") for line in proc.stdout.splitlines()[1:]}
    assert [float(x) for x in rows["caltech101"][2:5]] == pytest.approx(
        [round(base, 2), round(new, 2), round(hm, 2)], abs=0.006
    )
