"""Evaluate one trained *Diff run over several TRAINER.PD.STEPS / SAMPLER values, without
retraining, and print accuracy against steps.

    python tools/sweep_inference.py --model-dir output/.../CoOpDiff/.../seed1 --steps 1,2,5,10 \\
        --samplers ddim,euler --csv sweep.csv DATASET.SUBSAMPLE_CLASSES new

The run's config.yaml (written by train.py) gives everything else; trailing KEY VALUE options
change it (e.g. DATASET.ROOT /data, DATASET.SUBSAMPLE_CLASSES new). The model and the data are
built once; each evaluation resets the sampling noise to TRAINER.PD.NOISE_SEED exactly as
`train.py --eval-only` does, so each figure equals that evaluation with the same keys.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

from promptdiff.fileio import atomic_write
from promptdiff.results.cli import comma_list, int_list


def sweep(
    run_dir: str,
    steps: list[int],
    samplers: list[str] | None = None,
    opts: list[str] | None = None,
    epoch: int | None = None,
) -> list[dict]:
    """One record per (sampler, steps): accuracy, macro_f1, correct, total on TEST.SPLIT."""
    import promptdiff.datasets  # noqa: F401  (registers the datasets)
    import promptdiff.trainers  # noqa: F401  (registers the trainers)
    from promptdiff.engine.config import merge_opts
    from promptdiff.host import TRAINER_REGISTRY, set_random_seed
    from promptdiff.predict import checkpoint_epoch, run_config

    cfg = run_config(run_dir)
    merge_opts(cfg, list(opts or []))
    cfg.OUTPUT_DIR = ""
    base = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if not hasattr(base, "sample_prompts"):
        raise ValueError(
            f"{run_dir} is a {cfg.TRAINER.NAME} run, which samples no prompts; give a *Diff run."
        )
    if not steps or min(steps) < 1:
        raise ValueError(f"--steps must be integers >= 1 (got {steps}).")
    samplers = samplers or [cfg.TRAINER.PD.SAMPLER]
    records: list[dict] = []

    class Sweep(base):
        def write_results(self, results: dict, split: str) -> None:
            records.append({k: results[k] for k in ("accuracy", "macro_f1", "correct", "total")})

    cfg.freeze()
    if cfg.SEED >= 0:
        set_random_seed(cfg.SEED)  # the few-shot and base/new picks of the run
    trainer = Sweep(cfg)
    trainer.load_model(run_dir, epoch=checkpoint_epoch(run_dir) if epoch is None else epoch)
    rows = []
    for sampler in samplers:
        for n in steps:
            cfg.defrost()
            cfg.TRAINER.PD.SAMPLER, cfg.TRAINER.PD.STEPS = sampler, int(n)
            cfg.freeze()
            trainer.test()
            rows.append({"sampler": sampler, "steps": int(n), **records[-1]})
    return rows


def render(rows: list[dict]) -> str:
    """Accuracy against steps, one column per sampler."""
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    steps = sorted({r["steps"] for r in rows})
    acc = {(r["sampler"], r["steps"]): r["accuracy"] for r in rows}
    lines = ["steps  " + "  ".join(f"{s:>10}" for s in samplers)]
    for n in steps:
        cells = "  ".join(f"{acc[(s, n)]:>9.2f}%" for s in samplers)
        lines.append(f"{n:>5}  {cells}")
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf,
        ["sampler", "steps", "accuracy", "macro_f1", "correct", "total"],
        lineterminator="\n",
    )
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a trained *Diff run folder")
    parser.add_argument(
        "--steps", type=int_list, default=[1, 2, 5, 10, 20], help="comma list, e.g. 1,2,5,10"
    )
    parser.add_argument(
        "--samplers", type=comma_list, help="e.g. ddim,euler (default: the run's SAMPLER)"
    )
    parser.add_argument("--load-epoch", type=int, default=None, help="default: the last saved")
    parser.add_argument("--csv", default="", help="also write the records to this CSV file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config changes")
    return parser


def main(argv: list[str] | None = None) -> int:
    from promptdiff.engine.utils import USER_ERRORS, report_error

    args = build_parser().parse_args(argv)
    try:
        rows = sweep(args.model_dir, args.steps, args.samplers, args.opts, args.load_epoch)
        if args.csv:
            text = render_csv(rows)
            atomic_write(args.csv, lambda f: f.write(text))
    except USER_ERRORS as exc:
        return report_error(exc)
    sys.stdout.write(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
