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

Every command takes --world default|percam: `percam` is the world with a camera drawn per image
(WorldSpec.cameras), under DIR/miniworld_percam with a copy of the default world's CLIP
(DIR/miniworld_percam_clip.pt: pre-training never sees a camera) and datasets (configs/datasets/miniworld_percam*.yaml); both worlds may share one --root and one
--output. The CLIP is pre-trained once per machine and recipe (cached in ~/.cache/promptdiff) and
copied next to the world. See docs/RESULTS_MINIWORLD.md for what these figures are.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import promptdiff.trainers as _registers_trainers  # noqa: E402, F401
from promptdiff.fileio import atomic_write  # noqa: E402
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
from promptdiff.trainer_names import split_diff  # noqa: E402
from promptdiff.worlds import miniature as mw  # noqa: E402

SHOTS = 16
# every trainer, in the tables' order (ZeroshotCLIP, then each method beside its Diff variant)
TRAINERS = tuple(order_trainers(TRAINER_REGISTRY.registered_names()))
DIFF_TRAINERS = tuple(t for t in TRAINERS if split_diff(t)[1])
WORLD_KINDS = tuple(mw.WORLDS)


def clip_file(kind: str = "default") -> str:
    """The world's CLIP weights under --root: miniworld_clip.pt, miniworld_<kind>_clip.pt."""
    return f"{mw.dataset_dir(kind)}_clip.pt"


def source_dataset(kind: str = "default") -> str:
    """The source domain's dataset config name (configs/datasets/<name>.yaml)."""
    return mw.dataset_dir(kind)


def domain_configs(kind: str = "default") -> dict[str, str]:
    """The dataset config name of each domain of the world."""
    src = source_dataset(kind)
    return {d: src if d == mw.SOURCE else f"{src}_{d}" for d in mw.DOMAINS}


def shifted_datasets(kind: str = "default", domains=mw.DOMAINS) -> list[str]:
    """The dataset config names of `domains` other than the source (DG's targets), in order."""
    configs = domain_configs(kind)
    return [configs[d] for d in domains if d != mw.SOURCE]


# what every run on the world needs on top of the trainer configs: the world's CLIP and its
# 32-pixel input, fp32 on the CPU, and no loader workers (bit-for-bit repeatable on the CPU)


def world_opts(root: str, kind: str = "default") -> list[str]:
    """KEY VALUE options that point train.py at the world's CLIP and input size."""
    spec = read_spec(root, kind)
    opts = [
        "MODEL.BACKBONE.PATH",
        os.path.join(os.path.abspath(root), clip_file(kind)),
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


# The deep-prompt depths of the papers' configs for 12-layer ViT-B/16 (VPT and IVLP: every layer;
# MaPLe and PromptSRC: 9 of 12), scaled to the world CLIP's 4 vision and 3 text layers.
DEEP_PROMPT_DEPTHS = {
    "TRAINER.VPT.PROMPT_DEPTH_VISION": 4,
    "TRAINER.IVLP.PROMPT_DEPTH_VISION": 4,
    "TRAINER.IVLP.PROMPT_DEPTH_TEXT": 3,
    "TRAINER.MAPLE.PROMPT_DEPTH": 3,
    # PromptSRC: 9 of 12 layers in each tower, as MaPLe
    "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION": 3,
    "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 3,
}


def precision_keys() -> list[str]:
    """The trainer namespaces that have a PREC key (TRAINER.<KEY>.PREC)."""
    from promptdiff.config_keys import extend_cfg
    from promptdiff.engine.config import get_cfg_default

    trainer = extend_cfg(get_cfg_default()).TRAINER
    return sorted(k for k, v in trainer.items() if hasattr(v, "get") and "PREC" in v)


def read_spec(root: str, kind: str = "default") -> mw.WorldSpec:
    """The spec of the world written under root (world.json), or one sentence saying how to build it."""
    stamp = os.path.join(root, mw.dataset_dir(kind), "world.json")
    if not os.path.isfile(stamp):
        flag = "" if kind == "default" else f" --world {kind}"
        raise SystemExit(
            f"error: no {kind} miniature world under {root} ({stamp} is missing); "
            f"run `python tools/miniworld.py build{flag} --root {root}` first."
        )
    with open(stamp) as f:
        spec = json.load(f)["spec"]
    return mw.WorldSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def build(root: str, spec: mw.WorldSpec, recipe: mw.ClipRecipe, progress: bool = True) -> str:
    """Write the world and its CLIP under root; returns the CLIP weights path."""
    if os.path.isfile(mw.clip_cache_path(spec, recipe)):
        folder = mw.write_world(root, spec, progress=progress)
        cached = mw.cached_clip(spec, recipe, progress=progress)
    else:
        # the world's images never depend on its CLIP: render them in a second process while
        # this one pre-trains (on 2 cores about 15 s off a first build; the bytes are the same)
        print("rendering the miniature world in a second process", flush=True)
        fork = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(1, mp_context=fork) as pool:
            world = pool.submit(mw.write_world, root, spec, False)
            cached = mw.cached_clip(spec, recipe, progress=progress)
            folder = world.result()
    target = os.path.join(root, clip_file(spec.kind))
    if not os.path.isfile(target) or not filecmp.cmp(cached, target, shallow=False):
        with open(cached, "rb") as src:
            atomic_write(target, lambda f: shutil.copyfileobj(src, f), mode="wb")
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


def source_flags(
    root: str, seed: int, trainer: str, config: str, kind: str = "default", dataset: str = ""
) -> list[str]:
    """train.py's flags for `trainer` with configs/trainers/<config>.yaml on `dataset` (default:
    the source domain)."""
    dataset = dataset or source_dataset(kind)
    return [
        "--root", root, "--seed", str(seed), "--trainer", trainer,
        "--dataset-config-file", os.path.join(ROOT, f"configs/datasets/{dataset}.yaml"),
        "--config-file", os.path.join(ROOT, "configs/trainers", f"{config}.yaml"),
    ]  # fmt: skip


def _all_base_images(root: str, kind: str) -> list[str]:
    """The world's options plus every training image of the base classes (the checks' data)."""
    return [*world_opts(root, kind), "DATASET.SUBSAMPLE_CLASSES", "base", "DATASET.NUM_SHOTS", "-1"]


def coop_check(
    root: str, workdir: str, epochs: int = 20, kind: str = "default", data_root: str | None = None
) -> float:
    """Base accuracy of CoOp trained on every base training image of the world under data_root
    (default: root; the oracle points it at one camera's copy of the splits)."""
    opts = _all_base_images(root, kind)
    flags = source_flags(data_root or root, 1, "CoOp", "CoOp/vit_b16_ep50_ctxv1", kind)
    train_py([*flags, "--output-dir", workdir, *opts, "OPTIM.MAX_EPOCH", str(epochs)])
    return _accuracy(workdir)


def zero_shot_check(root: str, workdir: str, kind: str = "default") -> float:
    """Base accuracy of ZeroshotCLIP on the world."""
    opts = _all_base_images(root, kind)
    flags = source_flags(root, 1, "ZeroshotCLIP", "CoOp/vit_b16_ep50_ctxv1", kind)
    train_py([*flags, "--output-dir", workdir, "--eval-only", *opts])
    return _accuracy(workdir)


def camera_root(root: str, workdir: str, kind: str, camera: int) -> str:
    """A data root holding one camera's images of the world only (the world's images folder
    linked, its split files filtered by cameras.json): where the per-camera oracle trains."""
    from promptdiff.engine.utils import write_json

    folder = os.path.join(root, mw.dataset_dir(kind))
    cameras = mw.read_cameras(folder)
    out = os.path.join(workdir, f"camera{camera}")
    target = os.path.join(out, mw.dataset_dir(kind))
    os.makedirs(target, exist_ok=True)
    link = os.path.join(target, "images")
    if not os.path.islink(link):
        os.symlink(os.path.abspath(os.path.join(folder, "images")), link)
    name = f"split_zhou_{mw.domain_dataset_name(mw.SOURCE, kind)}.json"
    with open(os.path.join(folder, name)) as f:
        split = json.load(f)
    kept = {
        key: [item for item in items if cameras[item[0]] == camera] for key, items in split.items()
    }
    write_json(kept, os.path.join(target, name))
    return out


def _accuracy(run: str, split: str = "test") -> float:
    path = Path(run) / results_file(split)
    parsed = read_record(path)
    if parsed is None or "accuracy" not in parsed[0]:
        raise SystemExit(f"error: no accuracy in {path}; run the evaluation again.")
    return parsed[0]["accuracy"]


def check(root: str, with_coop: bool = True, kind: str = "default") -> list[mw.Check]:
    """Every world check, printed; the CoOp ones train CoOp on all base training images (and, on
    the per-image-camera world, once per camera: the oracle that knows the camera)."""
    from promptdiff.backbone import load_clip

    spec = read_spec(root, kind)
    model = load_clip("ViT-B/16", os.path.join(root, clip_file(kind)))
    folder = os.path.join(root, mw.dataset_dir(kind))
    if spec.cameras:
        checks = mw.percam_checks(folder, model, spec)
    else:
        checks = mw.world_checks(folder, model, spec)
    if with_coop:
        work = os.path.join(root, f"check_runs_{kind}")
        shutil.rmtree(work, ignore_errors=True)
        coop = coop_check(root, os.path.join(work, "coop"), kind=kind)
        if spec.cameras:
            per_camera = [
                coop_check(
                    root,
                    os.path.join(work, f"oracle{k}"),
                    kind=kind,
                    data_root=camera_root(root, work, kind, k),
                )
                for k in range(len(spec.cameras))
            ]
            oracle = sum(per_camera) / len(per_camera)
            cams = " / ".join(f"{a:.1f}" for a in per_camera)
            checks.append(
                mw.Check(
                    f"oracle (CoOp per camera: {cams}) minus CoOp on base ({oracle:.1f} vs {coop:.1f})",
                    oracle - coop,
                    PERCAM_ORACLE_GAP,
                    None,
                    " pts",
                )
            )
        else:
            zs = zero_shot_check(root, os.path.join(work, "zeroshot"), kind)
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


# the per-image-camera world: one shared prompt must fall this far behind one prompt per camera
PERCAM_ORACLE_GAP = 8.0


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


def script_env(root: str, output: str, extra: list[str], kind: str = "default") -> dict:
    env = dict(os.environ)
    env.update(
        DATA=os.path.abspath(root),
        OUTPUT=os.path.abspath(output),
        SHOTS=str(SHOTS),
        XD_SOURCE=source_dataset(kind),
        PYTHON=sys.executable,
        EXTRA_OPTS=" ".join(_quote(x) for x in [*world_opts(root, kind), *extra]),
    )
    return env


def _quote(word: str) -> str:
    return f"'{word}'" if any(c in word for c in " ()") else word


def run_protocols(
    root: str,
    output: str,
    trainers,
    seeds,
    protocols,
    extra=(),
    kind: str = "default",
    threads: int | None = None,
) -> None:
    """base2new and dg for each trainer and seed, through the per-trainer scripts; `extra` are
    KEY VALUE options added to every run; `threads` sets the runs' OMP_NUM_THREADS."""
    env = script_env(root, output, list(extra), kind)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    configs = domain_configs(kind)
    source = source_dataset(kind)
    domains = [configs[d] for d in read_spec(root, kind).domains]
    for seed in seeds:
        for trainer in trainers:
            s = str(seed)
            if "base2new" in protocols:
                if trainer != "ZeroshotCLIP":
                    script(trainer, "base2new_train", source, s, env=env)
                script(trainer, "base2new_test", source, s, env=env)
            if "dg" in protocols:
                if trainer != "ZeroshotCLIP":
                    script(trainer, "xd_train", s, env=env)
                for dataset in domains:
                    if trainer == "ZeroshotCLIP" or dataset != source:
                        script(trainer, "xd_test", dataset, s, env=env)


def tables(
    output: str,
    trainers,
    seeds,
    domains,
    protocols=("base2new", "dg"),
    std: bool = True,
    kind: str = "default",
) -> str:
    """The base2new and dg tables (mean, and ± std over seeds with `std`) as Markdown."""
    out = []
    for protocol in protocols:
        sel = Selection(trainers=list(trainers), seeds=set(seeds))
        if protocol == "base2new":
            sel.datasets = [source_dataset(kind)]
        if protocol == "dg":
            sel.source = source_dataset(kind)
            sel.datasets = shifted_datasets(kind, domains)
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
    "samples_4": ["TRAINER.PD.NUM_SAMPLES", "4"],
    "samples_16": ["TRAINER.PD.NUM_SAMPLES", "16"],
    "x0_refeed": ["TRAINER.PD.SAMPLER", "x0_refeed"],
}


def ablate(
    root: str,
    output: str,
    trainers,
    seeds,
    kind: str = "default",
    names=tuple(ABLATIONS),
    run_opts=(),
    protocols=("base2new",),
) -> None:
    """Re-evaluate every trained *Diff model under each ablation, without retraining: base2new
    models on base and new into OUTPUT/ablations/<name>/base2new/..., DG models on each shifted
    domain into OUTPUT/ablations/<name>/xd/test/...; the same folders as the main runs'."""
    opts = world_opts(root, kind)
    source = source_dataset(kind)
    targets = shifted_datasets(kind, read_spec(root, kind).domains)
    # (protocol's train tree, [(test tree, dataset, SUBSAMPLE_CLASSES)]) of each protocol
    plans = {
        "base2new": ("base2new/train_base",
                     [("base2new/train_base", source, "base"), ("base2new/test_new", source, "new")]),
        "dg": ("xd/train", [("xd/test", dataset, "all") for dataset in targets]),
    }  # fmt: skip
    for protocol in protocols:
        train_tree, tests = plans[protocol]
        for trainer in trainers:
            for seed in seeds:
                for train_dir, cfg in _train_dirs(output, train_tree, trainer, seed, source):
                    epoch = _last_epoch(train_dir)
                    for name in names:
                        for tree, dataset, sub in tests:
                            out = run_dir(os.path.join(output, "ablations", name), tree,
                                          dataset, SHOTS, trainer, cfg, seed)  # fmt: skip
                            if os.path.isfile(os.path.join(out, RESULTS_FILE)):
                                continue
                            print(f"[miniworld] {trainer} seed {seed} {name} {dataset} {sub}",
                                  flush=True)  # fmt: skip
                            train_py([
                                *source_flags(root, seed, trainer, f"{trainer}/{cfg}", kind,
                                              dataset),
                                "--output-dir", out, "--eval-only", "--model-dir", train_dir,
                                "--load-epoch", str(epoch), *opts, "DATASET.NUM_SHOTS",
                                str(SHOTS), "DATASET.SUBSAMPLE_CLASSES", sub, *run_opts,
                                *ABLATIONS[name],
                            ])  # fmt: skip


def ablation_table(output: str, trainers, seeds, kind: str = "default") -> str:
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
        sel = Selection(trainers=[trainer], datasets=[source_dataset(kind)], seeds=set(seeds))
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


def _protocol_parts(kind: str, protocol: str) -> list[tuple[str, str]]:
    """(tree, dataset) of each evaluation a seed's headline figure is made of: base2new, the base
    and the new half of the source domain; dg, each shifted domain."""
    source = source_dataset(kind)
    if protocol == "base2new":
        return [("base2new/train_base", source), ("base2new/test_new", source)]
    if protocol == "dg":
        return [("xd/test", d) for d in shifted_datasets(kind)]
    raise ValueError(f"protocol {protocol!r}: use base2new or dg.")


def seed_score(
    output: str, trainer: str, cfg: str, seed: int, kind: str, protocol: str = "base2new"
) -> float | None:
    """One seed's headline figure of a run under output, None if a part is missing: base2new, the
    HM of its Base and New accuracy; dg, its mean accuracy over the shifted domains."""
    accs = []
    for tree, dataset in _protocol_parts(kind, protocol):
        run = run_dir(output, tree, dataset, SHOTS, trainer, cfg, seed)
        path = Path(run) / RESULTS_FILE
        parsed = read_record(path) if path.is_file() else None
        if parsed is None or "accuracy" not in parsed[0]:
            return None
        accs.append(parsed[0]["accuracy"])
    if protocol == "dg":
        return sum(accs) / len(accs)
    return 2 * accs[0] * accs[1] / (accs[0] + accs[1])


def scored_configs(output: str, trainer: str, kind: str, protocol: str) -> list[str]:
    """The config folders of `trainer`'s evaluations under output (a main run's root or an
    ablation's, which holds evaluations only) in the protocol's first evaluation tree."""
    tree, dataset = _protocol_parts(kind, protocol)[0]
    return config_names(output, tree, dataset, trainer)


# the settings a verdict compares, each (label, ablation folder or None for the main run)
VERDICT_SETTINGS = (("paper, 5 steps", None), ("shipped, 1 step", "steps_1"))
# the ablation that reads each checkpoint with its base prompt alone
BASE_PROMPT = "inference_base"


def _settings_root(output: str, ablation: str | None) -> str:
    return output if ablation is None else os.path.join(output, "ablations", ablation)


def generated_minus_base(
    outputs: dict[str, str], trainers, seeds, protocol: str = "base2new"
) -> dict:
    """{(world, setting): {trainer: [per-seed score (seed_score) of the generated prompts minus
    that of the same checkpoints' base prompts (ablations/inference_base)]}} for each
    VERDICT_SETTINGS entry."""
    gaps: dict[tuple[str, str], dict[str, list[float]]] = {}
    for kind, output in outputs.items():
        base_root = _settings_root(output, BASE_PROMPT)
        for trainer in trainers:
            for cfg in scored_configs(output, trainer, kind, protocol):
                for seed in seeds:
                    base = seed_score(base_root, trainer, cfg, seed, kind, protocol)
                    if base is None:
                        continue
                    for label, ablation in VERDICT_SETTINGS:
                        root = _settings_root(output, ablation)
                        gen = seed_score(root, trainer, cfg, seed, kind, protocol)
                        if gen is not None:
                            per = gaps.setdefault((kind, label), {})
                            per.setdefault(trainer, []).append(gen - base)
    return gaps


def plot_gaps(gaps: dict, out: str, score: str = "HM") -> None:
    """Bar chart: per host, world and setting, the mean over seeds of generated-minus-base `score`
    (generated_minus_base), ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from promptdiff.results.plots import save_figure

    trainers = sorted({t for per in gaps.values() for t in per}, key=TRAINERS.index)
    fig, ax = plt.subplots(figsize=(2 + 1.4 * len(trainers), 3.6))
    width = 0.8 / max(len(gaps), 1)
    for k, ((kind, label), per) in enumerate(sorted(gaps.items())):
        xs = np.arange(len(trainers)) + (k - (len(gaps) - 1) / 2) * width
        means = [np.mean(per[t]) if t in per else np.nan for t in trainers]
        stds = [np.std(per[t]) if t in per else 0 for t in trainers]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=f"{kind} world, {label}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(trainers)), trainers, rotation=20)
    ax.set_ylabel(f"{score}: generated - own base prompt")
    ax.set_title(
        "Each checkpoint's generated prompts against its own base prompt (mean ± std, seeds)"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out, 150)


def verdict_table(output: str, kind: str, pairs, seeds, protocol: str = "base2new") -> str:
    """Markdown: per host (baseline, *Diff), the mean ± std over seeds of seed_score (base2new HM,
    or dg's shifted-domain average) of the baseline, the *Diff under each VERDICT_SETTINGS entry
    and its base prompt, and shipped minus base (per seed) and minus baseline (the mean
    difference over the seeds both have)."""
    import numpy as np

    def per_seed(root, trainer) -> dict[int, float]:
        cfgs = scored_configs(root, trainer, kind, protocol)
        got = {
            s: seed_score(root, trainer, cfg, s, kind, protocol) for cfg in cfgs[:1] for s in seeds
        }
        return {s: v for s, v in got.items() if v is not None}

    def fmt(vals):
        return f"{np.mean(vals):.2f} ± {np.std(vals):.2f} ({len(vals)})" if vals else "–"

    lines = [
        "| host | baseline | *Diff, paper (5 steps) | *Diff, shipped (1 step) | same checkpoints' base "
        "prompt | shipped - base prompt | shipped - baseline |",
        "|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for baseline, diff in pairs:
        base_line = per_seed(output, baseline)
        paper, shipped = (per_seed(_settings_root(output, ab), diff) for _, ab in VERDICT_SETTINGS)
        own = per_seed(_settings_root(output, BASE_PROMPT), diff)
        gap = [shipped[s] - own[s] for s in shipped if s in own]  # same checkpoint, same seed
        # the means over the seeds both have: a seed only one of them has would shift one mean
        common = [s for s in shipped if s in base_line]
        vs = np.mean([shipped[s] - base_line[s] for s in common]) if common else None
        cells = [list(c.values()) for c in (base_line, paper, shipped, own)] + [gap]
        lines.append(
            f"| {diff} | {' | '.join(fmt(c) for c in cells)} | "
            f"{'–' if vs is None else f'{vs:+.2f}'} |"
        )
    return "\n".join(lines)


def plot_generated(
    root: str, run: str, out: str, kind: str = "percam", max_images: int = 600
) -> None:
    """A 2-D PCA projection of the residuals a *Diff run generates for the world's base-class test
    images (generated prompt minus base prompt), coloured by class and by camera."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import promptdiff
    from promptdiff.results.plots import save_figure

    folder = os.path.join(root, mw.dataset_dir(kind))
    spec = read_spec(root, kind)
    cameras = mw.read_cameras(folder) if spec.cameras else {}
    pixels, labels, rels = mw.load_split(folder, mw.SOURCE, "test", kind)
    half = (len(mw.classes(spec)) + 1) // 2
    keep = [i for i in range(len(labels)) if labels[i] < half][:max_images]
    trainer = promptdiff.load(run).trainer_for([mw.class_name(*c) for c in mw.classes(spec)[:half]])
    trainer.set_model_mode("eval")
    trainer.before_test("test")
    residuals = []
    with torch.no_grad():
        for start in range(0, len(keep), 100):
            image = pixels[keep[start : start + 100]].to(trainer.device)
            cond = trainer.model.condition(image)
            prompts = trainer.sample_prompts(image, cond)
            residuals.append((prompts - trainer.model.base_prompt(cond)).flatten(1).float().cpu())
    x = torch.cat(residuals)
    x = x - x.mean(0)
    _, _, v = torch.pca_lowrank(x, q=2, center=False)
    xy = (x @ v[:, :2]).numpy()
    cls = labels[keep].numpy()
    cams = [cameras.get(rels[i], 0) for i in keep]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    axes[0].scatter(xy[:, 0], xy[:, 1], c=cls, cmap="tab20", s=6)
    axes[0].set_title("generated residuals, coloured by class")
    axes[1].scatter(xy[:, 0], xy[:, 1], c=cams, cmap="coolwarm", s=6)
    axes[1].set_title("coloured by camera" if cameras else "coloured by camera (one camera)")
    for ax in axes:
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.suptitle(f"{os.path.basename(os.path.dirname(run))} {os.path.basename(run)}, {kind} world")
    fig.tight_layout()
    save_figure(fig, out, 150)


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


def tune(
    root, output, trainer, cfg, grid, eval_grid, seed: int = 1, kind: str = "default"
) -> list[tuple[str, float]]:
    """Train `trainer` on 16 base shots for each grid combination and evaluate each on the base
    classes' val split (with every eval-grid combination, without retraining); returns
    [(options, val accuracy)] and prints them, best marked."""
    common = source_flags(root, seed, trainer, f"{trainer}/{cfg}", kind)
    opts = [*world_opts(root, kind), "DATASET.NUM_SHOTS", str(SHOTS),
            "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.SPLIT", "val"]  # fmt: skip
    rows = []
    for k, combo in enumerate(combinations(grid)):
        train_dir = os.path.join(output, "tune", kind, trainer, cfg, f"seed{seed}", f"run{k}")
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


def config_names(output: str, tree: str, dataset: str, trainer: str) -> list[str]:
    """The config folders of `trainer` under OUTPUT/<tree>/<dataset>/shots_K/, sorted."""
    folder = os.path.join(output, tree, dataset, f"shots_{SHOTS}", trainer)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _train_dirs(
    output: str, tree: str, trainer: str, seed: int, source: str
) -> list[tuple[str, str]]:
    """(run folder, config name) of each finished training run of `trainer` and `seed` under
    OUTPUT/<tree> (base2new/train_base or xd/train)."""
    runs = [
        (run_dir(output, tree, source, SHOTS, trainer, cfg, seed), cfg)
        for cfg in config_names(output, tree, source, trainer)
    ]
    return [(run, cfg) for run, cfg in runs if os.path.isfile(os.path.join(run, RESULTS_FILE))]


def _last_epoch(run: str) -> int | str | None:
    return checkpoint_epoch(last_checkpoint(run))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "check", "run", "ablate", "table", "tune", "figures"):
        p = sub.add_parser(name)
        p.add_argument("--root", required=True, help="folder that holds (or will hold) the world")
        p.add_argument("--world", default="default", choices=WORLD_KINDS, help="which world")
        if name == "build":
            p.add_argument("--seed", type=int, default=0, help="the world's seed")
        if name == "check":
            p.add_argument("--no-coop", action="store_true", help="skip the CoOp training check")
        if name == "figures":
            p.add_argument(
                "--output",
                required=True,
                help="output root of both worlds' runs (*Diff runs made with TRAINER.PD.STEPS 5, "
                "then ablate inference_base,steps_1)",
            )
            p.add_argument("--seeds", default="1,2,3")
            p.add_argument("--trainers", default=",".join(DIFF_TRAINERS))
            p.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "figures"))
            p.add_argument("--generated-run", help="a *Diff base2new run folder to project")
        if name in ("run", "ablate", "table"):
            p.add_argument("--output", required=True, help="output root of the runs")
            p.add_argument("--seeds", default="1,2,3")
            p.add_argument("--trainers", default=",".join(TRAINERS))
        if name == "ablate":
            p.add_argument(
                "--ablations", default=",".join(ABLATIONS), help="which: " + ",".join(ABLATIONS)
            )
        if name == "run":
            p.add_argument("--protocols", default="base2new,dg")
        if name == "ablate":
            p.add_argument("--protocols", default="base2new", help="base2new, dg or both")
        if name in ("run", "ablate"):
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
        build(args.root, replace(mw.WORLDS[args.world], seed=args.seed), mw.ClipRecipe())
        return 0
    if args.command == "check":
        return 0 if all(c.ok for c in check(args.root, not args.no_coop, args.world)) else 1
    if args.command == "tune":
        if args.trainer not in TRAINERS:
            raise SystemExit(
                f"error: unknown trainer {args.trainer!r}; use one of {','.join(TRAINERS)}."
            )
        tune(args.root, args.output, args.trainer, args.config, parse_grid(args.grid),
             parse_grid(args.eval_grid), args.seed, args.world)  # fmt: skip
        return 0
    if args.command == "figures":
        seeds = [int(s) for s in args.seeds.split(",")]
        trainers = [t for t in args.trainers.split(",") if t]
        outputs = dict.fromkeys(WORLD_KINDS, args.output)
        gaps = generated_minus_base(outputs, trainers, seeds)
        dg_gaps = generated_minus_base(outputs, trainers, seeds, "dg")
        if not gaps and not dg_gaps:
            raise SystemExit(
                f"error: no base2new or dg runs with an inference_base ablation under "
                f"{args.output}; run `ablate --ablations inference_base,steps_1` there first."
            )
        if gaps:
            plot_gaps(gaps, os.path.join(args.out_dir, "generated_minus_base.png"))
        if dg_gaps:
            out = os.path.join(args.out_dir, "generated_minus_base_dg.png")
            plot_gaps(dg_gaps, out, "DG average")
        for protocol, found in (("base2new", gaps), ("dg", dg_gaps)):
            for (kind, label), per in sorted(found.items()):
                for trainer, values in per.items():
                    print(
                        f"{protocol:8s} {kind:8s} {label:16s} {trainer:14s} "
                        + " ".join(f"{v:+.2f}" for v in values)
                    )
        pairs = [(split_diff(t)[0], t) for t in trainers if split_diff(t)[1]]
        for protocol, found in (("base2new", gaps), ("dg", dg_gaps)):
            for kind in sorted({k for k, _ in found}):
                table = verdict_table(args.output, kind, pairs, seeds, protocol)
                print(f"\n{kind} world, {protocol}\n{table}")
        if args.generated_run:
            out = os.path.join(args.out_dir, f"generated_residuals_{args.world}.png")
            plot_generated(args.root, args.generated_run, out, args.world)
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    trainers = [t for t in args.trainers.split(",") if t]
    unknown = [t for t in trainers if t not in TRAINERS]
    if unknown:
        raise SystemExit(f"error: unknown trainer(s) {unknown}; use some of {','.join(TRAINERS)}.")
    protocols = ("base2new", "dg")
    if args.command == "run":
        protocols = args.protocols.split(",")
        run_protocols(
            args.root, args.output, trainers, seeds, protocols, args.opts.split(), args.world
        )
    elif args.command == "ablate":
        diff = [t for t in trainers if t in DIFF_TRAINERS]
        names = [n for n in args.ablations.split(",") if n]
        unknown = [n for n in names if n not in ABLATIONS]
        if unknown:
            raise SystemExit(
                f"error: unknown ablation(s) {unknown}; use some of {','.join(ABLATIONS)}."
            )
        protocols = [p for p in args.protocols.split(",") if p]
        if any(p not in ("base2new", "dg") for p in protocols):
            raise SystemExit(f"error: --protocols {args.protocols!r}: use base2new, dg or both.")
        ablate(args.root, args.output, diff, seeds, args.world, names, args.opts.split(),
               protocols)  # fmt: skip
        if "base2new" in protocols:
            print(ablation_table(args.output, diff, seeds, args.world))
        if "dg" in protocols:
            domains = read_spec(args.root, args.world).domains
            for name in names:
                print(
                    f"\n{name}\n"
                    + tables(
                        os.path.join(args.output, "ablations", name),
                        diff,
                        seeds,
                        domains,
                        ("dg",),
                        kind=args.world,
                    )
                )
        return 0
    domains = read_spec(args.root, args.world).domains
    print(tables(args.output, trainers, seeds, domains, protocols, kind=args.world))
    return 0


if __name__ == "__main__":
    sys.exit(main())
