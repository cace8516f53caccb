"""Shared fixtures: tiny CLIP weights, the built-in shapes dataset, and an in-process train.py."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

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


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_json(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def read_results(out: str) -> dict:
    return read_json(os.path.join(out, "results.json"))


def crash_after_first_epoch(monkeypatch) -> Callable[[], None]:
    """Make each run end as by Ctrl-C once its first epoch (and that epoch's checkpoint) is done;
    returns the function that undoes it, for the rerun that resumes."""
    from promptdiff.engine.trainer import SimpleTrainer

    original = SimpleTrainer.after_epoch

    def after_epoch(self):
        original(self)
        if self.epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(SimpleTrainer, "after_epoch", after_epoch)
    return lambda: monkeypatch.setattr(SimpleTrainer, "after_epoch", original)


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    # config paths in tests are relative to the repository root, as in the scripts
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
