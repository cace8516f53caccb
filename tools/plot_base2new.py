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

from promptdiff.results.cli import add_selection_flags, selection_of
from promptdiff.results.plots import YLIMS, plot_base2new, run_plot


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_selection_flags(parser, one_shot_count=True, shots_help="shot count when several exist")
    parser.add_argument("--out", default="base2new.png", help="image file (.png, .pdf, .svg)")
    parser.add_argument("--ylim", default="shared", choices=YLIMS, help="y-axis range rule")
    parser.add_argument("--dpi", type=int, default=300, help="resolution of raster output")
    parser.add_argument("--no-labels", action="store_true", help="no value label on each bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    sel = selection_of(args)
    return run_plot(
        args.out,
        lambda: plot_base2new(
            args.root, args.out, sel, ylim=args.ylim, dpi=args.dpi, labels=not args.no_labels
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
