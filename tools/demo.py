"""The demo: base-to-new on the miniature world with its tiny CLIP, on the CPU, in a few minutes.

Builds (or reuses) the world and its pre-trained CLIP under ./demo_output (or --workdir); trains
CoOp and CoOpDiff on 16 shots of the 20 base classes and evaluates them and ZeroshotCLIP on the
base and the 20 new classes, through the same scripts/<trainer>/base2new_*.sh the full protocol
runs (tools/miniworld.py run); then prints the Base / New / HM table and how many test images
each figure rests on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from promptdiff.tools import miniworld as tmw
from promptdiff.worlds import miniature as mw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAINERS = ("ZeroshotCLIP", "CoOp", "CoOpDiff")
# shorter than the protocol's configs (CoOp 50 epochs; CoOpDiff 50 + 10) so that the demo,
# CLIP pre-training included, takes about 5 minutes on 2 CPU cores; stage 2 runs 5 of its 10
EPOCHS = 20
STAGE2_EPOCHS = 5


def half_test_sizes(root: str) -> dict[str, int]:
    """Number of source-domain test images in the base and the new half of the world."""
    spec = tmw.read_spec(root)
    folder = os.path.join(root, mw.DATASET_DIR)
    with open(os.path.join(folder, f"split_zhou_{mw.domain_dataset_name(mw.SOURCE)}.json")) as f:
        test = json.load(f)["test"]
    half = (len(mw.classes(spec)) + 1) // 2
    return {
        "base": sum(label < half for _, label, _ in test),
        "new": sum(label >= half for _, label, _ in test),
    }


def footnote(root: str) -> str:
    """The sentence under the table: what each figure rests on."""
    counts = half_test_sizes(root)
    return (
        f"Base rests on {counts['base']} test images and New on {counts['new']} "
        f"(one image is {100 / counts['base']:.2f} points on Base). One seed, CoOp {EPOCHS} "
        f"epochs, CoOpDiff {EPOCHS} + {STAGE2_EPOCHS}: docs/RESULTS_MINIWORLD.md has the "
        "protocol's schedules, seeds 1-3 and every trainer."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "demo_output"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    start = time.time()
    root = os.path.abspath(args.workdir)
    output = os.path.join(root, "output")
    print("[demo] building (or reusing) the miniature world and its CLIP", flush=True)
    tmw.build(root, mw.WorldSpec(), mw.ClipRecipe())
    # stage 1 of CoOpDiff is CoOp's schedule; CoOp itself stops after stage 1's epochs
    extra = ["OPTIM.MAX_EPOCH", str(EPOCHS), "TRAINER.PD.STAGE1_EPOCHS", str(EPOCHS)]
    # the held-out fit is a measurement for studies, not part of the demo's table
    diff = ["OPTIM.MAX_EPOCH", str(EPOCHS + STAGE2_EPOCHS), "TRAINER.PD.HELDOUT_FIT", "False"]
    # two lanes at once: CoOpDiff, the long one, with every core; zero-shot then CoOp beside it
    # on one thread. Every run is its own seeded process, so the lanes cannot change each other's
    # numbers (the table is the same as run one after the other); their start-ups overlap
    with ThreadPoolExecutor(2) as lanes:
        jobs = [
            lanes.submit(tmw.run_protocols, root, output, TRAINERS[2:], [args.seed],
                         ["base2new"], extra + diff),
            lanes.submit(tmw.run_protocols, root, output, TRAINERS[:2], [args.seed],
                         ["base2new"], extra, threads=1),
        ]  # fmt: skip
        for job in jobs:
            job.result()
    print()
    print(tmw.tables(output, TRAINERS, [args.seed], (), ("base2new",), std=False))
    print(footnote(root))
    print(f"[demo] done in {time.time() - start:.0f} s; runs under {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
