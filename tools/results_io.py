"""Shared reader for run folders: results.json first, else the last test "=> result" block of the log.

Used by parse_test_res.py, results_table.py and plot_base2new.py. Imports only the standard library
and numpy so the tools run from a bare checkout (`python tools/<name>.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RESULT_HEADER = "=> result"
# Upstream Dassl printed "Finished training", later "Finish training"; accept both so a wording
# change cannot silently drop results again.
FINISH_RE = re.compile(r"^Finish(ed)? training\b")
EVAL_SPLIT_RE = re.compile(r"Evaluate on the \*(\w+)\* set")
METRIC_LINE_RE = re.compile(r"^\*\s+(\w+):\s+([-+]?[\d,]*\.?\d+(?:[eE][-+]?\d+)?)\s*(%?)\s*$")
SEED_DIR_RE = re.compile(r"^seed(\d+)$")
SHOTS_DIR_RE = re.compile(r"^shots_(-?\d+)$")
COUNT_METRICS = frozenset({"total", "correct"})
# Numeric fields of results.json that describe the run rather than measure it.
META_NUMBERS = frozenset({"seed", "num_shots", "epoch"})
# What a result block prints, in its order; other metrics are shown only when asked for.
BLOCK_METRICS = ("accuracy", "error", "macro_f1")

# Paper order, so tables read like the CoOp/CoCoOp/MaPLe papers without a --datasets flag.
BASE2NEW_DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
XD_SOURCE = "imagenet"
XD_TARGETS = tuple(d for d in BASE2NEW_DATASETS if d != XD_SOURCE)
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
# Each method sits next to its prompt-diffusion variant.
TRAINER_ORDER = (
    "ZeroshotCLIP",
    "CoOp",
    "CoOpDiff",
    "CoCoOp",
    "CoCoOpDiff",
    "VPT",
    "VPTDiff",
    "MaPLe",
    "MaPLeDiff",
    "IVLP",
    "IVLPDiff",
    "GenPT",
    "GenPTDiff",
)


class ResultsError(Exception):
    """A user-facing problem with the input (message is one sentence, shown without a traceback)."""


@dataclass(frozen=True)
class RunResult:
    """The final test result of one run folder."""

    run_dir: Path
    source: Path
    metrics: dict[str, float]
    meta: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Stat:
    """Mean and population std over seeds (numpy's default ddof=0, as upstream)."""

    mean: float
    std: float
    n: int
    seeds: tuple[int, ...] = ()


def warn(msg: str) -> None:
    """Print a warning to stderr so stdout stays parseable."""
    print(f"warning: {msg}", file=sys.stderr)


def _to_number(text: str) -> float:
    return float(text.replace(",", ""))


def parse_result_blocks(text: str) -> list[tuple[str | None, dict[str, float]]]:
    """All "=> result" blocks of a log as (split announced before it or None, metrics)."""
    blocks: list[tuple[str | None, dict[str, float]]] = []
    split: str | None = None
    current: dict[str, float] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if current is not None:
            match = METRIC_LINE_RE.match(line)
            if match:
                current[match.group(1)] = _to_number(match.group(2))
                continue
            blocks.append((split, current))
            current = None
        split_match = EVAL_SPLIT_RE.search(line)
        if split_match:
            split = split_match.group(1)
        elif line == RESULT_HEADER:
            current = {}
    if current is not None:
        blocks.append((split, current))
    return [(s, m) for s, m in blocks if m]


def parse_log(text: str, test_log: bool = False) -> dict[str, float] | None:
    """Metrics of the final test block of a log, or None when it has none."""
    if not test_log:
        # A training log's final test comes after "Finish training"; earlier blocks are
        # per-epoch validation (best_val) and must not count.
        lines = text.splitlines()
        finish = [i for i, line in enumerate(lines) if FINISH_RE.match(line.strip())]
        if finish:
            text = "\n".join(lines[finish[-1] :])
    blocks = [m for split, m in parse_result_blocks(text) if split in (None, "test")]
    return blocks[-1] if blocks else None


def log_files(run_dir: Path) -> list[Path]:
    """log.txt and the timestamped log.txt-<time> files a re-run writes, oldest first."""
    logs = sorted(p for p in run_dir.glob("log.txt-*") if p.is_file())
    first = run_dir / "log.txt"
    return ([first] if first.is_file() else []) + logs


def read_results_json(path: Path) -> tuple[dict[str, float], dict[str, object]] | None:
    """Numeric metrics and the remaining metadata of a results.json, or None if unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        warn(f"ignoring unreadable {path} ({exc}); falling back to the log")
        return None
    if not isinstance(record, dict):
        warn(f"ignoring {path}: expected a JSON object; falling back to the log")
        return None
    metrics: dict[str, float] = {}
    meta: dict[str, object] = {}
    for key, value in record.items():
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key not in META_NUMBERS
        ):
            metrics[key] = float(value)
        else:
            meta[key] = value
    return metrics, meta


def read_run(run_dir: Path | str, test_log: bool = False) -> RunResult | None:
    """The final test result of one run folder (results.json, else the newest log with a result)."""
    run_dir = Path(run_dir)
    json_path = run_dir / "results.json"
    if json_path.is_file():
        parsed = read_results_json(json_path)
        if parsed is not None and parsed[0]:
            return RunResult(run_dir, json_path, parsed[0], parsed[1])
    for log in reversed(log_files(run_dir)):
        try:
            text = log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            warn(f"cannot read {log} ({exc})")
            continue
        metrics = parse_log(text, test_log=test_log)
        if metrics:
            return RunResult(run_dir, log, metrics)
    return None


def natural_key(name: str) -> list[object]:
    """Sort key putting seed2 before seed10."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def subdirs(directory: Path) -> list[Path]:
    """Visible subfolders in natural order."""
    return sorted(
        (p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def is_percent(metric: str) -> bool:
    """Whether a metric is a percentage (everything except the total/correct counts)."""
    return metric not in COUNT_METRICS


def stat(values: list[float], seeds: tuple[int, ...] = ()) -> Stat:
    """Mean and population std of a non-empty list."""
    arr = np.asarray(values, dtype=float)
    return Stat(float(arr.mean()), float(arr.std()), len(values), seeds)


def harmonic_mean(base: float | None, new: float | None) -> float | None:
    """2BN/(B+N), the base-to-new HM; None when either side is missing."""
    if base is None or new is None:
        return None
    if base + new == 0:
        return 0.0
    return 2.0 * base * new / (base + new)


def mean_or_none(values: list[float]) -> float | None:
    """Mean of the values, None for an empty list."""
    return float(np.mean(values)) if values else None


@dataclass
class Cell:
    """Seed results of one (dataset, shots, trainer, cfg) folder of the layout."""

    runs: list[tuple[int, RunResult]]

    def stat(self, metric: str) -> Stat | None:
        """Seed statistics of a metric, None when no seed has it."""
        pairs = [(seed, r.metrics[metric]) for seed, r in self.runs if metric in r.metrics]
        if not pairs:
            return None
        return stat([v for _, v in pairs], tuple(s for s, _ in pairs))


CellKey = tuple[str, int, str, str]  # dataset, shots, trainer, cfg


def discover(
    tree: Path,
    seeds: set[int] | None = None,
    check: Callable[[RunResult], None] | None = None,
) -> dict[CellKey, Cell]:
    """Runs under <tree>/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>/ keyed by (dataset, K, trainer, cfg)."""
    found: dict[CellKey, Cell] = {}
    if not tree.is_dir():
        return found
    for dataset_dir in subdirs(tree):
        for shots_dir in subdirs(dataset_dir):
            shots_match = SHOTS_DIR_RE.match(shots_dir.name)
            if not shots_match:
                continue
            for trainer_dir in subdirs(shots_dir):
                for cfg_dir in subdirs(trainer_dir):
                    runs: list[tuple[int, RunResult]] = []
                    for seed_dir in subdirs(cfg_dir):
                        seed_match = SEED_DIR_RE.match(seed_dir.name)
                        if not seed_match:
                            continue
                        seed = int(seed_match.group(1))
                        if seeds is not None and seed not in seeds:
                            continue
                        result = read_run(seed_dir)
                        if result is None:
                            warn(f"no result yet in {seed_dir} (skipped)")
                            continue
                        if check is not None:
                            check(result)
                        runs.append((seed, result))
                    if runs:
                        key = (
                            dataset_dir.name,
                            int(shots_match.group(1)),
                            trainer_dir.name,
                            cfg_dir.name,
                        )
                        found[key] = Cell(runs)
    return found


def order_trainers(names: set[str] | list[str]) -> list[str]:
    """Known trainers in TRAINER_ORDER, unknown ones after them alphabetically."""
    rank = {name: i for i, name in enumerate(TRAINER_ORDER)}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n.lower()))


def order_datasets(names: set[str] | list[str]) -> list[str]:
    """Datasets in paper order (base-to-new, then DG variants), unknown ones alphabetically."""
    known = BASE2NEW_DATASETS + DG_TARGETS
    rank = {name: i for i, name in enumerate(known)}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def fmt_value(value: float | None, std: float | None = None, digits: int = 2) -> str:
    """A table value with 2 decimals, '-' when missing, optional '± std'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}"
    if std is not None:
        text += f" ± {std:.{digits}f}"
    return text


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix so writers that infer the format from the name (matplotlib) still work.
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write text so readers never see a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def comma_list(text: str) -> list[str]:
    """argparse type for 'a,b,c'."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got '{text}'")
    return items


def int_list(text: str) -> list[int]:
    """argparse type for '1,2,3'."""
    try:
        return [int(t) for t in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,2,3, got '{text}'"
        ) from None
