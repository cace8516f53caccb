"""Few-shot curves: accuracy against shots per class, one panel per dataset plus the average.

    python tools/plot_few_shot.py --root output --out few_shot.png
    python tools/plot_few_shot.py --trainers CoOp,CoOpDiff --datasets dtd,eurosat --out fs.pdf

One line per trainer column over the shot counts found under OUTPUT/few_shot/ (the folders
`scripts/<Trainer>/few_shot.sh` writes); points are seed means with error bars of the population
std over seeds (the Average panel: the mean over datasets, no error bars). The numbers are the
ones `results_table.py --protocol few_shot` prints. Shots are on a log2 axis, as in the CoOp paper.
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
    from .plot_base2new import run_plot, save_figure
else:  # run as `python tools/plot_few_shot.py`: this file's folder is on sys.path
    import results_io as rio
    import results_table as rt
    from plot_base2new import run_plot, save_figure

Point = tuple[int, float, float | None]  # shots, mean, std over seeds


def few_shot_curves(
    root: Path | str, sel: rt.Selection | None = None
) -> dict[str, dict[str, list[Point]]]:
    """{dataset or 'Average': {trainer column: [(shots, mean, std), ...] by shots}}."""
    curves: dict[str, dict[str, list[Point]]] = {}
    for table in rt.few_shot_tables(root, sel):
        for row in table.rows:
            panel = curves.setdefault(row[0], {})
            for label, cell in zip(table.headers[1:], row[1:], strict=True):
                if isinstance(cell, rt.Value) and cell.mean is not None:
                    panel.setdefault(label, []).append((table.shots, cell.mean, cell.std))
    for panel in curves.values():
        for points in panel.values():
            points.sort()
    return curves


def plot_few_shot(
    root: Path | str,
    out: Path | str,
    sel: rt.Selection | None = None,
    ncols: int = 4,
    dpi: int = 300,
) -> int:
    """Write the curves to `out` atomically and return the number of panels drawn."""
    sel = sel or rt.Selection()
    curves = few_shot_curves(root, sel)
    if not any(points for panel in curves.values() for points in panel.values()):
        raise rio.ResultsError(
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


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="output", help="folder the scripts write into")
    parser.add_argument("--trainers", type=rio.comma_list, help="e.g. CoOp,CoOpDiff")
    parser.add_argument("--datasets", type=rio.comma_list, help="e.g. caltech101,dtd")
    parser.add_argument("--shots", type=rio.int_list, help="only these shot counts, e.g. 1,4,16")
    parser.add_argument("--seeds", type=rio.int_list, help="only these seeds, e.g. 1,2,3")
    parser.add_argument("--metric", default="accuracy", help="accuracy (default) or macro_f1")
    parser.add_argument("--dpi", type=int, default=300, help="resolution of raster output")
    parser.add_argument("--out", default="few_shot.png", help="image file (.png, .pdf, .svg)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    sel = rt.Selection(
        trainers=args.trainers,
        datasets=args.datasets,
        shots=args.shots,
        seeds=set(args.seeds) if args.seeds else None,
        metric=args.metric,
    )
    return run_plot(args.out, lambda: plot_few_shot(args.root, args.out, sel, dpi=args.dpi))


if __name__ == "__main__":
    sys.exit(main())
