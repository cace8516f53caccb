"""The output layout: <protocol>/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>/ run folders, the
files a run leaves in its folder, and the run's status read from them."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

RESULTS_FILE = "results.json"
LOG_FILE = "log.txt"
# OUTPUT_DIR/checkpoints.json names the complete checkpoint units (one epoch's file of every
# model); it is written after all of a unit's files, so a kill or a full disk mid-save leaves the
# previous complete unit in charge.
MANIFEST = "checkpoints.json"
# <model>/checkpoint: Dassl's record of the model's last file (runs older than the manifest)
CHECKPOINT_RECORD = "checkpoint"
EPOCH_FILE_PREFIX = "model.pth.tar-"
BEST_FILE = "model-best.pth.tar"
# Upstream Dassl printed "Finished training", later "Finish training"; accept both so a wording
# change cannot silently drop results again.
FINISH_RE = re.compile(r"^Finish(ed)? training\b")
SEED_DIR_RE = re.compile(r"^seed(\d+)$")
SHOTS_DIR_RE = re.compile(r"^shots_(-?\d+)$")


class RunDamaged(RuntimeError):
    """A run folder whose files are unreadable or contradict each other (one sentence)."""


def results_file(split: str) -> str:
    """results.json for the test split, results_<split>.json for another."""
    return RESULTS_FILE if split == "test" else f"results_{split}.json"


def run_dir(
    output: str, tree: str, dataset: str, shots: int, trainer: str, cfg: str, seed: int
) -> str:
    """The folder of one run: OUTPUT/<tree>/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>."""
    return os.path.join(output, tree, dataset, f"shots_{shots}", trainer, cfg, f"seed{seed}")


def natural_key(name: str) -> list[object]:
    """Sort key putting seed2 before seed10."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def subdirs(directory: Path) -> list[Path]:
    """Visible subfolders in natural order."""
    return sorted(
        (p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def log_files(run: Path) -> list[Path]:
    """log.txt and the timestamped log.txt-<time> files a re-run writes, oldest first."""
    logs = sorted(p for p in run.glob(f"{LOG_FILE}-*") if p.is_file())
    first = run / LOG_FILE
    return ([first] if first.is_file() else []) + logs


def read_manifest(directory: str) -> dict | None:
    """The checkpoint manifest of an output folder, or None where there is none (older runs)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        manifest["units"]  # noqa: B018  (the one key every manifest has)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDamaged(
            f"Checkpoint manifest {path} is unreadable ({type(exc).__name__}: {exc}); "
            f"delete it to fall back to the per-model 'checkpoint' records."
        ) from exc
    return manifest


def last_checkpoint_name(directory: str) -> str | None:
    """The file named in directory/checkpoint, or None when there is no finished checkpoint."""
    record = os.path.join(directory, CHECKPOINT_RECORD)
    if not os.path.isfile(record):
        return None
    with open(record) as f:
        name = f.readline().strip()
    return name if name and os.path.isfile(os.path.join(directory, name)) else None


def last_checkpoint(run: str) -> str | None:
    """The checkpoint a run left: the manifest's last complete unit, or (runs older than the
    manifest) the file every model's record names; None when there is none."""
    manifest = read_manifest(run)
    if manifest is not None:
        return manifest.get("last") or None
    names = {}
    if os.path.isdir(run):
        for model in sorted(os.listdir(run)):
            name = last_checkpoint_name(os.path.join(run, model))
            if name:
                names[model] = name
    if len(set(names.values())) > 1:
        raise RunDamaged(
            f"the models in {run} record different checkpoints ({names}); the run is damaged: "
            f"delete it and train again"
        )
    return next(iter(names.values()), None)


def checkpoint_epoch(name: str | None) -> int | str | None:
    """The epoch of a checkpoint file name, "best" for model-best.pth.tar, None for no checkpoint."""
    if name == BEST_FILE:
        return "best"
    if name and name.startswith(EPOCH_FILE_PREFIX) and name[len(EPOCH_FILE_PREFIX) :].isdigit():
        return int(name[len(EPOCH_FILE_PREFIX) :])
    return None


def finished_training(run: str) -> bool:
    """Training finished: the final test wrote results.json, or (TEST.NO_TEST) a log says so."""
    if os.path.isfile(os.path.join(run, RESULTS_FILE)):
        return True
    for log in log_files(Path(run)):
        with open(log, encoding="utf-8", errors="replace") as f:
            if any(FINISH_RE.match(line.strip()) for line in f):
                return True
    return False


@dataclass(frozen=True)
class RunStatus:
    """What a run folder holds: its last checkpoint's epoch ("best", or None) and whether
    training finished."""

    epoch: int | str | None
    finished: bool

    def line(self) -> str:
        """`<epoch|best|none> <finished|unfinished>`, the form the bash scripts read."""
        epoch = "none" if self.epoch is None else str(self.epoch)
        return f"{epoch} {'finished' if self.finished else 'unfinished'}"


def run_status(run: str) -> RunStatus:
    """The status of one run folder (RunDamaged when its records disagree)."""
    return RunStatus(checkpoint_epoch(last_checkpoint(run)), finished_training(run))
