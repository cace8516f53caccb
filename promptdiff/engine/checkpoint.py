"""Checkpoints in Dassl's layout (<model>/model.pth.tar-<epoch> + `checkpoint`), safe to load."""

from __future__ import annotations

import math
import os
import pickle
import random
import shutil
import signal
from collections import OrderedDict, defaultdict

import numpy as np
import torch

from promptdiff.engine.utils import atomic_write, logger, torch_save_atomic, write_json

# the run-folder layout (manifest, per-model records) has its home in the results library
from promptdiff.results.layout import (  # noqa: F401  (MANIFEST and friends re-exported)
    MANIFEST,
    last_checkpoint_name,
    read_manifest,
)


def save_checkpoint(
    state: dict, save_dir: str, is_best: bool = False, model_name: str = "", record: bool = True
) -> str:
    """Save `state` as save_dir/model_name (default model.pth.tar-<epoch>) and, if `record`,
    name it in save_dir/checkpoint (Dassl's record of the last file)."""
    os.makedirs(save_dir, exist_ok=True)
    state = dict(state)
    state["state_dict"] = OrderedDict(
        (k[7:] if k.startswith("module.") else k, v) for k, v in state["state_dict"].items()
    )
    if not model_name:
        model_name = f"model.pth.tar-{state['epoch']}"
    fpath = os.path.join(save_dir, model_name)
    torch_save_atomic(state, fpath)
    logger.info(f"Checkpoint saved to {fpath}")
    if record:
        write_record(save_dir, model_name)
    if is_best:
        best = os.path.join(save_dir, "model-best.pth.tar")

        def copy(f) -> None:
            with open(fpath, "rb") as src:
                shutil.copyfileobj(src, f)

        atomic_write(best, copy, mode="wb")
        logger.info(f'Best checkpoint saved to "{best}"')
    return fpath


def write_record(save_dir: str, model_name: str) -> None:
    """Name model_name in save_dir/checkpoint, the file Dassl reads to resume."""
    atomic_write(os.path.join(save_dir, "checkpoint"), lambda f: f.write(f"{model_name}\n"))


def write_manifest(directory: str, manifest: dict) -> None:
    write_json(manifest, os.path.join(directory, MANIFEST))


def has_checkpoint(directory: str) -> bool:
    """Whether `directory` holds a checkpoint a restarted run would resume from."""
    manifest = read_manifest(directory) if os.path.isdir(directory) else None
    if manifest is not None:
        return bool(manifest.get("last"))
    return any(last_checkpoint_name(os.path.join(directory, d)) for d in _subdirs(directory))


def _subdirs(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))


def test_hook(point: str) -> None:
    """Tests kill the process at an exact point of a save: PROMPTDIFF_TEST_KILL_AT=<point>."""
    if os.environ.get("PROMPTDIFF_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


test_hook.__test__ = False  # not a pytest test


def rng_state() -> dict:
    """Python, numpy and torch RNG states in types torch.load(weights_only=True) accepts."""
    version, mt, pos = random.getstate()
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {
        "python": [version, list(mt), pos],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_gauss), float(np_cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() captured, so a resumed run draws the numbers the original would."""
    version, mt, pos = state["python"]
    random.setstate((version, tuple(mt), pos))
    name, keys, pos_np, gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos_np, gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Skipped:
    """Stands in for a pickled object of a class outside the allow-list; dropped after loading."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Builds tensors and plain containers; every other global becomes a _Skipped stand-in, so
    unpickling never runs code outside this list."""

    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("collections", "OrderedDict"): OrderedDict,
        ("collections", "defaultdict"): defaultdict,
        ("builtins", "dict"): dict,
        ("builtins", "list"): list,
        ("builtins", "set"): set,
        ("builtins", "tuple"): tuple,
    }
    skipped: set[str] = set()

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module  # protocol-2 files
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        self.skipped.add(f"{module}.{name}")
        return type(name, (_Skipped,), {})


class _TensorsOnlyPickle:
    """The pickle_module torch.load is given for files weights_only refuses."""

    Unpickler = _TensorsOnlyUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _TensorsOnlyUnpickler(file, **kwargs).load()


def _drop_skipped(obj):
    """Replace the _Skipped stand-ins inside dicts, lists and tuples by None."""
    if isinstance(obj, _Skipped):
        return None
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _drop_skipped(value)
    elif isinstance(obj, list):
        obj[:] = [_drop_skipped(v) for v in obj]
    elif isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        return tuple(_drop_skipped(v) for v in obj)
    return obj


def non_finite_entry(obj, name: str = "") -> str | None:
    """The dotted name of the first floating tensor or float in `obj` (dicts, lists, tuples)
    holding NaN or inf, or None when every value is finite."""
    if isinstance(obj, torch.Tensor):
        finite = not obj.is_floating_point() or bool(torch.isfinite(obj).all())
        return None if finite else name
    if isinstance(obj, float):
        return None if math.isfinite(obj) else name
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = non_finite_entry(value, f"{name}.{key}" if name else str(key))
        if found is not None:
            return found
    return None


def check_finite(ckpt: dict, fpath: str) -> None:
    """Refuse a checkpoint holding NaN or inf anywhere (any model's tensors, an EMA copy, the
    optimiser or scheduler state): evaluating it gives a meaningless figure, resuming it fails
    later with a message that does not say why."""
    # a model's tensor is named as its state_dict names it, anything else by its place in the file
    found = non_finite_entry(ckpt.get("state_dict"))
    where = f"tensor {found}"
    if found is None:
        found = non_finite_entry({k: v for k, v in ckpt.items() if k != "state_dict"})
        where = f"entry {found}"
    if found is not None:
        raise FloatingPointError(
            f"Checkpoint {fpath} holds NaN or inf in the {where}, so it is unusable; load "
            f"another epoch (--load-epoch) or retrain."
        )


def load_checkpoint(fpath: str) -> dict:
    """Load a checkpoint without arbitrary unpickling; a missing or broken file is one clear error.

    Files weights_only refuses (upstream Dassl pickles its warmup scheduler's `successor`, a torch
    scheduler holding its optimizer) are read for their tensors and plain values only: any other
    object becomes None, with one warning line naming the skipped classes.
    """
    if not os.path.isfile(fpath):
        raise FileNotFoundError(
            f"Checkpoint {fpath} does not exist; check --model-dir and --load-epoch."
        )
    skipped = None
    try:
        try:
            ckpt = torch.load(fpath, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            _TensorsOnlyUnpickler.skipped = set()
            ckpt = _drop_skipped(
                torch.load(
                    fpath, map_location="cpu", pickle_module=_TensorsOnlyPickle, weights_only=False
                )
            )
            skipped = sorted(_TensorsOnlyUnpickler.skipped)
    except Exception as exc:
        raise RuntimeError(
            f"Cannot read checkpoint {fpath} ({type(exc).__name__}: {exc}); it is damaged or was "
            f"written by neither this project nor Dassl: retrain or point --model-dir elsewhere."
        ) from exc
    if not isinstance(ckpt, dict):
        raise RuntimeError(
            f"Checkpoint {fpath} holds no dict of tensors; point --model-dir at a Dassl-style run."
        )
    check_finite(ckpt, fpath)
    if skipped is not None:
        logger.warning(
            f"{fpath}: read tensors and plain values only; skipped pickled objects of "
            f"{', '.join(skipped)}."
        )
    return ckpt


def resume_from_checkpoint(
    fdir: str, model, optimizer=None, scheduler=None, fname: str | None = None
) -> int:
    """Restore fdir/fname (default: the file fdir/checkpoint names) into model/optimizer/scheduler;
    return the next epoch."""
    name = fname or last_checkpoint_name(fdir)
    if name is None:
        raise FileNotFoundError(f"No checkpoint recorded in {fdir}.")
    fpath = os.path.join(fdir, name)
    logger.info(f"Loading checkpoint from {fpath}")
    ckpt = load_checkpoint(fpath)
    model.load_state_dict(ckpt["state_dict"])
    if optimizer is not None and ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("rng_state"):
        set_rng_state(ckpt["rng_state"])
    return int(ckpt["epoch"])
