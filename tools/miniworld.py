"""The miniature world: build it, check it, and run the protocols on it.

    python tools/miniworld.py build --root DIR      world under DIR/miniworld, CLIP in DIR/miniworld_clip.pt
    python tools/miniworld.py check --root DIR      the world checks; exit 1 when one fails
    python tools/miniworld.py run --root DIR --output OUT [--seeds 1,2,3] [--trainers ...]
                                                    base-to-new and DG for every trainer, through
                                                    the scripts in scripts/, then the tables
    python tools/miniworld.py ablate --root DIR --output OUT
                                                    INFERENCE modes and STEPS of the *Diff runs
    python tools/miniworld.py tune --root DIR --output OUT --trainer T --config CFG
           --grid KEY=V1,V2 [--grid ...] [--eval-grid KEY=V1,V2]
                                                    base-class val accuracy (never test) of each
                                                    combination, trained on 16 base shots

The CLIP is pre-trained once per machine and recipe (cached in ~/.cache/promptdiff) and copied
next to the world. See docs/RESULTS_MINIWORLD.md for what these figures are.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import promptdiff.trainers as _registers_trainers  # noqa: E402, F401
from promptdiff import miniworld as mw  # noqa: E402
from promptdiff.host import TRAINER_REGISTRY  # noqa: E402
from promptdiff.results.layout import (  # noqa: E402
    RESULTS_FILE,
    checkpoint_epoch,
    last_checkpoint,
    results_file,
    run_dir,
)
from promptdiff.results.record import ResultsError, read_record  # noqa: E402
from promptdiff.results.tables import Selection, build_tables, order_trainers, render  # noqa: E402

CLIP_FILE = "miniworld_clip.pt"
SHOTS = 16
# every trainer, in the tables' order (ZeroshotCLIP, then each method beside its Diff variant)
TRAINERS = tuple(order_trainers(TRAINER_REGISTRY.registered_names()))
DIFF_TRAINERS = tuple(t for t in TRAINERS if t.endswith("Diff"))
SOURCE_DATASET = "miniworld"
# the dataset config name (configs/datasets/<name>.yaml) of each domain
DOMAIN_CONFIGS = {d: SOURCE_DATASET if d == mw.SOURCE else f"miniworld_{d}" for d in mw.DOMAINS}
# what every run on the world needs on top of the trainer configs: the world's CLIP and its
# 32-pixel input, fp32 on the CPU, and no loader workers (bit-for-bit repeatable on the CPU)


def world_opts(root: str) -> list[str]:
    """KEY VALUE options that point train.py at the world's CLIP and input size."""
    spec = read_spec(root)
    opts = [
        "MODEL.BACKBONE.PATH",
        os.path.join(os.path.abspath(root), CLIP_FILE),
        "INPUT.SIZE",
        f"({spec.size}, {spec.size})",
        "DATALOADER.NUM_WORKERS",
        "0",
        "TRAIN.PRINT_FREQ",
        "50",
    ]
    for key in precision_keys():
        opts += [f"TRAINER.{key}.PREC", "fp32"]
    for key, depth in DEEP_PROMPT_DEPTHS.items():
        opts += [key, str(depth)]
    return opts


# The deep-prompt depths of the papers' configs for 12-layer ViT-B/16 (VPT: every layer; MaPLe: 9
# of 12), scaled to the world CLIP's 4 vision and 3 text layers. (IVLP's configs differ in which
# towers they prompt, so a run of IVLP on the world sets its depths itself.)
DEEP_PROMPT_DEPTHS = {"TRAINER.VPT.PROMPT_DEPTH_VISION": 4, "TRAINER.MAPLE.PROMPT_DEPTH": 3}


def precision_keys() -> list[str]:
    """The trainer namespaces that have a PREC key (TRAINER.<KEY>.PREC)."""
    from promptdiff.config_keys import extend_cfg
    from promptdiff.engine.config import get_cfg_default

    trainer = extend_cfg(get_cfg_default()).TRAINER
    return sorted(k for k, v in trainer.items() if hasattr(v, "get") and "PREC" in v)


def read_spec(root: str) -> mw.WorldSpec:
    """The spec of the world written under root (world.json), or one sentence saying how to build it."""
    stamp = os.path.join(root, mw.DATASET_DIR, "world.json")
    if not os.path.isfile(stamp):
        raise SystemExit(
            f"error: no miniature world under {root} ({stamp} is missing); "
            f"run `python tools/miniworld.py build --root {root}` first."
        )
    with open(stamp) as f:
        spec = json.load(f)["spec"]
    return mw.WorldSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def build(root: str, spec: mw.WorldSpec, recipe: mw.ClipRecipe, progress: bool = True) -> str:
    """Write the world and its CLIP under root; returns the CLIP weights path."""
    folder = mw.write_world(root, spec, progress=progress)
    cached = mw.cached_clip(spec, recipe, progress=progress)
    target = os.path.join(root, CLIP_FILE)
    if not os.path.isfile(target) or not filecmp.cmp(cached, target, shallow=False):
        tmp = target + ".tmp"
        shutil.copyfile(cached, tmp)
        os.replace(tmp, target)
    print(f"world: {folder} ({len(mw.classes(spec))} classes, domains {', '.join(spec.domains)})")
    print(f"CLIP:  {target} (cached as {cached})")
    return target


def train_py(args: list[str], quiet: bool = True) -> subprocess.CompletedProcess:
    """Run train.py in a child process; raise with its tail when it fails."""
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=quiet, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout or "")[-3000:] + (proc.stderr or "")[-3000:]
        raise SystemExit(f"{tail}\nerror: train.py failed: {' '.join(cmd)}")
    return proc


def source_flags(root: str, seed: int, trainer: str, config: str) -> list[str]:
    """train.py's flags for `trainer` with configs/trainers/<config>.yaml on the source domain."""
    return [
        "--root", root, "--seed", str(seed), "--trainer", trainer,
        "--dataset-config-file", os.path.join(ROOT, f"configs/datasets/{SOURCE_DATASET}.yaml"),
        "--config-file", os.path.join(ROOT, "configs/trainers", f"{config}.yaml"),
    ]  # fmt: skip


def coop_check(root: str, workdir: str, epochs: int = 20) -> tuple[float, float]:
    """(CoOp base accuracy, zero-shot base accuracy): CoOp trained on every base training image."""
    opts = [*world_opts(root), "DATASET.SUBSAMPLE_CLASSES", "base", "DATASET.NUM_SHOTS", "-1"]
    coop_dir = os.path.join(workdir, "coop")
    zs_dir = os.path.join(workdir, "zeroshot")
    for trainer, out, extra in (
        ("CoOp", coop_dir, ["OPTIM.MAX_EPOCH", str(epochs)]),
        ("ZeroshotCLIP", zs_dir, []),
    ):
        flags = source_flags(root, 1, trainer, "CoOp/vit_b16_ep50_ctxv1")
        eval_only = ["--eval-only"] if trainer == "ZeroshotCLIP" else []
        train_py([*flags, "--output-dir", out, *eval_only, *opts, *extra])
    return _accuracy(coop_dir), _accuracy(zs_dir)


def _accuracy(run: str, split: str = "test") -> float:
    path = Path(run) / results_file(split)
    parsed = read_record(path)
    if parsed is None or "accuracy" not in parsed[0]:
        raise SystemExit(f"error: no accuracy in {path}; run the evaluation again.")
    return parsed[0]["accuracy"]


def check(root: str, with_coop: bool = True) -> list[mw.Check]:
    """Every world check, printed; the CoOp one trains CoOp on all base training images."""
    from promptdiff.backbone import load_clip

    spec = read_spec(root)
    model = load_clip("ViT-B/16", os.path.join(root, CLIP_FILE))
    checks = mw.world_checks(os.path.join(root, mw.DATASET_DIR), model, spec)
    if with_coop:
        work = os.path.join(root, "check_runs")
        shutil.rmtree(work, ignore_errors=True)
        coop, zs = coop_check(root, work)
        checks.append(
            mw.Check(
                f"CoOp (all base train images) minus zero-shot on base ({coop:.1f} vs {zs:.1f})",
                coop - zs,
                10,
                None,
                " pts",
            )
        )
    for c in checks:
        print(c.describe())
    return checks


# ---- protocols ---------------------------------------------------------------------------------
def script(trainer: str, name: str, *args: str, env: dict) -> None:
    """bash scripts/<trainer>/<name>.sh ARGS with the world's environment."""
    cmd = ["bash", os.path.join(ROOT, "scripts", trainer, f"{name}.sh"), *args]
    print(f"[miniworld] {trainer} {name} {' '.join(args)}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}\nerror: {' '.join(cmd)} failed"
        )


def script_env(root: str, output: str, extra: list[str]) -> dict:
    env = dict(os.environ)
    env.update(
        DATA=os.path.abspath(root),
        OUTPUT=os.path.abspath(output),
        SHOTS=str(SHOTS),
        XD_SOURCE=SOURCE_DATASET,
        PYTHON=sys.executable,
        EXTRA_OPTS=" ".join(_quote(x) for x in [*world_opts(root), *extra]),
    )
    return env


def _quote(word: str) -> str:
    return f"'{word}'" if any(c in word for c in " ()") else word


def run_protocols(root: str, output: str, trainers, seeds, protocols, extra=()) -> None:
    """base2new and dg for each trainer and seed, through the per-trainer scripts; `extra` are
    KEY VALUE options added to every run."""
    read_spec(root)
    env = script_env(root, output, list(extra))
    domains = [DOMAIN_CONFIGS[d] for d in read_spec(root).domains]
    for seed in seeds:
        for trainer in trainers:
            s = str(seed)
            if "base2new" in protocols:
                if trainer != "ZeroshotCLIP":
                    script(trainer, "base2new_train", SOURCE_DATASET, s, env=env)
                script(trainer, "base2new_test", SOURCE_DATASET, s, env=env)
            if "dg" in protocols:
                if trainer != "ZeroshotCLIP":
                    script(trainer, "xd_train", s, env=env)
                for dataset in domains:
                    if trainer == "ZeroshotCLIP" or dataset != SOURCE_DATASET:
                        script(trainer, "xd_test", dataset, s, env=env)


def tables(
    output: str, trainers, seeds, domains, protocols=("base2new", "dg"), std: bool = True
) -> str:
    """The base2new and dg tables (mean, and ± std over seeds with `std`) as Markdown."""
    out = []
    for protocol in protocols:
        sel = Selection(trainers=list(trainers), seeds=set(seeds))
        if protocol == "dg":
            sel.source = SOURCE_DATASET
            sel.datasets = [DOMAIN_CONFIGS[d] for d in domains if d != mw.SOURCE]
        try:
            out.append(render(build_tables(output, protocol, sel), "markdown", std))
        except ResultsError as exc:
            out.append(f"error: {exc}\n")
    return "\n".join(out)


ABLATIONS = {
    "inference_base": ["TRAINER.PD.INFERENCE", "base"],
    "inference_mean": ["TRAINER.PD.INFERENCE", "mean"],
    "steps_1": ["TRAINER.PD.STEPS", "1"],
    "steps_2": ["TRAINER.PD.STEPS", "2"],
    "steps_10": ["TRAINER.PD.STEPS", "10"],
}


def ablate(root: str, output: str, trainers, seeds) -> None:
    """Re-evaluate every trained *Diff base2new model (base and new) under each ablation, into
    OUTPUT/ablations/<name>/base2new/..., without retraining (STEPS 5 sample is the main run)."""
    opts = world_opts(root)
    tree = os.path.join(output, "base2new")
    for trainer in trainers:
        for seed in seeds:
            runs = _train_dirs(tree, trainer, seed)
            for train_dir, cfg in runs:
                epoch = _last_epoch(train_dir)
                for name, extra in ABLATIONS.items():
                    for sub, part in (("base", "train_base"), ("new", "test_new")):
                        out = run_dir(
                            os.path.join(output, "ablations", name), f"base2new/{part}",
                            SOURCE_DATASET, SHOTS, trainer, cfg, seed,
                        )  # fmt: skip
                        if os.path.isfile(os.path.join(out, RESULTS_FILE)):
                            continue
                        print(f"[miniworld] {trainer} seed {seed} {name} {sub}", flush=True)
                        train_py([
                            *source_flags(root, seed, trainer, f"{trainer}/{cfg}"),
                            "--output-dir", out, "--eval-only", "--model-dir", train_dir,
                            "--load-epoch", str(epoch), *opts, "DATASET.NUM_SHOTS", str(SHOTS),
                            "DATASET.SUBSAMPLE_CLASSES", sub, *extra,
                        ])  # fmt: skip


def ablation_table(output: str, trainers, seeds) -> str:
    """Markdown: Base / New (mean ± std over seeds) and HM of each *Diff trainer's base2new models
    under the main setting (INFERENCE sample, 5 steps) and each ablation, from the results
    library (HM of the seed-averaged Base and New, as in every table)."""
    from promptdiff.results.record import ResultsError
    from promptdiff.results.tables import Selection, base2new_results, fmt_value

    settings = [("sample, 5 steps (main)", output)] + [
        (name.replace("_", " "), os.path.join(output, "ablations", name)) for name in ABLATIONS
    ]
    lines = ["| Trainer | Setting | Base | New | HM |", "|:--|:--|--:|--:|--:|"]
    for trainer in trainers:
        sel = Selection(trainers=[trainer], datasets=[SOURCE_DATASET], seeds=set(seeds))
        for label, root in settings:
            try:
                (result,) = base2new_results(root, sel)
            except ResultsError:  # this ablation has not been run for this trainer
                continue
            (entry,) = result.entries.values()
            if entry.base and entry.new:
                cells = [fmt_value(s.mean, s.std) for s in (entry.base, entry.new)]
                lines.append(
                    f"| {trainer} | {label} ({entry.base.n} seeds) | {' | '.join(cells)} | "
                    f"{fmt_value(entry.hm)} |"
                )
    return "\n".join(lines)


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """[(KEY, [values])] from KEY=V1,V2 arguments."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"error: --grid/--eval-grid takes KEY=V1,V2 (got {item!r}).")
        grid.append((key, values.split(",")))
    return grid


def combinations(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination of the grid as KEY VALUE option lists (one empty list for no grid)."""
    combos: list[list[str]] = [[]]
    for key, values in grid:
        combos = [c + [key, v] for c in combos for v in values]
    return combos


def tune(root, output, trainer, cfg, grid, eval_grid, seed: int = 1) -> list[tuple[str, float]]:
    """Train `trainer` on 16 base shots for each grid combination and evaluate each on the base
    classes' val split (with every eval-grid combination, without retraining); returns
    [(options, val accuracy)] and prints them, best marked."""
    common = source_flags(root, seed, trainer, f"{trainer}/{cfg}")
    opts = [*world_opts(root), "DATASET.NUM_SHOTS", str(SHOTS),
            "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.SPLIT", "val"]  # fmt: skip
    rows = []
    for k, combo in enumerate(combinations(grid)):
        train_dir = os.path.join(output, "tune", trainer, cfg, f"seed{seed}", f"run{k}")
        if not os.path.isfile(os.path.join(train_dir, results_file("val"))):
            print(f"[tune] {trainer} {' '.join(combo)}", flush=True)
            train_py([*common, "--output-dir", train_dir, *opts, *combo])
        for j, extra in enumerate(combinations(eval_grid)):
            eval_dir = os.path.join(train_dir, f"eval{j}")
            if extra and not os.path.isfile(os.path.join(eval_dir, results_file("val"))):
                train_py([*common, "--output-dir", eval_dir, "--eval-only", "--model-dir",
                          train_dir, "--load-epoch", str(_last_epoch(train_dir)), *opts, *combo,
                          *extra])  # fmt: skip
            acc = _accuracy(eval_dir if extra else train_dir, "val")
            rows.append((" ".join(combo + extra), acc))
    best = max(acc for _, acc in rows)
    for options, acc in rows:
        print(f"{'*' if acc == best else ' '} {acc:6.2f}  {options or '(config as is)'}")
    return rows


def _train_dirs(tree: str, trainer: str, seed: int) -> list[tuple[str, str]]:
    base = os.path.join(tree, "train_base", SOURCE_DATASET, f"shots_{SHOTS}", trainer)
    if not os.path.isdir(base):
        return []
    return [
        (os.path.join(base, cfg, f"seed{seed}"), cfg)
        for cfg in sorted(os.listdir(base))
        if os.path.isfile(os.path.join(base, cfg, f"seed{seed}", RESULTS_FILE))
    ]


def _last_epoch(run: str) -> int | str | None:
    return checkpoint_epoch(last_checkpoint(run))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "check", "run", "ablate", "table", "tune"):
        p = sub.add_parser(name)
        p.add_argument("--root", required=True, help="folder that holds (or will hold) the world")
        if name == "build":
            p.add_argument("--seed", type=int, default=0, help="the world's seed")
        if name == "check":
            p.add_argument("--no-coop", action="store_true", help="skip the CoOp training check")
        if name in ("run", "ablate", "table"):
            p.add_argument("--output", required=True, help="output root of the runs")
            p.add_argument("--seeds", default="1,2,3")
            p.add_argument("--trainers", default=",".join(TRAINERS))
        if name == "run":
            p.add_argument("--protocols", default="base2new,dg")
            p.add_argument(
                "--opts", default="", help="'KEY VALUE ...' added to every run (an ablation)"
            )
        if name == "tune":
            p.add_argument("--output", required=True, help="output root of the tuning runs")
            p.add_argument("--trainer", required=True)
            p.add_argument("--config", required=True, help="config name in configs/trainers/T/")
            p.add_argument("--grid", action="append", default=[], help="KEY=V1,V2 (trained)")
            p.add_argument("--eval-grid", action="append", default=[], help="KEY=V1,V2 (eval)")
            p.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.root, mw.WorldSpec(seed=args.seed), mw.ClipRecipe())
        return 0
    if args.command == "check":
        return 0 if all(c.ok for c in check(args.root, not args.no_coop)) else 1
    if args.command == "tune":
        if args.trainer not in TRAINERS:
            raise SystemExit(
                f"error: unknown trainer {args.trainer!r}; use one of {','.join(TRAINERS)}."
            )
        tune(args.root, args.output, args.trainer, args.config, parse_grid(args.grid),
             parse_grid(args.eval_grid), args.seed)  # fmt: skip
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    trainers = [t for t in args.trainers.split(",") if t]
    unknown = [t for t in trainers if t not in TRAINERS]
    if unknown:
        raise SystemExit(f"error: unknown trainer(s) {unknown}; use some of {','.join(TRAINERS)}.")
    protocols = ("base2new", "dg")
    if args.command == "run":
        protocols = args.protocols.split(",")
        run_protocols(args.root, args.output, trainers, seeds, protocols, args.opts.split())
    elif args.command == "ablate":
        diff = [t for t in trainers if t in DIFF_TRAINERS]
        ablate(args.root, args.output, diff, seeds)
        print(ablation_table(args.output, diff, seeds))
        return 0
    print(tables(args.output, trainers, seeds, read_spec(args.root).domains, protocols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
