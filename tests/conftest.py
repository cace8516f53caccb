"""Shared fixtures: tiny CLIP weights, the built-in shapes dataset, and an in-process train.py."""

from __future__ import annotations

import json
import os

import pytest

from promptdiff.backbone import save_tiny_clip
from promptdiff.worlds.shapes_caltech import make_shapes_caltech


def pytest_collection_modifyitems(config, items) -> None:
    # `-m cuda` selects these (tools/gpu_check.sh runs them); without CUDA they are skipped
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked cuda: needs a CUDA GPU (tools/gpu_check.sh runs them)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> str:
    return save_tiny_clip(str(tmp_path_factory.mktemp("clip") / "tiny.pt"))


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> str:
    return make_shapes_caltech(str(tmp_path_factory.mktemp("data")), n_classes=6, n_per_class=10)


def tiny_opts(weights: str, prec_key: str = "COOP") -> list[str]:
    """KEY VALUE options that make any trainer run fast on CPU with the tiny CLIP."""
    return [
        "MODEL.BACKBONE.PATH", weights,
        f"TRAINER.{prec_key}.PREC", "fp32",
        "INPUT.SIZE", "(32, 32)",
        "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "DATALOADER.TEST.BATCH_SIZE", "16",
        "TRAIN.PRINT_FREQ", "1",
    ]  # fmt: skip


def train_args(
    root: str,
    out: str,
    trainer: str,
    cfg: str,
    weights: str,
    *opts: str,
    prec_key: str = "COOP",
    seed: int = 1,
) -> list[str]:
    return [
        "--root", root, "--seed", str(seed), "--trainer", trainer,
        "--dataset-config-file", "configs/datasets/caltech101.yaml",
        "--config-file", f"configs/trainers/{cfg}.yaml",
        "--output-dir", out,
        *tiny_opts(weights, prec_key), *opts,
    ]  # fmt: skip


def read_results(out: str) -> dict:
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    # config paths in tests are relative to the repository root, as in the scripts
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
