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
import sys

from promptdiff.results.cli import add_selection_flags, selection_of
from promptdiff.results.plots import plot_few_shot, run_plot


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_selection_flags(parser)
    parser.add_argument("--dpi", type=int, default=300, help="resolution of raster output")
    parser.add_argument("--out", default="few_shot.png", help="image file (.png, .pdf, .svg)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    sel = selection_of(args)
    return run_plot(args.out, lambda: plot_few_shot(args.root, args.out, sel, dpi=args.dpi))


if __name__ == "__main__":
    sys.exit(main())
