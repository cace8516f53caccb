"""Mean and spread of test results over seeds, compatible with CoOp's tools/parse_test_res.py.

    python tools/parse_test_res.py output/base2new/train_base/caltech101/shots_16/CoOp/vit_b16_ep50
    python tools/parse_test_res.py DIR --ci95          # 95% confidence interval instead of std
    python tools/parse_test_res.py DIR --multi-exp     # each subfolder of DIR is one experiment
    python tools/parse_test_res.py DIR --keyword macro_f1

Each seed folder is read from results.json, else from the last test "=> result" block of its
log.txt (or of the newest log.txt-<time> a re-run wrote). --test-log says the logs come from
eval-only runs, so blocks are not required to follow "Finish training"; it changes nothing for
results.json.
"""

from __future__ import annotations

import argparse
import sys

from promptdiff.results.record import ResultsError
from promptdiff.results.summary import (
    format_average,
    format_summary,
    summarise_directory,
    summarise_experiments,
)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (same flags as upstream CoOp)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=str, help="folder holding one subfolder per seed")
    parser.add_argument("--ci95", action="store_true", help="report the 95%% confidence interval")
    parser.add_argument(
        "--test-log",
        action="store_true",
        help="logs come from eval-only runs (no 'Finish training')",
    )
    parser.add_argument(
        "--multi-exp", action="store_true", help="each subfolder of DIRECTORY is one experiment"
    )
    parser.add_argument("--keyword", default="accuracy", help="metric to summarise first")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.multi_exp:
            summaries, errors = summarise_experiments(
                args.directory, args.keyword, args.ci95, args.test_log
            )
            for s in summaries:
                print(format_summary(s))
            print(format_average(summaries))
            for err in errors:
                print(f"error: {err}", file=sys.stderr)
            return 1 if errors else 0
        print(
            format_summary(
                summarise_directory(args.directory, args.keyword, args.ci95, args.test_log)
            )
        )
        return 0
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
