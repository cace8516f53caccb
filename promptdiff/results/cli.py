"""What the table and plot CLIs (tools/results_table.py, tools/plot_base2new.py,
tools/plot_few_shot.py) share: the flags that select results and the Selection they make."""

from __future__ import annotations

import argparse

from promptdiff.results.tables import XD_SOURCE, Selection


def comma_list(text: str) -> list[str]:
    """argparse type for 'a,b,c'."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got '{text}'")
    return items


def int_list(text: str) -> list[int]:
    """argparse type for '1,2,3'."""
    try:
        return [int(t) for t in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,2,3, got '{text}'"
        ) from None


def add_selection_flags(
    parser: argparse.ArgumentParser,
    *,
    trainers_help: str = "e.g. CoOp,CoOpDiff",
    datasets_help: str = "e.g. caltech101,dtd",
    one_shot_count: bool = False,
    shots_help: str = "only these shot counts, e.g. 1,4,16",
    metric_help: str = "accuracy (default) or macro_f1",
) -> None:
    """--root, --trainers, --datasets, --shots, --seeds and --metric; one_shot_count: --shots
    takes a single count (a figure shows one) instead of a list."""
    parser.add_argument("--root", default="output", help="folder the scripts write into")
    parser.add_argument("--trainers", type=comma_list, help=trainers_help)
    parser.add_argument("--datasets", type=comma_list, help=datasets_help)
    parser.add_argument("--shots", type=int if one_shot_count else int_list, help=shots_help)
    parser.add_argument("--seeds", type=int_list, help="only these seeds, e.g. 1,2,3")
    parser.add_argument("--metric", default="accuracy", help=metric_help)


def selection_of(args: argparse.Namespace) -> Selection:
    """The Selection the flags of add_selection_flags (and --source, where a CLI has it) ask for."""
    return Selection(
        trainers=args.trainers,
        datasets=args.datasets,
        shots=[args.shots] if isinstance(args.shots, int) else args.shots,
        seeds=set(args.seeds) if args.seeds else None,
        metric=args.metric,
        source=getattr(args, "source", XD_SOURCE),
    )
