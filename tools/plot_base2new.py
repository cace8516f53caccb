"""Grouped bar chart of base-to-new results: one panel per dataset plus the average.

    python tools/plot_base2new.py --root output --out base2new.png
    python tools/plot_base2new.py --trainers CoOp,CoOpDiff,MaPLe,MaPLeDiff --out b2n.pdf
    python tools/plot_base2new.py --ylim zero --no-labels --dpi 600 --out b2n.png

Each panel groups the bars by trainer (Base, New, HM); the numbers are the ones
results_table.py prints for --protocol base2new. Base and New bars carry error bars of the
population std over seeds (HM, computed from the seed means, and the Average panel have none),
and each bar its value. --ylim: shared (default; one truncated range for every panel, so bar
heights compare across panels), zero (every axis from 0 to 100) or auto (each panel its own
truncated range).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402

if __package__:
    from . import results_io as rio
    from . import results_table as rt
else:  # run as `python tools/plot_base2new.py`: this file's folder is on sys.path
    import results_io as rio
    import results_table as rt

METRICS = ("Base", "New", "HM")
COLOURS = ("#4C72B0", "#DD8452", "#55A868")
YLIMS = ("shared", "zero", "auto")


def panel_values(res: rt.Base2NewResult) -> list[tuple[str, dict[str, tuple[float | None, ...]]]]:
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


def panel_errors(res: rt.Base2NewResult) -> dict[str, dict[str, tuple[float | None, ...]]]:
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
    sel: rt.Selection | None = None,
    ncols: int = 4,
    ylim: str = "shared",
    dpi: int = 300,
    labels: bool = True,
) -> int:
    """Write the chart to `out` atomically and return the number of panels drawn."""
    sel = sel or rt.Selection()
    results = rt.base2new_results(root, sel)
    if len(results) > 1:
        found = ", ".join(str(r.shots) for r in results)
        raise rio.ResultsError(
            f"base2new results exist for several shot counts ({found}); pick one with --shots"
        )
    res = results[0]
    panels = panel_values(res)
    if all(v is None for _, values in panels for vals in values.values() for v in vals):
        raise rio.ResultsError(
            f"no '{sel.metric}' values in the base2new results under {root}; use --metric accuracy"
        )
    fig = draw_panels(res, panels, panel_errors(res), sel.metric, ncols, ylim, labels)
    save_figure(fig, out, dpi)
    return len(panels)


def save_figure(fig, out: Path | str, dpi: int) -> None:
    """Write fig to out atomically (the format from its suffix) and close it."""
    out = Path(out)
    try:
        with rio.atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, format=out.suffix.lstrip(".") or "png")
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
    except rio.ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"error: cannot write {out}: {exc.strerror or exc}; choose another --out",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {out} ({n} panels)", file=sys.stderr)
    return 0


def draw_panels(
    res: rt.Base2NewResult,
    panels: list,
    errors: dict,
    metric: str,
    ncols: int = 4,
    ylim: str = "shared",
    labels: bool = True,
):
    """The figure: one bar panel per entry of `panels` (see panel_values)."""
    if ylim not in YLIMS:
        raise rio.ResultsError(f"unknown --ylim '{ylim}'; use one of: {', '.join(YLIMS)}")
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


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="output", help="folder the scripts write into")
    parser.add_argument("--trainers", type=rio.comma_list, help="e.g. CoOp,CoOpDiff")
    parser.add_argument("--datasets", type=rio.comma_list, help="e.g. caltech101,dtd")
    parser.add_argument("--shots", type=int, help="shot count when several exist")
    parser.add_argument("--seeds", type=rio.int_list, help="only these seeds, e.g. 1,2,3")
    parser.add_argument("--metric", default="accuracy", help="accuracy (default) or macro_f1")
    parser.add_argument("--out", default="base2new.png", help="image file (.png, .pdf, .svg)")
    parser.add_argument("--ylim", default="shared", choices=YLIMS, help="y-axis range rule")
    parser.add_argument("--dpi", type=int, default=300, help="resolution of raster output")
    parser.add_argument("--no-labels", action="store_true", help="no value label on each bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    sel = rt.Selection(
        trainers=args.trainers,
        datasets=args.datasets,
        shots=[args.shots] if args.shots is not None else None,
        seeds=set(args.seeds) if args.seeds else None,
        metric=args.metric,
    )
    return run_plot(
        args.out,
        lambda: plot_base2new(
            args.root, args.out, sel, ylim=args.ylim, dpi=args.dpi, labels=not args.no_labels
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
