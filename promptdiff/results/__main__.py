"""What the bash scripts ask the results library (scripts/common.sh):

python -m promptdiff.results status RUN_DIR     `<epoch|best|none> <finished|unfinished>`
python -m promptdiff.results datasets PROTOCOL  the datasets a run_*_all loop covers, in order
"""

from __future__ import annotations

import argparse
import sys

from promptdiff.results.layout import RunDamaged, run_status
from promptdiff.results.tables import BASE2NEW_DATASETS, DG_TARGETS

# base2new: the 11 datasets; xd: the same as targets and the DG variants of ImageNet
PROTOCOL_DATASETS = {"base2new": BASE2NEW_DATASETS, "xd": BASE2NEW_DATASETS + DG_TARGETS}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m promptdiff.results", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="a run folder's last checkpoint and whether training finished")
    sub.choices["status"].add_argument("run_dir")
    sub.add_parser("datasets", help="the datasets of a protocol, space-separated")
    sub.choices["datasets"].add_argument("protocol", choices=sorted(PROTOCOL_DATASETS))
    args = parser.parse_args(argv)
    if args.command == "datasets":
        print(" ".join(PROTOCOL_DATASETS[args.protocol]))
        return 0
    try:
        print(run_status(args.run_dir).line())
    except RunDamaged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
