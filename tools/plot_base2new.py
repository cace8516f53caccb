"""Grouped bar chart of base-to-new results: one panel per dataset plus the average.

    python tools/plot_base2new.py --root output --out base2new.png
    python tools/plot_base2new.py --trainers CoOp,CoOpDiff,MaPLe,MaPLeDiff --out b2n.pdf

Each panel groups the bars by trainer (Base, New, HM); the numbers are the ones
results_table.py prints for --protocol base2new.
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


def plot_base2new(
    root: Path | str, out: Path | str, sel: rt.Selection | None = None, ncols: int = 4
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
    nrows = math.ceil(len(panels) / ncols)
    cols = min(ncols, len(panels))
    width = max(3.2, 0.9 * len(res.columns) + 0.8)
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 3.0 * nrows), squeeze=False)
    n_trainers = len(res.columns)
    bar_w = 0.8 / len(METRICS)
    for ax, (title, values) in zip(axes.flat, panels, strict=False):
        drawn = [v for vals in values.values() for v in vals if v is not None]
        for m, (metric, colour) in enumerate(zip(METRICS, COLOURS, strict=True)):
            xs = [t + (m - 1) * bar_w for t in range(n_trainers)]
            heights = [values[col][m] for col in res.columns]
            ax.bar(
                [x for x, h in zip(xs, heights, strict=True) if h is not None],
                [h for h in heights if h is not None],
                bar_w,
                label=metric,
                color=colour,
            )
        if drawn:
            # Differences between methods are a few points; a zero baseline would hide them.
            low = max(0.0, math.floor(min(drawn) - 5))
            ax.set_ylim(low, min(100.0, max(drawn) + 3))
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
    axes.flat[0].set_ylabel(f"{sel.metric} (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(METRICS))
    fig.suptitle(f"Base-to-new generalisation, {res.shots} shots")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out = Path(out)
    try:
        with rio.atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return len(panels)


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
    fmt = Path(args.out).suffix.lstrip(".").lower()
    if fmt not in plt.gcf().canvas.get_supported_filetypes():
        print(
            f"error: cannot write '{args.out}': use a .png, .pdf or .svg name for --out",
            file=sys.stderr,
        )
        return 1
    plt.close("all")
    try:
        n = plot_base2new(args.root, args.out, sel)
    except rio.ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"error: cannot write {args.out}: {exc.strerror or exc}; choose another --out",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {args.out} ({n} panels)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
