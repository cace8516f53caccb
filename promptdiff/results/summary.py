"""Mean and spread over seeds of one experiment folder (or of each experiment under a folder),
reported the way CoOp's tools/parse_test_res.py prints it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from promptdiff.results.layout import subdirs
from promptdiff.results.record import (
    BLOCK_METRICS,
    ResultsError,
    RunResult,
    is_percent,
    read_run,
    warn,
)
from promptdiff.results.tables import stat


@dataclass(frozen=True)
class MetricSummary:
    """Mean and spread (std or 95% CI) of one metric over seeds."""

    name: str
    mean: float
    spread: float
    n: int


@dataclass(frozen=True)
class DirectorySummary:
    """Per-seed results of a directory and their summary, keyword metric first."""

    directory: Path
    runs: list[RunResult]
    metrics: list[MetricSummary]
    ci95: bool


def compute_ci95(values: list[float]) -> float:
    """Half-width of the 95% confidence interval, 1.96 * std / sqrt(n) with numpy's std."""
    return 1.96 * stat(values).std / math.sqrt(len(values))


def find_runs(directory: Path, test_log: bool = False) -> list[RunResult]:
    """Results of the subfolders of `directory` (or of `directory` itself when it is one run)."""
    if not directory.is_dir():
        raise ResultsError(
            f"directory {directory} does not exist; pass the folder that holds the seed<S> folders"
        )
    runs = []
    for sub in subdirs(directory):
        result = read_run(sub, test_log=test_log)
        if result is None:
            warn(f"no result in {sub} (skipped)")
        else:
            runs.append(result)
    if not runs:
        own = read_run(directory, test_log=test_log)
        if own is not None:
            runs.append(own)
    if not runs:
        raise ResultsError(
            f"no results in {directory}: no subfolder has a results.json or a log.txt with a "
            f"'=> result' block; point at the folder holding the seed folders (or use --multi-exp)"
        )
    return runs


def summarise_directory(
    directory: Path | str, keyword: str = "accuracy", ci95: bool = False, test_log: bool = False
) -> DirectorySummary:
    """Read every seed of `directory` and summarise `keyword` first, then the other block metrics."""
    directory = Path(directory)
    runs = find_runs(directory, test_log=test_log)
    with_keyword = [r for r in runs if keyword in r.metrics]
    if not with_keyword:
        found = sorted({m for r in runs for m in r.metrics})
        raise ResultsError(
            f"no '{keyword}' metric in the results under {directory}; use --keyword with one of: "
            f"{', '.join(found)}"
        )
    for r in runs:
        if keyword not in r.metrics:
            warn(f"{r.source} has no '{keyword}' (skipped)")
    names = [keyword] + [m for m in BLOCK_METRICS if m != keyword]
    summaries = []
    for name in names:
        values = [r.metrics[name] for r in with_keyword if name in r.metrics]
        if not values:
            continue
        spread = compute_ci95(values) if ci95 else stat(values).std
        summaries.append(MetricSummary(name, stat(values).mean, spread, len(values)))
    return DirectorySummary(directory, with_keyword, summaries, ci95)


def _fmt(name: str, value: float) -> str:
    return f"{value:.2f}%" if is_percent(name) else f"{value:,.2f}"


def format_summary(summary: DirectorySummary) -> str:
    """Upstream-style report: one line per seed, then '* metric: mean% +- spread%' lines."""
    names = [m.name for m in summary.metrics]
    lines = [f"Parsing files in {summary.directory}"]
    for run in summary.runs:
        parts = [f"file: {run.source}"]
        parts += [f"{n}: {_fmt(n, run.metrics[n])}" for n in names if n in run.metrics]
        lines.append(". ".join(parts) + ".")
    kind = "95% confidence interval" if summary.ci95 else "std"
    lines.append("===")
    lines.append(
        f"Summary of directory: {summary.directory} ({len(summary.runs)} seeds; +- is the {kind})"
    )
    for m in summary.metrics:
        lines.append(f"* {m.name}: {_fmt(m.name, m.mean)} +- {_fmt(m.name, m.spread)}")
    lines.append("===")
    return "\n".join(lines)


def summarise_experiments(
    directory: Path | str, keyword: str = "accuracy", ci95: bool = False, test_log: bool = False
) -> tuple[list[DirectorySummary], list[str]]:
    """Summaries of each experiment subfolder, plus one error line per experiment without results."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(
            f"directory {directory} does not exist; pass the folder whose subfolders are experiments"
        )
    summaries, errors = [], []
    for sub in subdirs(directory):
        try:
            summaries.append(summarise_directory(sub, keyword, ci95, test_log))
        except ResultsError as exc:
            errors.append(str(exc))
    if not summaries:
        raise ResultsError(
            f"no results in any experiment under {directory}; each subfolder should hold seed folders"
        )
    return summaries, errors


def format_average(summaries: list[DirectorySummary]) -> str:
    """Upstream's 'Average performance' block: mean over experiments of each metric's mean."""
    lines = ["Average performance"]
    names: list[str] = []
    for s in summaries:
        names += [m.name for m in s.metrics if m.name not in names]
    for name in names:
        means = [m.mean for s in summaries for m in s.metrics if m.name == name]
        lines.append(f"* {name}: {_fmt(name, stat(means).mean)}")
    return "\n".join(lines)
