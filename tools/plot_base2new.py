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
import sys

from promptdiff.results.plots import YLIMS, plot_base2new, run_plot
from promptdiff.results.tables import Selection, comma_list, int_list


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="output", help="folder the scripts write into")
    parser.add_argument("--trainers", type=comma_list, help="e.g. CoOp,CoOpDiff")
    parser.add_argument("--datasets", type=comma_list, help="e.g. caltech101,dtd")
    parser.add_argument("--shots", type=int, help="shot count when several exist")
    parser.add_argument("--seeds", type=int_list, help="only these seeds, e.g. 1,2,3")
    parser.add_argument("--metric", default="accuracy", help="accuracy (default) or macro_f1")
    parser.add_argument("--out", default="base2new.png", help="image file (.png, .pdf, .svg)")
    parser.add_argument("--ylim", default="shared", choices=YLIMS, help="y-axis range rule")
    parser.add_argument("--dpi", type=int, default=300, help="resolution of raster output")
    parser.add_argument("--no-labels", action="store_true", help="no value label on each bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    sel = Selection(
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
