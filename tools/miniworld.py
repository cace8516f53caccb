"""The miniature world: build it, check it, and run the protocols on it.

    python tools/miniworld.py build --root DIR      world under DIR/miniworld, CLIP in DIR/miniworld_clip.pt
    python tools/miniworld.py check --root DIR      the world checks; exit 1 when one fails
    python tools/miniworld.py run --root DIR --output OUT [--seeds 1,2,3] [--trainers ...]
                                                    base-to-new and DG for every trainer, through
                                                    the scripts in scripts/, then the tables
    python tools/miniworld.py ablate --root DIR --output OUT
                                                    INFERENCE modes and STEPS of the *Diff runs

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import results_io as rio  # noqa: E402

from promptdiff import miniworld as mw  # noqa: E402

CLIP_FILE = "miniworld_clip.pt"
SHOTS = 16
# every trainer, in the tables' order (ZeroshotCLIP, then each method beside its Diff variant)
TRAINERS = rio.TRAINER_ORDER
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
    return opts


def precision_keys() -> list[str]:
    """The trainer namespaces that have a PREC key (TRAINER.<KEY>.PREC)."""
    from promptdiff.config import extend_cfg
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


def coop_check(root: str, workdir: str, epochs: int = 20) -> tuple[float, float]:
    """(CoOp base accuracy, zero-shot base accuracy): CoOp trained on every base training image."""
    common = [
        "--root",
        root,
        "--seed",
        "1",
        "--dataset-config-file",
        os.path.join(ROOT, "configs/datasets/miniworld.yaml"),
        "--config-file",
        os.path.join(ROOT, "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"),
    ]
    opts = [*world_opts(root), "DATASET.SUBSAMPLE_CLASSES", "base", "DATASET.NUM_SHOTS", "-1"]
    coop_dir = os.path.join(workdir, "coop")
    zs_dir = os.path.join(workdir, "zeroshot")
    train_py([*common, "--trainer", "CoOp", "--output-dir", coop_dir, *opts,
              "OPTIM.MAX_EPOCH", str(epochs)])  # fmt: skip
    train_py([*common, "--trainer", "ZeroshotCLIP", "--output-dir", zs_dir, "--eval-only", *opts])
    return _accuracy(coop_dir), _accuracy(zs_dir)


def _accuracy(run_dir: str) -> float:
    with open(os.path.join(run_dir, "results.json")) as f:
        return float(json.load(f)["accuracy"])


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
        cmd = [
            sys.executable,
            os.path.join(ROOT, "tools/results_table.py"),
            "--root",
            output,
            "--protocol",
            protocol,
            "--trainers",
            ",".join(trainers),
            "--seeds",
            ",".join(map(str, seeds)),
            "--format",
            "markdown",
            *(["--std"] if std else []),
        ]
        if protocol == "dg":
            targets = [DOMAIN_CONFIGS[d] for d in domains if d != mw.SOURCE]
            cmd += ["--source", SOURCE_DATASET, "--datasets", ",".join(targets)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        out.append(proc.stdout if proc.returncode == 0 else proc.stderr)
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
                        out = os.path.join(
                            output, "ablations", name, "base2new", part, SOURCE_DATASET,
                            f"shots_{SHOTS}", trainer, cfg, f"seed{seed}",
                        )  # fmt: skip
                        if os.path.isfile(os.path.join(out, "results.json")):
                            continue
                        print(f"[miniworld] {trainer} seed {seed} {name} {sub}", flush=True)
                        train_py([
                            "--root", root, "--seed", str(seed), "--trainer", trainer,
                            "--dataset-config-file", os.path.join(ROOT, "configs/datasets/miniworld.yaml"),
                            "--config-file", os.path.join(ROOT, "configs/trainers", trainer, f"{cfg}.yaml"),
                            "--output-dir", out, "--eval-only", "--model-dir", train_dir,
                            "--load-epoch", str(epoch), *opts, "DATASET.NUM_SHOTS", str(SHOTS),
                            "DATASET.SUBSAMPLE_CLASSES", sub, *extra,
                        ])  # fmt: skip


def _train_dirs(tree: str, trainer: str, seed: int) -> list[tuple[str, str]]:
    base = os.path.join(tree, "train_base", SOURCE_DATASET, f"shots_{SHOTS}", trainer)
    if not os.path.isdir(base):
        return []
    return [
        (os.path.join(base, cfg, f"seed{seed}"), cfg)
        for cfg in sorted(os.listdir(base))
        if os.path.isfile(os.path.join(base, cfg, f"seed{seed}", "results.json"))
    ]


def _last_epoch(run_dir: str) -> int:
    with open(os.path.join(run_dir, "prompt_learner", "checkpoint")) as f:
        return int(f.read().strip().rsplit("-", 1)[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "check", "run", "ablate", "table"):
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
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.root, mw.WorldSpec(seed=args.seed), mw.ClipRecipe())
        return 0
    if args.command == "check":
        return 0 if all(c.ok for c in check(args.root, not args.no_coop)) else 1
    seeds = [int(s) for s in args.seeds.split(",")]
    trainers = [t for t in args.trainers.split(",") if t]
    unknown = [t for t in trainers if t not in TRAINERS]
    if unknown:
        raise SystemExit(f"error: unknown trainer(s) {unknown}; use some of {','.join(TRAINERS)}.")
    if args.command == "run":
        run_protocols(args.root, args.output, trainers, seeds, args.protocols.split(","))
    elif args.command == "ablate":
        ablate(args.root, args.output, [t for t in trainers if t in DIFF_TRAINERS], seeds)
    print(tables(args.output, trainers, seeds, read_spec(args.root).domains))
    return 0


if __name__ == "__main__":
    sys.exit(main())
