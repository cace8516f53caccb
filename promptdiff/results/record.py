"""The results.json record, one schema for the engine that writes it and every reader, and the
"=> result" log block that carries the same metrics for runs that left no results.json."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from promptdiff.results.layout import FINISH_RE, RESULTS_FILE, log_files

# The measured fields of a record, in the file's order; every other field describes the run
# (split, trainer, dataset, seed, num_shots, epoch, fingerprint, ...).
METRICS = ("accuracy", "macro_f1", "error", "total", "correct")
COUNT_METRICS = frozenset({"total", "correct"})
# What a result block prints, in its order; other metrics are shown only when asked for.
BLOCK_METRICS = ("accuracy", "error", "macro_f1")

RESULT_HEADER = "=> result"
EVAL_SPLIT_RE = re.compile(r"Evaluate on the \*(\w+)\* set")
METRIC_LINE_RE = re.compile(r"^\*\s+(\w+):\s+([-+]?[\d,]*\.?\d+(?:[eE][-+]?\d+)?)\s*(%?)\s*$")


class ResultsError(Exception):
    """A user-facing problem with the input (message is one sentence, shown without a traceback)."""


def warn(msg: str) -> None:
    """Print a warning to stderr so stdout stays parseable."""
    print(f"warning: {msg}", file=sys.stderr)


def make_record(metrics: Mapping[str, float], split: str, **run: object) -> dict[str, object]:
    """The results.json record of one evaluation: its METRICS, the split, then what describes
    the run."""
    return {**{name: metrics[name] for name in METRICS}, "split": split, **run}


def split_record(record: Mapping[str, object]) -> tuple[dict[str, float], dict[str, object]]:
    """(the METRICS a record holds as floats, every other field)."""
    metrics = {
        name: float(value)
        for name, value in record.items()
        if name in METRICS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    return metrics, {k: v for k, v in record.items() if k not in metrics}


def is_percent(metric: str) -> bool:
    """Whether a metric is a percentage (everything except the total/correct counts)."""
    return metric not in COUNT_METRICS


@dataclass(frozen=True)
class RunResult:
    """The final test result of one run folder."""

    run_dir: Path
    source: Path
    metrics: dict[str, float]
    meta: dict[str, object] = field(default_factory=dict)


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


def read_record(path: Path) -> tuple[dict[str, float], dict[str, object]] | None:
    """split_record of a results.json, or None (with a warning) when it is unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        warn(f"ignoring unreadable {path} ({exc}); falling back to the log")
        return None
    if not isinstance(record, dict):
        warn(f"ignoring {path}: expected a JSON object; falling back to the log")
        return None
    return split_record(record)


def read_run(run_dir: Path | str, test_log: bool = False) -> RunResult | None:
    """The final test result of one run folder (results.json, else the newest log with a result)."""
    run_dir = Path(run_dir)
    json_path = run_dir / RESULTS_FILE
    if json_path.is_file():
        parsed = read_record(json_path)
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
