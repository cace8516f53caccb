"""tools/gpu_check.sh on the CPU: its parts run (the GPU ones forced onto the CPU at tiny size),
each records what it measured, and a part that fails or times out is recorded without stopping
the next one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from promptdiff.tools.gpu_check import pytest_counts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_SIZE": "tiny",
        "GPU_CHECK_PRECS": "fp32",
        "GPU_CHECK_TRAINERS": "CoOp CoOpDiff ZeroshotCLIP NoSuchTrainer",
        "GPU_CHECK_TIMEOUT_BENCHMARK": "1",  # cut short: recorded, and ddp still runs after it
        # the GPU's limits are far too short for the CPU on a loaded machine
        "GPU_CHECK_TIMEOUT_CUDA_TESTS": "900",
        "GPU_CHECK_TIMEOUT_TRAINERS": "900",
        "GPU_CHECK_TIMEOUT_DDP": "900",
    }
    env.pop("PROMPTDIFF_HOST", None)
    proc = subprocess.run(
        ["bash", "tools/gpu_check.sh", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400,
    )  # fmt: skip
    with open(out / "gpu_check.json") as f:
        record = json.load(f)
    with open(out / "gpu_check.md") as f:
        table = f.read()
    return proc, record, table


def test_failed_parts_are_recorded_and_the_rest_runs(check):
    proc, record, table = check
    parts = record["parts"]
    assert list(parts) == ["benchmark", "cuda_tests", "ddp", "trainers"], proc.stdout
    assert parts["benchmark"]["status"] == "timeout"
    assert parts["trainers"]["status"] == "failed"  # NoSuchTrainer's row
    assert parts["ddp"]["status"] == "passed", parts["ddp"]["log_tail"]
    assert record["ok"] is False and proc.returncode == 1
    assert "| benchmark | timeout |" in table


def test_cuda_tests_are_selected_and_skipped_without_cuda(check):
    _, record, _ = check
    cuda = record["parts"]["cuda_tests"]
    assert cuda["status"] == "passed", cuda["log_tail"]
    # test_precision.py's three (one parametrised twice); none may run, or pass, on the CPU
    assert cuda["tests"]["skipped"] >= 3 and "passed" not in cuda["tests"], cuda["tests"]


def test_each_trainer_row_trains_and_evaluates(check):
    _, record, table = check
    rows = {r["trainer"]: r for r in record["parts"]["trainers"]["record"]["rows"]}
    assert list(rows) == ["CoOp", "CoOpDiff", "ZeroshotCLIP", "NoSuchTrainer"]
    for name in ("CoOp", "CoOpDiff"):
        row = rows[name]
        assert row["ok"] and row["loss_finite"] and row["params_moved"], row
        assert row["train_ms_per_image"] > 0 and row["eval_ms_per_image"] > 0
        assert row["peak_mb"] is None  # GPU memory only
    assert rows["CoOp"]["stage"] == 1 and rows["CoOpDiff"]["stage"] == 2
    assert (
        rows["ZeroshotCLIP"]["trainable"] == 0 and "train_ms_per_image" not in rows["ZeroshotCLIP"]
    )
    assert rows["ZeroshotCLIP"]["ok"] and rows["ZeroshotCLIP"]["logits_shape_ok"]
    assert not rows["NoSuchTrainer"]["ok"] and "NoSuchTrainer" in rows["NoSuchTrainer"]["error"]
    assert "| CoOpDiff | fp32 |" in table and "| NoSuchTrainer | fp32 | - |" in table


def test_ddp_group_collectives(check):
    _, record, _ = check
    ddp = record["parts"]["ddp"]["record"]
    assert ddp == {
        "backend": "gloo",
        "world": 2,
        "all_reduce_ok": True,
        "all_gather_ok": True,
        "grad_average_ok": True,
        "gather_in_order_ok": True,
        "ok": True,
    }


def test_pytest_counts_reads_the_last_summary_line():
    log = "collected 9 items\n1 failed in 0.1s\n...\n2 passed, 3 skipped, 5 deselected in 4.2s\n"
    assert pytest_counts(log) == {"passed": 2, "skipped": 3, "deselected": 5}
    assert pytest_counts("no summary") == {}
