"""Drop-in compatibility with upstream CoOp / Dassl (issue 10; the table is docs/UPSTREAM.md).

The Dassl.pytorch oracle and an upstream checkpoint live in ../shared/upstream beside the
repository (CI copies shared/ there; PROMPTDIFF_SHARED overrides the place). Importing dassl
imports its WILDS module, which disables WARNING logging for the whole process, so the Dassl host
runs in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import types

import pytest
import torch
from conftest import read_results, train_args
from synthetic_layouts import LAYOUTS
from torch import nn

import promptdiff.datasets  # noqa: F401  (registers every dataset)
from promptdiff.backbone import save_tiny_clip
from promptdiff.backbone.loader import _clip
from promptdiff.engine import get_cfg_default, set_random_seed
from promptdiff.engine.checkpoint import load_checkpoint
from promptdiff.engine.registry import build_dataset
from promptdiff.trainers.base import ClipPromptTrainer
from promptdiff.worlds.shapes_caltech import make_shapes_caltech
from train import build_parser, cli, setup_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("PROMPTDIFF_SHARED") or os.path.join(ROOT, "..", "shared")
UPSTREAM = os.path.join(SHARED, "upstream")
COOP_WARMUP = os.path.join(UPSTREAM, "checkpoints", "coop_warmup")


def _need(path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent: the upstream oracles live in ../shared beside the repo")


# ---- 1. --host dassl -------------------------------------------------------------------------

DASSL_RUNS = r"""
import json, os, sys
import torch
import train

out, coop, coop_eval, diff, diff_eval = sys.argv[1], *json.loads(sys.argv[2])
for args in (coop, coop_eval, diff, diff_eval):
    assert train.cli(["--host", "dassl", *args]) == 0, args

# upstream Dassl's own loader reads a checkpoint of the built-in engine
from dassl.utils import load_checkpoint as dassl_load
from promptdiff.engine.checkpoint import load_checkpoint
builtin = os.path.join(out, "builtin", "prompt_learner", "model.pth.tar-2")
theirs, ours = dassl_load(builtin), load_checkpoint(builtin)
reads_builtin = theirs["epoch"] == 2 and torch.equal(
    theirs["state_dict"]["ctx"], ours["state_dict"]["ctx"]
)

# evaluating twice gives the same generated prompts: test() resets the sampling noise
from promptdiff.host import build_trainer, set_random_seed
cfg = train.setup_cfg(train.build_parser().parse_args(diff_eval))
set_random_seed(cfg.SEED)
trainer = build_trainer(cfg)
trainer.load_model(os.path.join(out, "diff"), epoch=2)
outputs, infer = [], trainer.model_inference
trainer.model_inference = lambda x: outputs.append(infer(x)) or outputs[-1]
trainer.test()
n = len(outputs)
trainer.test()
same = all(torch.equal(a, b) for a, b in zip(outputs[:n], outputs[n:]))
print(json.dumps({"same_noise": same, "batches": n, "reads_builtin": reads_builtin}))
"""


def test_dassl_host_trains_evaluates_and_reloads_coop_and_coopdiff(
    shapes_root, tiny_weights, tmp_path
):
    dassl = os.path.join(UPSTREAM, "dassl")
    _need(dassl)
    missing = [m for m in ("sklearn", "pandas") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the Dassl oracle imports {', '.join(missing)}, not installed in this venv")
    out = str(tmp_path)
    fast = ["OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "2"]
    pd = ["TRAINER.PD.STAGE1_EPOCHS", "1", "TRAINER.PD.DEPTH", "1", "TRAINER.PD.WIDTH", "32",
          "TRAINER.PD.HEADS", "2", "TRAINER.PD.OVERFIT_STEPS", "2"]  # fmt: skip

    def args(name, trainer, *extra):
        cfg = f"{trainer}/vit_b16_ep50_ctxv1"
        return train_args(shapes_root, f"{out}/{name}", trainer, cfg, tiny_weights, *fast, *extra)

    def evaluate(name, trained, trainer, *extra):
        flags = ["--eval-only", "--model-dir", f"{out}/{trained}", "--load-epoch", "2"]
        return [*flags, *args(name, trainer, *extra)]

    runs = [
        args("coop", "CoOp"),
        evaluate("coop_eval", "coop", "CoOp"),
        args("diff", "CoOpDiff", *pd),
        evaluate("diff_eval", "diff", "CoOpDiff", *pd),
    ]
    # the built-in engine first, same seed and options
    assert cli(args("builtin", "CoOp")) == 0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (UPSTREAM, os.path.join(UPSTREAM, "stubs"), env.get("PYTHONPATH")) if p
    )
    env.pop("PROMPTDIFF_HOST", None)
    proc = subprocess.run(
        [sys.executable, "-c", DASSL_RUNS, out, json.dumps(runs)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["batches"] >= 1 and report["same_noise"] and report["reads_builtin"]

    # the same final prompt and accuracy under both hosts
    ctx = {
        name: load_checkpoint(f"{out}/{name}/prompt_learner/model.pth.tar-2")["state_dict"]["ctx"]
        for name in ("coop", "builtin")
    }
    assert torch.equal(ctx["coop"], ctx["builtin"])
    dassl_res, builtin_res = read_results(f"{out}/coop"), read_results(f"{out}/builtin")
    for key in ("accuracy", "macro_f1", "total", "correct", "split", "num_shots", "seed"):
        assert dassl_res[key] == pytest.approx(builtin_res[key]), key
    assert read_results(f"{out}/coop_eval")["accuracy"] == dassl_res["accuracy"]
    diff_res = read_results(f"{out}/diff")
    assert diff_res["trainer"] == "CoOpDiff"
    assert read_results(f"{out}/diff_eval")["accuracy"] == diff_res["accuracy"]
    # the project's logger writes into Dassl's log.txt (WILDS' logging.disable is undone)
    with open(f"{out}/coop_eval/log.txt") as f:
        assert "read tensors and plain values only" in f.read()


def test_seed_zero_is_kept():
    # upstream's train.py tests `if args.seed:`, which drops --seed 0
    assert setup_cfg(build_parser().parse_args(["--seed", "0"])).SEED == 0


# ---- 2. upstream checkpoints load without arbitrary unpickling --------------------------------


def _coop_warmup(tmp_path) -> tuple[str, str, torch.Tensor]:
    """A copy of the upstream checkpoint, the tiny CLIP it was trained with, and its context."""
    _need(COOP_WARMUP)
    model_dir = str(tmp_path / "upstream_run")
    shutil.copytree(COOP_WARMUP, model_dir)
    # CLIP(64, 32, 2, 64, 16, 77, 49408, 64, 1, 2), as the checkpoint's README says
    weights = save_tiny_clip(str(tmp_path / "clip64.pt"), embed_dim=64, patch_size=16)
    fpath = os.path.join(model_dir, "prompt_learner", "model.pth.tar-2")
    reference = torch.load(fpath, map_location="cpu", weights_only=False)  # trusted test fixture
    return model_dir, weights, reference["state_dict"]["ctx"]


def _capture_ctx(monkeypatch, method: str) -> list:
    """Record the prompt learner's context whenever ClipPromptTrainer.<method> has run."""
    seen, original = [], getattr(ClipPromptTrainer, method)

    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        seen.append(self.model.prompt_learner.ctx.detach().clone())
        return result

    monkeypatch.setattr(ClipPromptTrainer, method, wrapper)
    return seen


def test_upstream_checkpoint_evaluates_with_its_own_context(tmp_path, monkeypatch):
    model_dir, weights, ctx = _coop_warmup(tmp_path)
    root = make_shapes_caltech(str(tmp_path / "data"), n_classes=4, n_per_class=8)
    seen = _capture_ctx(monkeypatch, "before_test")
    out = str(tmp_path / "eval")
    args = train_args(root, out, "CoOp", "CoOp/vit_b16_ep50_ctxv1", weights)
    assert cli(["--eval-only", "--model-dir", model_dir, "--load-epoch", "2", *args]) == 0
    assert ctx.shape == (4, 64) and len(seen) == 1 and torch.equal(seen[0], ctx)
    assert read_results(out)["total"] == 4 * 2  # 8 - round(50 %) - round(20 %) per class
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "skipped pickled objects of torch.optim.lr_scheduler.CosineAnnealingLR" in log


def test_upstream_checkpoint_as_init_weights(tmp_path, monkeypatch):
    model_dir, weights, ctx = _coop_warmup(tmp_path)
    root = make_shapes_caltech(str(tmp_path / "data"), n_classes=4, n_per_class=8)
    seen = _capture_ctx(monkeypatch, "load_init_weights")
    init = os.path.join(model_dir, "prompt_learner", "model.pth.tar-2")
    args = train_args(root, str(tmp_path / "init"), "CoOp", "CoOp/vit_b16_ep50_ctxv1", weights,
                      "MODEL.INIT_WEIGHTS", init)  # fmt: skip
    assert cli(["--no-train", *args]) == 0
    assert len(seen) == 1 and torch.equal(seen[0], ctx)


def test_checkpoint_loading_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    fpath = str(tmp_path / "model.pth.tar-1")
    ctx = torch.randn(4, 8)
    torch.save({"state_dict": {"ctx": ctx}, "epoch": 1, "scheduler": {"x": Payload()}}, fpath)
    ckpt = load_checkpoint(fpath)
    assert not marker.exists()
    assert torch.equal(ckpt["state_dict"]["ctx"], ctx) and ckpt["scheduler"] == {"x": None}
    assert ckpt["epoch"] == 1


# ---- 3. UCF101 without its split file ---------------------------------------------------------


def _build(root: str, name: str, shots: int = -1, seed: int = 1, order: str = "listdir"):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS = root, name, shots
    cfg.DATASET.LIST_ORDER = order
    cfg.SEED = seed
    set_random_seed(seed)
    return build_dataset(cfg)


def test_ucf101_without_split_file_reads_upstreams_renamed_frame_folders(tmp_path):
    root = LAYOUTS["UCF101"](str(tmp_path), n_classes=3, n_per_class=8)
    frames = tmp_path / "ucf101" / "UCF-101-midframes"
    assert sorted(os.listdir(frames)) == ["Apply_Eye_Makeup", "Blow_Dry_Hair", "Handstand_Pushups"]
    data = _build(root, "UCF101")
    items = data.train_x + data.val + data.test
    assert len(items) == 3 * 8 + 3 * 2
    for item in items:
        folder = os.path.basename(os.path.dirname(item.impath))
        raw = folder.replace("_", "")
        assert folder == item.classname and os.path.basename(item.impath).startswith(f"v_{raw}_")


# ---- 4. listing order and upstream few-shot caches --------------------------------------------


def _scrambled_listdir(monkeypatch):
    """os.listdir returning a fixed non-sorted order (file systems rarely sort), as upstream sees."""
    real = os.listdir

    def listdir(path):
        names = sorted(real(path))
        return names[1::2][::-1] + names[::2]

    monkeypatch.setattr(os, "listdir", listdir)
    return listdir


@pytest.mark.parametrize("order", ["listdir", "sorted"])
def test_fewshot_picks_follow_the_listing_order(tmp_path, monkeypatch, order):
    root = LAYOUTS["ImageNet"](str(tmp_path), n_classes=3, n_per_class=9)
    listdir = _scrambled_listdir(monkeypatch)
    train_dir = os.path.join(root, "imagenet", "images", "train")
    random.seed(5)
    expected = []
    for wnid in sorted(listdir(train_dir)):
        names = listdir(os.path.join(train_dir, wnid))
        assert names != sorted(names)
        names = sorted(names) if order == "sorted" else names
        expected += [os.path.join(train_dir, wnid, n) for n in random.sample(names, 2)]
    data = _build(root, "ImageNet", shots=2, seed=5, order=order)
    assert [x.impath for x in data.train_x] == expected


def test_unknown_list_order_is_named(tmp_path):
    root = LAYOUTS["Caltech101"](str(tmp_path), n_classes=2, n_per_class=10)
    with pytest.raises(ValueError, match="DATASET.LIST_ORDER 'random'"):
        _build(root, "Caltech101", order="random")


def _upstream_pickle(monkeypatch, data: dict) -> bytes:
    """Pickle `data` the way upstream CoOp does, with a class named like Dassl's Datum."""
    name = "dassl.data.datasets.base_dataset"
    module = types.ModuleType(name)

    class Datum:
        def __init__(self, impath, label, domain, classname):
            self._impath, self._label = impath, label
            self._domain, self._classname = domain, classname

    Datum.__module__, Datum.__qualname__ = name, "Datum"
    module.Datum = Datum
    for part in ("dassl", "dassl.data", "dassl.data.datasets", name):
        monkeypatch.setitem(sys.modules, part, module)
    data = {k: [Datum(*row) for row in rows] for k, rows in data.items()}
    return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)


def test_upstream_fewshot_pickle_is_reused(tmp_path, monkeypatch):
    root = LAYOUTS["Caltech101"](str(tmp_path), n_classes=2, n_per_class=10)
    _build(root, "Caltech101")  # writes the split file, as a first upstream run would
    full = _build(root, "Caltech101")
    # upstream's picks: any images of the split; take the last ones, which a draw rarely gives
    by_label = {y: [x for x in full.train_x if x.label == y] for y in (0, 1)}
    train = [(x.impath, x.label, 0, x.classname) for y in (0, 1) for x in by_label[y][-2:]]
    val = [(x.impath, x.label, 0, x.classname) for x in full.val[:1]]
    cache = tmp_path / "caltech-101" / "split_fewshot" / "shot_2-seed_7.pkl"
    cache.parent.mkdir()
    cache.write_bytes(_upstream_pickle(monkeypatch, {"train": train, "val": val}))
    for part in ("dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"):
        monkeypatch.delitem(sys.modules, part)  # the reader must not need Dassl
    data = _build(root, "Caltech101", shots=2, seed=7)
    assert [(x.impath, x.label, x.classname) for x in data.train_x] == [
        r[:2] + r[3:] for r in train
    ]
    assert [(x.impath, x.label) for x in data.val] == [r[:2] for r in val]
    assert not (cache.parent / "shot_2-seed_7.json").exists()


def test_upstream_fewshot_pickle_with_other_classes_is_refused(tmp_path):
    root = LAYOUTS["Caltech101"](str(tmp_path), n_classes=2, n_per_class=10)
    cache = tmp_path / "caltech-101" / "split_fewshot" / "shot_2-seed_1.pkl"
    cache.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    cache.write_bytes(pickle.dumps({"train": [Payload()], "val": []}))
    with pytest.raises(ValueError, match="shot_2-seed_1.pkl"):
        _build(root, "Caltech101", shots=2)
    assert not marker.exists()


# ---- 5. random-number order of the initial prompts --------------------------------------------


def _build_trainer(args: list[str]):
    from promptdiff.host import build_trainer

    cfg = setup_cfg(build_parser().parse_args(args))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def test_coop_csc_initial_context_is_upstreams_draw(shapes_root, tiny_weights, tmp_path):
    trainer = _build_trainer(
        train_args(
            shapes_root,
            str(tmp_path),
            "CoOp",
            "CoOp/vit_b16_ep50",
            tiny_weights,
            "TRAINER.COOP.CSC",
            "True",
            "TRAINER.COOP.N_CTX",
            "3",
            seed=3,
        )  # fmt: skip
    )
    # upstream: seed, build CLIP from the state dict (its random init draws), then one
    # [n_cls, n_ctx, D] draw
    torch.manual_seed(3)
    clip_model = _clip().model.build_model(torch.load(tiny_weights, weights_only=True))
    reference = torch.empty(trainer.num_classes, 3, clip_model.ln_final.weight.shape[0])
    nn.init.normal_(reference, std=0.02)
    assert torch.equal(trainer.model.prompt_learner.ctx.detach(), reference)


def test_vpt_initial_prompts_are_upstreams_draws(shapes_root, tiny_weights, tmp_path):
    depth, n_ctx = 2, 3
    trainer = _build_trainer(
        train_args(
            shapes_root,
            str(tmp_path),
            "VPT",
            "VPT/vit_b16_c2_ep5_batch4_8ctx",
            tiny_weights,
            "TRAINER.VPT.PROMPT_DEPTH_VISION",
            str(depth),
            "TRAINER.VPT.N_CTX_VISION",
            str(n_ctx),
            prec_key="VPT",
            seed=4,
        )  # fmt: skip
    )
    # upstream's CLIP fork builds the vision tower as: patch conv, layer-0 prompts, class and
    # positional embeddings, then per block its layers followed by that block's prompts (i > 0)
    clip_lib = _clip().model
    state = torch.load(tiny_weights, weights_only=True)
    width, patch = state["visual.conv1.weight"].shape[0], state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    n_layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks")})
    torch.manual_seed(4)
    nn.Conv2d(3, width, patch, patch, bias=False)
    reference = [nn.init.normal_(torch.empty(n_ctx, width), std=0.02)]
    torch.randn(width), torch.randn(grid * grid + 1, width)
    for i in range(n_layers):
        clip_lib.ResidualAttentionBlock(width, width // 64)
        if 0 < i < depth:
            reference.append(nn.init.normal_(torch.empty(n_ctx, width), std=0.02))
    assert torch.equal(trainer.model.prompt_learner.ctx.detach(), torch.stack(reference))
