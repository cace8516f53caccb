"""Tables of seed-averaged results laid out like the CoOp/CoCoOp/MaPLe papers.

    python tools/results_table.py --root output --protocol base2new
    python tools/results_table.py --protocol xd --trainers CoOp,CoOpDiff --format markdown
    python tools/results_table.py --protocol few_shot --shots 1,16 --format csv --out few_shot.csv
    python tools/results_table.py --protocol base2new --format latex --std --out b2n.tex

Trainers, configs, datasets and shot counts are discovered from the output layout the scripts
write (see docs/RESULTS.md). Values are means over seeds; HM is the harmonic mean of the
seed-averaged Base and New accuracies, and the Average row's HM is the harmonic mean of the
averaged Base and New, as the papers compute it.
"""

from __future__ import annotations

import argparse
import sys

from promptdiff.fileio import WriteError, atomic_write
from promptdiff.results.cli import add_selection_flags, selection_of
from promptdiff.results.record import ResultsError
from promptdiff.results.tables import FORMATS, PROTOCOLS, XD_SOURCE, build_tables, render


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_selection_flags(
        parser,
        trainers_help="e.g. CoOp,CoOpDiff or CoOp/vit_b16_ep50",
        datasets_help="e.g. caltech101,dtd (xd/dg: targets)",
        shots_help="shot counts, e.g. 16 or 1,2,4,8,16",
        metric_help="accuracy (default), macro_f1, error",
    )
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    parser.add_argument(
        "--source", default=XD_SOURCE, help="xd/dg: the dataset trained on (default imagenet)"
    )
    parser.add_argument("--std", action="store_true", help="show '± std' over seeds")
    parser.add_argument("--format", default="terminal", choices=FORMATS)
    parser.add_argument("--out", help="write to this file (atomically) instead of stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    sel = selection_of(args)
    try:
        tables = build_tables(args.root, args.protocol, sel)
        text = render(tables, args.format, args.std)
        if args.out:
            atomic_write(args.out, lambda f: f.write(text))
            print(f"wrote {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        if args.format in ("csv", "latex") or args.out:
            # CSV cannot carry the coverage notes and --out hides them; keep them visible.
            for table in tables:
                for note in table.notes:
                    print(f"note ({table.shots} shots): {note}", file=sys.stderr)
    except (ResultsError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
