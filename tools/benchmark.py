"""Time per image, side by side: inference and training of CoOp, the *Diff trainers and the rest.

Every trainer is built in-process as train.py builds it (setup_cfg + the trainer registry) on a
synthetic Caltech101-layout dataset with randomly initialised CLIP weights of the chosen size
(nothing is downloaded; weights do not change the cost), in fp32 on CPU. Measured:

- inference: `model_inference` on a batch of test images after `before_test("test")`, as the
  trainer's test() runs it (its one-off cost is the "once/eval" column); the median of --repeats
  calls, divided by the batch size; a warm-up call on the same batch (once per built trainer)
  is excluded;
- for *Diff trainers, the share of that time spent in `diffusion.sample` and the number of
  denoiser forward calls per batch (S for DDIM);
- "CoCoOp-style": CoOpDiff's `logits_for` with the shared context expanded per image, i.e. the
  per-image text encoding of all classes without the sampler (the reference cost of any method
  that gives each image its own prompt);
- training: one `forward_backward` on a batch of --train-images images; stage 1 is the baseline's
  step, stage 2 the *Diff trainer's (overfit with K = TRAINER.PD.OVERFIT_STEPS steps, then the
  denoiser update); a warm-up step on the same batch (stage 2: with K = 0) is excluded.

Ratios ("x CoOp") are relative to CoOp at the same number of classes (inference: CoOp's
inference; training: CoOp's training step). Run from anywhere:

    python tools/benchmark.py [--size vit_b16|tiny] [--classes 10 100] [--steps 1 5 10]
                              [--images N] [--trainers ...] [--out results.md]

Trainers whose module is missing (not in TRAINER_REGISTRY) are skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
from PIL import Image
from tabulate import tabulate
from torch.utils import benchmark

from promptdiff.fileio import atomic_write
from promptdiff.tools.bench_fastpaths import ROW_SIZES, Bench, run_rows
from promptdiff.worlds.shapes_caltech import make_shapes_caltech

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# CLIP sizes (keyword arguments of promptdiff.backbone.save_tiny_clip); "tiny" = its defaults
SIZES = {
    "vit_b16": {
        "embed_dim": 512,
        "image_resolution": 224,
        "vision_layers": 12,
        "vision_width": 768,
        "patch_size": 16,
        "text_width": 512,
        "text_layers": 12,
    },
    "tiny": {},
}

# Trainer name -> its config file under configs/trainers (the upstream prompt shapes). Table order.
# Adding a trainer to the benchmark is one line here; one that is not registered is skipped.
TRAINER_CONFIGS = {
    "CoOp": "CoOp/vit_b16_ep50_ctxv1",
    "CoOpDiff": "CoOpDiff/vit_b16_ep50_ctxv1",
    "CoCoOp": "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1",
    "CoCoOpDiff": "CoCoOpDiff/vit_b16_c4_ep10_batch1_ctxv1",
    "VPT": "VPT/vit_b16_c2_ep5_batch4_8ctx",
    "VPTDiff": "VPTDiff/vit_b16_c2_ep5_batch4_8ctx",
    "MaPLe": "MaPLe/vit_b16_c2_ep5_batch4_2ctx",
    "MaPLeDiff": "MaPLeDiff/vit_b16_c2_ep5_batch4_2ctx",
    "IVLP": "IVLP/vit_b16_c2_ep5_batch4_2+2ctx",
    "IVLPDiff": "IVLPDiff/vit_b16_c2_ep5_batch4_2+2ctx",
    "GenPT": "GenPT/vit_b16_ep50_ctxv1",
    "GenPTDiff": "GenPTDiff/vit_b16_ep50_ctxv1",
    "PromptSRC": "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx",
    "PromptSRCDiff": "PromptSRCDiff/vit_b16_c2_ep20_batch4_4+4ctx",
}
# per-image text encoding of CoOp's prompt, timed on a CoOpDiff trainer without its sampler
REFERENCE = "CoCoOp-style"
REFERENCE_HOST = "CoOpDiff"
SWEEP_TRAINER = "CoOpDiff"  # --steps applies to it; the other *Diff trainers use --other-steps
DEFAULT_TRAINERS = ["CoOp", REFERENCE, *[n for n in TRAINER_CONFIGS if n != "CoOp"]]

PHASES = ("infer", "train stage 1", "train stage 2")
HEADERS = [
    "phase",
    "trainer",
    "classes",
    "S",
    "K",
    "ms/image",
    "x CoOp",
    "sampler %",
    "denoiser calls/batch",
    "once/eval ms",
]


@dataclass
class Row:
    """One measurement: ms per image (median over repeats) and what explains it."""

    phase: str
    trainer: str
    classes: int
    steps: int | None = None  # S, sampling steps (inference of *Diff trainers)
    k: int | None = None  # K, overfit steps (training stage 2)
    ms_per_image: float = float("nan")
    ratio: float | None = None  # ms_per_image / CoOp's at the same phase kind and classes
    sampler_share: float | None = None  # fraction of inference time in diffusion.sample
    denoiser_calls: int | None = None  # denoiser forward calls per inference batch
    once_ms: float | None = None  # before_test, once per evaluation (not per image)
    samples: list[float] = field(default_factory=list)  # every timed call, ms per image

    @property
    def key(self) -> tuple:
        return (self.phase, self.trainer, self.classes, self.steps, self.k)


@dataclass
class Options:
    size: str = "vit_b16"
    classes: list[int] = field(default_factory=lambda: [10, 100])
    steps: list[int] = field(default_factory=lambda: [1, 5, 10])
    other_steps: list[int] = field(default_factory=lambda: [5])
    images: int = 4
    min_time: float = 1.0  # seconds of timed calls per row (Timer.blocked_autorange)
    trainers: list[str] = field(default_factory=lambda: list(DEFAULT_TRAINERS))
    train_classes: list[int] | None = None  # None: the smallest of `classes`
    train_k: list[int] = field(default_factory=lambda: [10, 2])
    train_images: int = 2
    train_min_time: float = 1.0
    text_chunk: int = 0
    seed: int = 1
    workdir: str = ""  # "" = a temporary folder, removed afterwards
    verbose: bool = True


# ---- what runs where -----------------------------------------------------------------------------
def registry():
    import promptdiff.datasets  # noqa: F401  (registers the datasets)
    import promptdiff.trainers  # noqa: F401  (registers every trainer module that exists)
    from promptdiff.host import TRAINER_REGISTRY

    return TRAINER_REGISTRY


def is_diff(name: str) -> bool:
    from promptdiff.trainers.prompt_diffusion import PromptDiffusionMixin

    return issubclass(registry().get(name), PromptDiffusionMixin)


def baseline_of(name: str) -> str:
    """The baseline a *Diff trainer mixes into (the class after the mixin in its bases)."""
    from promptdiff.trainers.prompt_diffusion import PromptDiffusionMixin

    cls = registry().get(name)
    for base in cls.__mro__[1:]:
        if base is not PromptDiffusionMixin and not issubclass(base, PromptDiffusionMixin):
            return base.__name__
    return name


def available(names: list[str]) -> tuple[list[str], list[str]]:
    """(names that can run, names skipped because their trainer is not registered)."""
    reg = registry()
    ok, skipped = [], []
    for name in names:
        needed = REFERENCE_HOST if name == REFERENCE else name
        (ok if needed in reg else skipped).append(name)
    return ok, skipped


def steps_for(name: str, opts: Options) -> list[int | None]:
    if name == REFERENCE or not is_diff(name):
        return [None]
    return list(opts.steps if name == SWEEP_TRAINER else opts.other_steps)


def train_classes(opts: Options) -> list[int]:
    return list(opts.train_classes) if opts.train_classes is not None else [min(opts.classes)]


def plan(opts: Options) -> list[tuple]:
    """Row keys (phase, trainer, classes, S, K) the options ask for, in table order."""
    names, _ = available(list(dict.fromkeys(opts.trainers)))
    keys = []
    for n_cls in dict.fromkeys(opts.classes):
        for name in names:
            keys += [("infer", name, n_cls, s, None) for s in steps_for(name, opts)]
    for n_cls in dict.fromkeys(train_classes(opts)):
        stage1 = []
        for name in names:
            if name == REFERENCE:
                continue
            if not is_diff(name):
                stage1.append(name)
                continue
            base = baseline_of(name)
            if base not in names:  # stage 1 of a *Diff trainer is its baseline's step
                stage1.append(base)
            keys += [("train stage 2", name, n_cls, None, k) for k in opts.train_k]
        keys += [("train stage 1", base, n_cls, None, None) for base in stage1]
    return sorted(keys, key=_order)


def _order(key: tuple) -> tuple:
    phase, name, n_cls, s, k = key
    names = [*DEFAULT_TRAINERS]
    rank = names.index(name) if name in names else len(names)
    return (PHASES.index(phase) > 0, n_cls, rank, PHASES.index(phase), s or 0, -(k or 0))


# ---- workspace: weights and datasets -------------------------------------------------------------
def clip_defaults() -> dict:
    """save_tiny_clip's default sizes (those of promptdiff.backbone.tiny_clip)."""
    import inspect

    from promptdiff.backbone.loader import tiny_clip

    params = inspect.signature(tiny_clip).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


class Workspace:
    """Weights file and one dataset per class count under a folder."""

    def __init__(self, folder: str, size: str, seed: int = 0):
        from promptdiff.backbone import save_tiny_clip

        self.folder = folder
        self.size = size
        name = f"clip_{size}_seed{seed}.pt"
        self.weights = os.path.join(folder, name)
        if not os.path.isfile(self.weights):
            save_tiny_clip(self.weights, seed=seed, **SIZES[size])
        dims = {**clip_defaults(), **SIZES[size]}
        self.resolution = int(dims["image_resolution"])
        self.layers = int(min(dims["vision_layers"], dims["text_layers"]))

    def dataset(self, n_classes: int) -> str:
        # 4 images per class: Caltech's 50/20/30 split gives 2 train, 1 val and 1 test each
        folder = os.path.join(self.folder, f"data_{n_classes}cls")
        return make_shapes_caltech(folder, n_classes, n_per_class=4)


def train_cli():
    """The repository's train.py, whose parser and config builder the trainers are built with:
    the module already imported, or loaded from its file (a script at the repository's root, not
    a package module), so that this tool runs from any folder."""
    path = os.path.join(ROOT, "train.py")
    loaded = sys.modules.get("train")
    if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "")) == path:
        return loaded
    spec = importlib.util.spec_from_file_location("train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    return module


def build(name: str, n_classes: int, ws: Workspace, opts: Options, extra: tuple[str, ...] = ()):
    """A trainer built as train.py builds it (config files, CLI flags, KEY VALUE options); `extra`
    KEY VALUE options come last, so they override the fp32-on-CPU defaults here."""
    from promptdiff.host import build_trainer, set_random_seed

    build_parser, setup_cfg = train_cli().build_parser, train_cli().setup_cfg

    cls = registry().get(name)
    argv = [
        "--root", ws.dataset(n_classes),
        "--seed", str(opts.seed),
        "--trainer", name,
        "--dataset-config-file", os.path.join(ROOT, "configs", "datasets", "caltech101.yaml"),
        "--output-dir", os.path.join(ws.folder, "output", f"{name}_{n_classes}"),
    ]  # fmt: skip
    config = TRAINER_CONFIGS.get(name)
    config_file = os.path.join(ROOT, "configs", "trainers", f"{config}.yaml") if config else ""
    if config_file and os.path.isfile(config_file):
        argv += ["--config-file", config_file]
    r = ws.resolution
    argv += [
        "MODEL.BACKBONE.PATH", ws.weights,
        f"TRAINER.{cls.CFG_KEY}.PREC", "fp32",
        "USE_CUDA", "False",
        "VERBOSE", "False",
        "INPUT.SIZE", f"({r}, {r})",
        "DATALOADER.NUM_WORKERS", "0",
        # stage 1 = epoch 0, stage 2 = epoch 1; *Diff inference samples prompts
        "OPTIM.MAX_EPOCH", "2",
        "TRAINER.PD.STAGE1_EPOCHS", "1",
        "MODEL.TEXT.CHUNK", str(opts.text_chunk),
    ]  # fmt: skip
    if ws.layers < 12:  # the upstream prompt depths (VPT 12, MaPLe 9) need a ViT-B-deep CLIP
        depth = str(ws.layers)
        argv += ["TRAINER.VPT.PROMPT_DEPTH_VISION", depth, "TRAINER.MAPLE.PROMPT_DEPTH", depth]
        for key in ("IVLP", "PROMPTSRC"):
            argv += [f"TRAINER.{key}.PROMPT_DEPTH_TEXT", depth,
                     f"TRAINER.{key}.PROMPT_DEPTH_VISION", depth]  # fmt: skip
    argv += list(extra)
    cfg = setup_cfg(build_parser().parse_args(argv))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def batch(trainer, n: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (cycling through the split) through the trainer's own transforms."""
    dm = trainer.dm
    items = dm.dataset.test if split == "test" else dm.dataset.train_x
    tfm = dm.tfm_test if split == "test" else dm.tfm_train
    chosen = [items[i % len(items)] for i in range(n)]
    images = []
    for item in chosen:
        with Image.open(item.impath) as img:
            images.append(tfm(img.convert("RGB")))
    labels = torch.tensor([item.label for item in chosen])
    return torch.stack(images).to(trainer.device), labels.to(trainer.device)


# ---- timing --------------------------------------------------------------------------------------
@contextlib.contextmanager
def pd_keys(trainer, **keys):
    """Set TRAINER.PD keys on a built trainer for a while. The mixin reads STEPS and OVERFIT_STEPS
    at call time (the denoiser-call count in the table shows that S took effect)."""
    cfg, pd = trainer.cfg, trainer.cfg.TRAINER.PD
    old = {key: pd[key] for key in keys}
    cfg.defrost()
    pd.update(keys)
    cfg.freeze()
    try:
        yield
    finally:
        cfg.defrost()
        pd.update(old)
        cfg.freeze()


class Probe:
    """Counts denoiser forward calls and times diffusion.sample on a *Diff trainer."""

    def __init__(self, trainer):
        self.diffusion = getattr(trainer, "diffusion", None)
        self.calls = 0
        self.sample_s = 0.0
        self._hooks = []

    def __enter__(self):
        d = self.diffusion
        if d is None:
            return self
        for net in (d.denoiser, d.ema):
            if net is not None:
                self._hooks.append(net.register_forward_hook(self._count))
        original = d.sample

        def timed_sample(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sample_s += time.perf_counter() - start

        d.sample = timed_sample  # instance attribute shadows the method
        return self

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        if self.diffusion is not None and "sample" in vars(self.diffusion):
            del self.diffusion.sample

    def _count(self, module, inputs, output):
        self.calls += 1


def reference_inference(trainer, image: torch.Tensor) -> torch.Tensor:
    """CoCoOp-style: every class prompt encoded per image (the shared context, no sampler)."""
    model = trainer.model
    with trainer.autocast():
        cond = model.condition(image)
        # contiguous: one real context per image (an expanded one would be encoded once)
        prompts = model.base_prompt(cond).contiguous()
        return model.logits_for(image, cond, prompts).float()


def timed_calls(fn, min_run_time: float) -> list[float]:
    """Seconds per call of fn, from torch.utils.benchmark.Timer (it warms up first, sets the
    thread count and synchronises CUDA; at least one timed call)."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return list(timer.blocked_autorange(min_run_time=min_run_time).times)


def time_inference(trainer, images: torch.Tensor, min_time: float, reference: bool = False) -> dict:
    infer = (lambda x: reference_inference(trainer, x)) if reference else trainer.model_inference
    n = images.shape[0]
    with torch.no_grad():
        trainer.set_model_mode("eval")
        start = time.perf_counter()
        trainer.before_test("test")
        once = time.perf_counter() - start
        # one probed call (untimed by the Timer) gives the sampler's share and the denoiser calls
        with Probe(trainer) as probe:
            start = time.perf_counter()
            logits = infer(images)
            elapsed = time.perf_counter() - start
        if tuple(logits.shape) != (n, trainer.num_classes):
            raise RuntimeError(f"logits of shape {tuple(logits.shape)} for {n} images")
        per_image = [1000.0 * t / n for t in timed_calls(lambda: infer(images), min_time)]
    diff = probe.diffusion is not None and not reference
    return {
        "samples": per_image,
        "once_ms": 1000.0 * once,
        "sampler_share": probe.sample_s / elapsed if diff else None,
        "denoiser_calls": probe.calls if diff else None,
    }


def time_training(
    trainer, images, labels, stage: int, k: int | None, min_time: float
) -> list[float]:
    """ms per image of forward_backward (stage 1: the baseline's step; stage 2 with K = k)."""
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2  # not the last batch: no LR step
    diff = hasattr(trainer, "stage1_epochs")
    trainer.epoch = trainer.stage1_epochs(trainer.cfg) if stage == 2 else 0
    keys = {"OVERFIT_STEPS": k} if stage == 2 else {}
    n = images.shape[0]
    with pd_keys(trainer, **keys) if diff else contextlib.nullcontext():
        step = lambda: trainer.forward_backward({"img": images, "label": labels})  # noqa: E731
        return [1000.0 * t / n for t in timed_calls(step, min_time)]


# ---- the run -------------------------------------------------------------------------------------
def run_benchmark(opts: Options) -> tuple[list[Row], list[str]]:
    """All rows of `plan(opts)`, measured; and notes (skipped trainers)."""
    if opts.size not in SIZES:
        raise ValueError(f"--size {opts.size!r} is unknown; use one of {', '.join(SIZES)}.")
    names, skipped = available(list(dict.fromkeys(opts.trainers)))
    notes = [f"{name}: not registered (its trainer module is missing), skipped" for name in skipped]
    wanted = plan(opts)
    rows: dict[tuple, Row] = {}
    with contextlib.ExitStack() as stack:
        folder = opts.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-"))
        os.makedirs(folder, exist_ok=True)
        ws = Workspace(folder, opts.size)
        # one build per (trainer, classes): every S, K and the reference reuse it
        builds: dict[tuple[str, int], list[tuple]] = {}
        for key in wanted:
            phase, name, n_cls, _, _ = key
            host = name
            if name == REFERENCE:
                host = REFERENCE_HOST
            elif phase == "train stage 1" and name not in names:
                host = next(
                    n for n in names if n != REFERENCE and is_diff(n) and baseline_of(n) == name
                )
            builds.setdefault((host, n_cls), []).append(key)
        for (host, n_cls), keys in builds.items():
            start = time.perf_counter()
            trainer = build(host, n_cls, ws, opts)
            _say(opts, f"built {host} for {n_cls} classes ({time.perf_counter() - start:.1f} s)")
            test_images = None
            for key in keys:
                phase, name, _, s, k = key
                row = Row(phase, name, n_cls, s, k)
                if phase == "infer":
                    if test_images is None:
                        test_images, _ = batch(trainer, opts.images, "test")
                    reference = name == REFERENCE
                    with pd_keys(trainer, STEPS=s) if s is not None else contextlib.nullcontext():
                        res = time_inference(
                            trainer, test_images, opts.min_time, reference=reference
                        )
                    row.samples = res["samples"]
                    row.once_ms = res["once_ms"]
                    row.sampler_share = res["sampler_share"]
                    row.denoiser_calls = res["denoiser_calls"]
                else:
                    stage = 1 if phase == "train stage 1" else 2
                    images, labels = batch(trainer, opts.train_images, "train")
                    row.samples = time_training(
                        trainer, images, labels, stage, k, opts.train_min_time
                    )
                row.ms_per_image = statistics.median(row.samples)
                rows[key] = row
                _say(opts, f"  {_describe(row)}: {row.ms_per_image:.1f} ms/image")
            del trainer
            gc.collect()
    out = [rows[key] for key in wanted]
    add_ratios(out)
    return out, notes


def add_ratios(rows: list[Row]) -> None:
    """x CoOp: inference vs CoOp's inference, training vs CoOp's training step, same classes."""
    ref = {}
    for row in rows:
        if row.trainer == "CoOp":
            ref[(row.phase == "infer", row.classes)] = row.ms_per_image
    for row in rows:
        base = ref.get((row.phase == "infer", row.classes))
        row.ratio = row.ms_per_image / base if base else None


def _describe(row: Row) -> str:
    extra = f" S={row.steps}" if row.steps is not None else ""
    extra += f" K={row.k}" if row.k is not None else ""
    return f"{row.phase} {row.trainer} {row.classes} cls{extra}"


def _say(opts: Options, msg: str) -> None:
    if opts.verbose:
        print(f"[benchmark] {msg}", file=sys.stderr, flush=True)


# ---- output --------------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else spec % value


def table(rows: list[Row], fmt: str = "github") -> str:
    body = [
        [
            r.phase,
            r.trainer,
            r.classes,
            _fmt(r.steps, "%d"),
            _fmt(r.k, "%d"),
            f"{r.ms_per_image:.1f}",
            _fmt(r.ratio, "%.2f"),
            _fmt(None if r.sampler_share is None else 100 * r.sampler_share, "%.1f"),
            _fmt(r.denoiser_calls, "%d"),
            _fmt(r.once_ms, "%.0f"),
        ]
        for r in rows
    ]
    return tabulate(body, headers=HEADERS, tablefmt=fmt, disable_numparse=True)


def machine() -> str:
    load = ""
    if hasattr(os, "getloadavg"):  # other processes on these cores distort every number: say so
        load = f", load average {os.getloadavg()[0]:.2f} at the start"
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), fp32 on CPU{load}"
    )


def describe_run(opts: Options, argv: list[str] | None, quick: bool) -> list[str]:
    cmd = "python tools/benchmark.py" + ("".join(f" {a}" for a in argv) if argv else "")
    lines = [f"command: `{cmd}`", f"machine: {machine()}"]
    if not quick and opts.trainers:
        lines.append(
            f"per-trainer table: CLIP {opts.size} (random weights), inference batch {opts.images} "
            f"images, training batch {opts.train_images}; medians of Timer.blocked_autorange "
            f"({opts.min_time:g} s / {opts.train_min_time:g} s per row)"
        )
    return lines


def fast_table(rows, fmt: str = "github") -> str:
    """The named rows: plain vs fast, ratio, exactness, the GPU floor and the issue's target."""
    headers = ["row", "plain_ms", "fast_ms", "ratio", "max_abs_diff", "floor_ms (GPU)", "target"]
    body = [
        [
            r.name,
            f"{r.plain_ms:.1f}",
            f"{r.fast_ms:.1f}",
            f"{r.ratio:.2f}",
            f"{r.max_abs_diff:.1e}",
            _fmt(r.floor_ms, "%.2g"),
            r.target(),
        ]
        for r in rows
    ]
    notes = "\n".join(f"- {r.name}: {r.note}" for r in rows)
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True) + "\n\n" + notes


def build_argparser() -> argparse.ArgumentParser:
    d = Options()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="the named rows only, on a narrow 2-layer CLIP (ratios, not absolute times)",
    )
    p.add_argument("--json", default="", help='write {"rows": [...]} (the named rows) here')
    p.add_argument("--rows-size", choices=sorted(ROW_SIZES), default="", help="CLIP of the rows")
    p.add_argument("--rows-images", type=int, default=0, help="images per row (0: 4, quick 2)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="the GPU peak of the floor column (default: H100 SXM dense bf16)",
    )
    p.add_argument("--no-rows", action="store_true", help="only the per-trainer table")
    p.add_argument(
        "--rounds", type=int, default=0, help="alternating measurements per row (0: 2, quick 1)"
    )
    p.add_argument("--device", default="cpu", help="device of the named rows (e.g. cuda)")
    p.add_argument("--size", choices=sorted(SIZES), default=d.size, help="CLIP size")
    p.add_argument("--classes", type=int, nargs="+", default=d.classes)
    p.add_argument("--steps", type=int, nargs="+", default=d.steps, help="S for CoOpDiff")
    p.add_argument(
        "--other-steps", type=int, nargs="+", default=d.other_steps, help="S for other *Diff"
    )
    p.add_argument("--images", type=int, default=d.images, help="inference batch size")
    p.add_argument(
        "--min-time", type=float, default=d.min_time, help="seconds of timed calls per row"
    )
    p.add_argument(
        "--trainers",
        nargs="*",
        default=d.trainers,
        help=f"trainers (and {REFERENCE!r}); missing ones are skipped; none: no per-trainer table",
    )
    p.add_argument(
        "--train-classes",
        type=int,
        nargs="*",
        default=None,
        help="class counts to time training at (default: the smallest of --classes; none: skip)",
    )
    p.add_argument("--train-k", type=int, nargs="+", default=d.train_k, help="overfit steps K")
    p.add_argument("--train-images", type=int, default=d.train_images, help="training batch size")
    p.add_argument("--train-min-time", type=float, default=d.train_min_time)
    p.add_argument(
        "--text-chunk", type=int, default=d.text_chunk, help="MODEL.TEXT.CHUNK (0: none)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workdir", default="", help="keep weights and data here (default: temp)")
    p.add_argument("--out", default="", help="also write the tables as Markdown to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_argparser().parse_args(raw)
    if min(args.images, args.train_images) < 1 or min(args.min_time, args.train_min_time) < 0:
        raise SystemExit("--images and --train-images must be >= 1, the --*min-time >= 0")
    opts = Options(
        size=args.size,
        classes=args.classes,
        steps=args.steps,
        other_steps=args.other_steps,
        images=args.images,
        min_time=args.min_time,
        trainers=[] if args.quick else args.trainers,
        train_classes=args.train_classes,
        train_k=args.train_k,
        train_images=args.train_images,
        train_min_time=args.train_min_time,
        text_chunk=args.text_chunk,
        seed=args.seed,
        workdir=args.workdir,
        verbose=not args.quiet,
    )
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    header = describe_run(opts, raw, args.quick)
    start = time.perf_counter()
    sections = []
    fast_rows = []
    if not args.no_rows:
        bench = Bench(
            args.rows_size or ("quick" if args.quick else "vit_b16"),
            args.rows_images or (2 if args.quick else 4),
            min_run_time=0.5 if args.quick else 1.0,
            rounds=args.rounds or (1 if args.quick else 2),
            peak_tflops=args.peak_tflops,
            device=args.device,
        )
        _say(opts, f"named rows on the {bench.size} CLIP, {bench.images} image(s) per row")
        fast_rows = run_rows(bench, overfit_steps=10, say=lambda m: _say(opts, m))
        sections.append(fast_table(fast_rows))
    if opts.trainers:
        rows, notes = run_benchmark(opts)
        sections.append(table(rows) + "".join(f"\n- {n}" for n in notes))
    footer = [f"total benchmark time: {time.perf_counter() - start:.0f} s"]
    print("\n".join(header))
    print("\n\n".join(sections))
    print("\n".join(footer))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(f"- {line}" for line in header) + "\n\n")
            f.write("\n\n".join(sections) + "\n\n")
            f.write("\n".join(f"- {line}" for line in footer) + "\n")
    if args.json:
        write_json(args.json, fast_rows)
    return 0


def write_json(path: str, rows) -> None:
    """{"rows": [{"name", "plain_ms", "fast_ms", "ratio", "max_abs_diff", "note"}]}, atomically."""
    record = {"rows": [r.as_json() for r in rows]}
    atomic_write(path, lambda f: json.dump(record, f, indent=1))


if __name__ == "__main__":
    sys.exit(main())
