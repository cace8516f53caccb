"""The demo: base-to-new on the built-in shapes dataset with a tiny CLIP, on CPU, in a few minutes.

Writes everything under ./demo_output (or --workdir): a Caltech101-layout dataset, tiny CLIP
weights, and the usual output/base2new/... folders; then prints the Base / New / HM table.
ZeroshotCLIP, CoOp and CoOpDiff run through train.py exactly as the scripts run them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from promptdiff.backbone import tiny_clip  # noqa: E402
from promptdiff.engine.utils import torch_save_atomic  # noqa: E402
from promptdiff.synthetic import make_shapes_caltech, pretrain_tiny_clip  # noqa: E402

SHOTS = 8


def run(args: list[str]) -> None:
    """Run train.py in a child process, quietly unless it fails."""
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"demo: train.py failed: {' '.join(cmd)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "demo_output"))
    parser.add_argument("--epochs", type=int, default=10, help="stage-1 (baseline) epochs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=300,
        help="contrastive steps for the tiny CLIP (0: random)",
    )
    args = parser.parse_args()

    work = os.path.abspath(args.workdir)
    data = make_shapes_caltech(os.path.join(work, "data"), n_classes=8, n_per_class=24)
    weights = os.path.join(work, "tiny_clip.pt")
    if not os.path.isfile(weights):
        print("[demo] pre-training a tiny CLIP on captioned shapes (all 24 classes)", flush=True)
        model = tiny_clip()
        if args.pretrain_steps:
            pretrain_tiny_clip(model, steps=args.pretrain_steps)
        torch_save_atomic(model.state_dict(), weights)
    out = os.path.join(work, "output", "base2new")
    common = [
        "--root",
        data,
        "--seed",
        str(args.seed),
        "--dataset-config-file",
        os.path.join(ROOT, "configs/datasets/caltech101.yaml"),
    ]
    opts = [
        "MODEL.BACKBONE.PATH",
        weights,
        "INPUT.SIZE",
        "(32, 32)",
        "DATALOADER.NUM_WORKERS",
        "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE",
        "8",
        "DATALOADER.TEST.BATCH_SIZE",
        "50",
        "DATASET.NUM_SHOTS",
        str(SHOTS),
        "TRAINER.COOP.PREC",
        "fp32",
        "TRAINER.ZSCLIP.PREC",
        "fp32",
        "TRAIN.PRINT_FREQ",
        "100",
    ]
    runs = {
        "CoOp": ("vit_b16_ep50_ctxv1", ["OPTIM.MAX_EPOCH", str(args.epochs)]),
        "CoOpDiff": (
            "vit_b16_ep50_ctxv1",
            [
                "OPTIM.MAX_EPOCH",
                str(args.epochs + 10),
                "TRAINER.PD.STAGE1_EPOCHS",
                str(args.epochs),
                "TRAINER.PD.WIDTH",
                "128",
                "TRAINER.PD.DEPTH",
                "2",
                "TRAINER.PD.HEADS",
                "4",
                "TRAINER.PD.OVERFIT_STEPS",
                "5",
                "TRAINER.PD.OVERFIT_LR",
                "3e-4",
            ],
        ),
    }
    cdir = f"caltech101/shots_{SHOTS}"
    seed = f"seed{args.seed}"
    for trainer, (cfg_name, extra) in runs.items():
        cfg_file = os.path.join(ROOT, f"configs/trainers/{trainer}/{cfg_name}.yaml")
        train_dir = os.path.join(out, "train_base", cdir, trainer, cfg_name, seed)
        test_dir = os.path.join(out, "test_new", cdir, trainer, cfg_name, seed)
        print(f"[demo] {trainer}: training on base classes -> {train_dir}", flush=True)
        run(
            [
                *common,
                "--trainer",
                trainer,
                "--config-file",
                cfg_file,
                "--output-dir",
                train_dir,
                *opts,
                *extra,
                "DATASET.SUBSAMPLE_CLASSES",
                "base",
            ]
        )
        epoch = int(extra[extra.index("OPTIM.MAX_EPOCH") + 1])
        print(f"[demo] {trainer}: evaluating on new classes -> {test_dir}", flush=True)
        run(
            [
                *common,
                "--trainer",
                trainer,
                "--config-file",
                cfg_file,
                "--output-dir",
                test_dir,
                "--eval-only",
                "--model-dir",
                train_dir,
                "--load-epoch",
                str(epoch),
                *opts,
                *extra,
                "DATASET.SUBSAMPLE_CLASSES",
                "new",
            ]
        )
    zs_cfg = os.path.join(ROOT, "configs/trainers/CoOp/vit_b16_ep50.yaml")
    for split, sub in (("train_base", "base"), ("test_new", "new")):
        zs_dir = os.path.join(out, split, cdir, "ZeroshotCLIP", "vit_b16_ep50", seed)
        print(f"[demo] ZeroshotCLIP: evaluating on {sub} classes -> {zs_dir}", flush=True)
        run(
            [
                *common,
                "--trainer",
                "ZeroshotCLIP",
                "--config-file",
                zs_cfg,
                "--output-dir",
                zs_dir,
                "--eval-only",
                *opts,
                "DATASET.SUBSAMPLE_CLASSES",
                sub,
            ]
        )

    print(flush=True)
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools/results_table.py"),
            "--root",
            os.path.join(work, "output"),
            "--protocol",
            "base2new",
            "--shots",
            str(SHOTS),
            "--trainers",
            "ZeroshotCLIP,CoOp,CoOpDiff",
        ],
        check=True,
    )


if __name__ == "__main__":
    main()
