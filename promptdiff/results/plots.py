"""Figures of the results: base-to-new grouped bars (one panel per dataset plus the average) and
few-shot curves (accuracy against shots per class, on a log2 axis as in the CoOp paper).

The numbers are the ones the tables print (promptdiff.results.tables). Base and New bars and
few-shot points carry error bars of the population std over seeds; HM (computed from the seed
means) and the Average panels have none.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from promptdiff.fileio import WriteError, atomic_write  # noqa: E402
from promptdiff.results.record import ResultsError  # noqa: E402
from promptdiff.results.tables import (  # noqa: E402
    Base2NewResult,
    Selection,
    Value,
    base2new_results,
    few_shot_tables,
)

METRICS = ("Base", "New", "HM")
COLOURS = ("#4C72B0", "#DD8452", "#55A868")
YLIMS = ("shared", "zero", "auto")


def panel_values(res: Base2NewResult) -> list[tuple[str, dict[str, tuple[float | None, ...]]]]:
    """(panel title, {trainer column: (Base, New, HM)}) per dataset, then the Average panel."""
    panels = []
    for ds in res.datasets:
        values = {}
        for col in res.columns:
            e = res.entries[(ds, col)]
            values[col] = (e.base.mean if e.base else None, e.new.mean if e.new else None, e.hm)
        panels.append((ds, values))
    avg = {col: (a.base, a.new, a.hm) for col, a in res.average.items()}
    panels.append(("Average", avg))
    return panels


def panel_errors(res: Base2NewResult) -> dict[str, dict[str, tuple[float | None, ...]]]:
    """{panel title: {trainer column: (Base std, New std, None)}} over seeds; Average has none."""
    errors = {}
    for ds in res.datasets:
        errors[ds] = {}
        for col in res.columns:
            e = res.entries[(ds, col)]
            errors[ds][col] = (e.base.std if e.base else None, e.new.std if e.new else None, None)
    errors["Average"] = {col: (None, None, None) for col in res.columns}
    return errors


def _range(values: list[float]) -> tuple[float, float]:
    # Differences between methods are a few points; a zero baseline would hide them.
    return max(0.0, math.floor(min(values) - 5)), min(100.0, max(values) + 3)


def plot_base2new(
    root: Path | str,
    out: Path | str,
    sel: Selection | None = None,
    ncols: int = 4,
    ylim: str = "shared",
    dpi: int = 300,
    labels: bool = True,
) -> int:
    """Write the chart to `out` atomically and return the number of panels drawn."""
    sel = sel or Selection()
    results = base2new_results(root, sel)
    if len(results) > 1:
        found = ", ".join(str(r.shots) for r in results)
        raise ResultsError(
            f"base2new results exist for several shot counts ({found}); pick one with --shots"
        )
    res = results[0]
    panels = panel_values(res)
    if all(v is None for _, values in panels for vals in values.values() for v in vals):
        raise ResultsError(
            f"no '{sel.metric}' values in the base2new results under {root}; use --metric accuracy"
        )
    fig = draw_panels(res, panels, panel_errors(res), sel.metric, ncols, ylim, labels)
    save_figure(fig, out, dpi)
    return len(panels)


def save_figure(fig, out: Path | str, dpi: int) -> None:
    """Write fig to out atomically (the format from its suffix) and close it."""
    out = Path(out)
    try:
        fmt = out.suffix.lstrip(".") or "png"
        atomic_write(str(out), lambda f: fig.savefig(f, dpi=dpi, format=fmt), mode="wb")
    finally:
        plt.close(fig)


def run_plot(out: str, draw) -> int:
    """The plotting CLIs' shared tail: check --out's format, call draw() -> panels, report."""
    fmt = Path(out).suffix.lstrip(".").lower()
    if fmt not in plt.gcf().canvas.get_supported_filetypes():
        print(
            f"error: cannot write '{out}': use a .png, .pdf or .svg name for --out", file=sys.stderr
        )
        return 1
    plt.close("all")
    try:
        n = draw()
    except (ResultsError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({n} panels)", file=sys.stderr)
    return 0


def draw_panels(
    res: Base2NewResult,
    panels: list,
    errors: dict,
    metric: str,
    ncols: int = 4,
    ylim: str = "shared",
    labels: bool = True,
):
    """The figure: one bar panel per entry of `panels` (see panel_values)."""
    if ylim not in YLIMS:
        raise ResultsError(f"unknown --ylim '{ylim}'; use one of: {', '.join(YLIMS)}")
    nrows = math.ceil(len(panels) / ncols)
    cols = min(ncols, len(panels))
    width = max(3.2, 0.9 * len(res.columns) + 0.8)
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 3.0 * nrows), squeeze=False)
    n_trainers = len(res.columns)
    bar_w = 0.8 / len(METRICS)
    every = [v for _, values in panels for vals in values.values() for v in vals if v is not None]
    for ax, (title, values) in zip(axes.flat, panels, strict=False):
        drawn = [v for vals in values.values() for v in vals if v is not None]
        for m, (metric_name, colour) in enumerate(zip(METRICS, COLOURS, strict=True)):
            xs = [t + (m - 1) * bar_w for t in range(n_trainers)]
            heights = [values[col][m] for col in res.columns]
            stds = [errors[title][col][m] for col in res.columns]
            kept = [i for i, h in enumerate(heights) if h is not None]
            yerr = [stds[i] or 0.0 for i in kept]
            bars = ax.bar(
                [xs[i] for i in kept],
                [heights[i] for i in kept],
                bar_w,
                yerr=yerr if any(yerr) else None,
                capsize=2,
                error_kw={"elinewidth": 0.8},
                label=metric_name,
                color=colour,
            )
            if labels and kept:
                ax.bar_label(
                    bars, labels=[f"{heights[i]:.1f}" for i in kept], fontsize=5, padding=1
                )
        if ylim == "zero":
            ax.set_ylim(0.0, 100.0)
        elif ylim == "shared" and every:
            ax.set_ylim(*_range(every))
        elif drawn:
            ax.set_ylim(*_range(drawn))
        ax.set_title(title)
        ax.set_xlim(-0.5, n_trainers - 0.5)  # keep a slot for trainers with no bars here
        ax.set_xticks(range(n_trainers))
        ax.set_xticklabels(res.columns, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        missing = [col for col in res.columns if all(v is None for v in values[col])]
        for col in missing:
            ax.text(
                res.columns.index(col),
                ax.get_ylim()[0],
                "n/a",
                ha="center",
                va="bottom",
                fontsize=7,
            )
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel(f"{metric} (%)")
    handles, legend_labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="upper right", ncol=len(METRICS))
    fig.suptitle(f"Base-to-new generalisation, {res.shots} shots")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


Point = tuple[int, float, float | None]  # shots, mean, std over seeds


def few_shot_curves(
    root: Path | str, sel: Selection | None = None
) -> dict[str, dict[str, list[Point]]]:
    """{dataset or 'Average': {trainer column: [(shots, mean, std), ...] by shots}}."""
    curves: dict[str, dict[str, list[Point]]] = {}
    for table in few_shot_tables(root, sel):
        for row in table.rows:
            panel = curves.setdefault(row[0], {})
            for label, cell in zip(table.headers[1:], row[1:], strict=True):
                if isinstance(cell, Value) and cell.mean is not None:
                    panel.setdefault(label, []).append((table.shots, cell.mean, cell.std))
    for panel in curves.values():
        for points in panel.values():
            points.sort()
    return curves


def plot_few_shot(
    root: Path | str,
    out: Path | str,
    sel: Selection | None = None,
    ncols: int = 4,
    dpi: int = 300,
) -> int:
    """Write the curves to `out` atomically and return the number of panels drawn."""
    sel = sel or Selection()
    curves = few_shot_curves(root, sel)
    if not any(points for panel in curves.values() for points in panel.values()):
        raise ResultsError(
            f"no '{sel.metric}' values in the few_shot results under {root}; use --metric accuracy"
        )
    titles = [t for t in curves if t != "Average"] + ["Average"]
    nrows = math.ceil(len(titles) / ncols)
    cols = min(ncols, len(titles))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 3.0 * nrows), squeeze=False)
    columns = list(dict.fromkeys(c for panel in curves.values() for c in panel))
    markers = "os^vDP*Xh"
    for ax, title in zip(axes.flat, titles, strict=False):
        shots_seen: set[int] = set()
        for i, col in enumerate(columns):
            points = curves[title].get(col, [])
            if not points:
                continue
            xs = [p[0] for p in points]
            shots_seen.update(xs)
            stds = [p[2] or 0.0 for p in points]
            ax.errorbar(
                xs,
                [p[1] for p in points],
                yerr=stds if any(stds) else None,
                label=col,
                marker=markers[i % len(markers)],
                markersize=4,
                capsize=2,
                linewidth=1.2,
            )
        positive = sorted(s for s in shots_seen if s > 0)
        if positive:
            ax.set_xscale("log", base=2)
            ax.set_xticks(positive)
            ax.set_xticklabels([str(s) for s in positive])
        ax.set_title(title)
        ax.set_xlabel("shots per class")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(titles) :]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel(f"{sel.metric} (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:  # the first panel may lack a trainer; take the richest one
        handles, labels = max(
            (a.get_legend_handles_labels() for a in axes.flat), key=lambda hl: len(hl[0])
        )
    fig.legend(handles, labels, loc="upper right", ncol=min(len(labels), 4))
    fig.suptitle("Few-shot classification")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(fig, out, dpi)
    return len(titles)
