"""The demo: base-to-new on the miniature world with its tiny CLIP, on the CPU, in a few minutes.

Builds (or reuses) the world and the CLIP pre-trained on it (tools/miniworld.py build), then trains
CoOp and CoOpDiff on the 20 base classes (16 shots, seed 1), evaluates them and zero-shot CLIP on
the base and the 20 new classes, and prints the Base / New / HM table. Runs go through train.py
into the scripts' folder layout under ./demo_output (or --workdir).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, ROOT)

import miniworld as world_tool  # noqa: E402

from promptdiff import miniworld as mw  # noqa: E402

# the trainer configs, shortened where the world needs fewer epochs than ViT-B/16 on real data
RUNS = {
    "CoOp": ("vit_b16_ep50_ctxv1", ["OPTIM.MAX_EPOCH", "20"]),
    "CoOpDiff": (
        "vit_b16_ep50_ctxv1",
        ["OPTIM.MAX_EPOCH", "24", "TRAINER.PD.STAGE1_EPOCHS", "20"],
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "demo_output"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a reduced world, a briefly pre-trained CLIP and 2+1 epochs (for the tests)",
    )
    args = parser.parse_args(argv)
    start = time.time()
    work = os.path.abspath(args.workdir)
    data = os.path.join(work, "data")
    if args.quick:
        spec = mw.WorldSpec(n_train=16, n_val=1, n_test=2, domains=(mw.SOURCE,))
        recipe = mw.ClipRecipe(steps=20, pool_per_class=4)
        runs = {
            "CoOp": ("vit_b16_ep50_ctxv1", ["OPTIM.MAX_EPOCH", "2"]),
            "CoOpDiff": (
                "vit_b16_ep50_ctxv1",
                [
                    "OPTIM.MAX_EPOCH",
                    "3",
                    "TRAINER.PD.STAGE1_EPOCHS",
                    "2",
                    "TRAINER.PD.OVERFIT_STEPS",
                    "2",
                    "TRAINER.PD.DEPTH",
                    "1",
                ],
            ),  # fmt: skip
        }
    else:
        spec, recipe, runs = mw.WorldSpec(), mw.ClipRecipe(), RUNS
    print("[demo] building (or reusing) the miniature world and its CLIP", flush=True)
    world_tool.build(data, spec, recipe)
    opts = world_tool.world_opts(data)
    out = os.path.join(work, "output")
    shots, seed = world_tool.SHOTS, f"seed{args.seed}"
    rel = os.path.join("base2new", "{split}", world_tool.SOURCE_DATASET, f"shots_{shots}")
    common = [
        "--root", data, "--seed", str(args.seed),
        "--dataset-config-file", os.path.join(ROOT, "configs/datasets/miniworld.yaml"),
    ]  # fmt: skip
    for trainer, (cfg_name, extra) in runs.items():
        cfg_file = os.path.join(ROOT, f"configs/trainers/{trainer}/{cfg_name}.yaml")
        train_dir = os.path.join(out, rel.format(split="train_base"), trainer, cfg_name, seed)
        test_dir = os.path.join(out, rel.format(split="test_new"), trainer, cfg_name, seed)
        run = [*common, "--trainer", trainer, "--config-file", cfg_file, *opts]
        run += ["DATASET.NUM_SHOTS", str(shots), *extra]
        if not os.path.isfile(os.path.join(train_dir, "results.json")):
            print(f"[demo] {trainer}: training on the base classes -> {train_dir}", flush=True)
            world_tool.train_py(
                [*run, "--output-dir", train_dir, "DATASET.SUBSAMPLE_CLASSES", "base"]
            )
        epoch = int(extra[extra.index("OPTIM.MAX_EPOCH") + 1])
        print(f"[demo] {trainer}: evaluating on the new classes -> {test_dir}", flush=True)
        world_tool.train_py([
            *run, "--output-dir", test_dir, "--eval-only", "--model-dir", train_dir,
            "--load-epoch", str(epoch), "DATASET.SUBSAMPLE_CLASSES", "new",
        ])  # fmt: skip
    zs_cfg = os.path.join(ROOT, "configs/trainers/CoOp/vit_b16_ep50.yaml")
    totals = {}
    for split, sub in (("train_base", "base"), ("test_new", "new")):
        zs_dir = os.path.join(out, rel.format(split=split), "ZeroshotCLIP", "vit_b16_ep50", seed)
        print(f"[demo] ZeroshotCLIP: evaluating on the {sub} classes -> {zs_dir}", flush=True)
        world_tool.train_py([
            *common, "--trainer", "ZeroshotCLIP", "--config-file", zs_cfg, "--output-dir",
            zs_dir, "--eval-only", *opts, "DATASET.SUBSAMPLE_CLASSES", sub,
        ])  # fmt: skip
        with open(os.path.join(zs_dir, "results.json")) as f:
            totals[sub] = json.load(f)["total"]

    print(flush=True)
    table = world_tool.tables(
        out, ["ZeroshotCLIP", *runs], [args.seed], (), protocols=("base2new",)
    )
    print(table.strip())
    print(
        f"\nEach Base figure rests on {totals['base']} test images of the 20 base classes and each "
        f"New figure on {totals['new']} of the 20 new classes (one seed; one image is "
        f"{100 / totals['base']:.2f} points). Elapsed: {time.time() - start:.0f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
