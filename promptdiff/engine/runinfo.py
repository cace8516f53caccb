"""Run identity: which config keys define a trained model, and the provenance written with results.

A fingerprint is the hash of the run-defining keys (`run_config`). Checkpoints and results.json
store both, so a resume or an evaluation with other options is refused naming the differing keys.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
from typing import Any

from promptdiff.config_keys import test_time_keys
from promptdiff.engine.config import RENAMED_KEYS

# The engine's keys that never change what is trained: where things are, how fast, how much is
# printed, and how the trained model is evaluated. Declared keys say so themselves
# (`declare_keys(..., test_time=...)`, read by test_time_keys()).
NOT_RUN_DEFINING = (
    "OUTPUT_DIR",
    "RESUME",
    "VERBOSE",
    "USE_CUDA",
    "DATASET.ROOT",
    "DATALOADER.NUM_WORKERS",
    "DATALOADER.TEST.",
    "TEST.",
    "TRAIN.PRINT_FREQ",
    "TRAIN.CHECKPOINT_FREQ",
    # a location; the weights' content is compared by checksum (see clip_weights)
    "MODEL.BACKBONE.PATH",
)


def not_run_defining() -> tuple[str, ...]:
    """Key names and prefixes ("TEST.") that run identity leaves out."""
    return (*NOT_RUN_DEFINING, *test_time_keys())


# Keys an evaluation of a trained model may change: the data it is evaluated on (base2new_test
# evaluates a base-trained model on the new classes, xd_test on another dataset) and precision.
# DATASET.NUM_SHOTS stays: results.json reports it as the model's.
EVAL_FREE = ("DATASET.",)
EVAL_KEPT = ("DATASET.NUM_SHOTS",)


def _matches(key: str, patterns) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def _flatten(node, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def run_config(cfg) -> dict[str, Any]:
    """The run-defining keys of `cfg` with JSON values (tuples become lists)."""
    flat = _flatten(cfg)
    skip = not_run_defining()
    keep = {k: v for k, v in flat.items() if not _matches(k, skip)}
    return json.loads(json.dumps(keep, sort_keys=True, default=str))


def fingerprint(config: dict) -> str:
    """A short hash of a run_config()."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_record(cfg) -> dict:
    """{"fingerprint", "config"} as checkpoints and results.json store them."""
    config = run_config(cfg)
    return {"fingerprint": fingerprint(config), "config": config}


def differences(
    saved: dict, current: dict, for_eval: bool = False, namespaces: tuple[str, ...] | None = None
) -> list[str]:
    """'KEY: saved -> now' for every run-defining key both configs have and that differs (a key
    saved under an old name is compared under its new one). With `namespaces` (the trainer's own,
    e.g. ("COOP", "PD")), keys of other TRAINER.<NS> blocks are left out: another trainer's
    options do not change this trainer's model."""
    saved = {RENAMED_KEYS.get(k, k): v for k, v in saved.items()}
    out = []
    for key in sorted(set(saved) & set(current)):
        if for_eval and _is_eval_free(key):
            continue
        if namespaces is not None and _foreign(key, namespaces):
            continue
        if saved[key] != current[key]:
            out.append(f"{key}: {saved[key]!r} -> {current[key]!r}")
    return out


def _foreign(key: str, namespaces: tuple[str, ...]) -> bool:
    """Whether key lies in a TRAINER.<NS> block other than `namespaces` (TRAINER.NAME does not)."""
    parts = key.split(".")
    return len(parts) > 2 and parts[0] == "TRAINER" and parts[1] not in namespaces


def _is_eval_free(key: str) -> bool:
    if _matches(key, EVAL_KEPT):
        return False
    return _matches(key, EVAL_FREE) or (key.startswith("TRAINER.") and key.endswith(".PREC"))


def summarize(diffs: list[str], limit: int = 4) -> str:
    """The first few differences and a count."""
    text = "; ".join(diffs[:limit])
    return text + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def file_identity(path: str) -> dict:
    """Absolute path, size and sha256 of a file (the CLIP weights a run used)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "path": os.path.abspath(path),
        "size": os.path.getsize(path),
        "sha256": digest.hexdigest(),
    }


def git_commit() -> str | None:
    """The commit of the checkout this code runs from, or None outside a git checkout."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(repo, ".git")):
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide a result (torch's with its build tag, e.g. +cu130)."""
    import torch
    import torchvision

    versions = {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}
    for name, dists in (("clip", ("clip-anytorch", "clip")), ("promptdiff", ("promptdiff",))):
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    if versions["promptdiff"] is None:
        from promptdiff._version import __version__

        versions["promptdiff"] = __version__
    return versions
