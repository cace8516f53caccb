"""The one CLIP loader: OpenAI weights by backbone name or a local file, plus a tiny CLIP for tests."""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from promptdiff.fileio import atomic_write

CLIP_CACHE = os.path.expanduser("~/.cache/clip")


class WeightsError(RuntimeError):
    """Raised when CLIP weights cannot be found or read."""


def _clip():
    with warnings.catch_warnings():
        # clip-anytorch imports pkg_resources, which warns on every import
        warnings.simplefilter("ignore")
        import clip

    return clip


def resolve_weights(backbone: str, path: str = "") -> str:
    """Return the weights file for a backbone name, or `path` when it is given (it wins)."""
    if path:
        if not os.path.isfile(path):
            raise WeightsError(
                f"CLIP weights file {path!r} (MODEL.BACKBONE.PATH) does not exist; fix the path "
                f"or clear MODEL.BACKBONE.PATH to use the OpenAI weights for {backbone!r} in {CLIP_CACHE}."
            )
        return path
    clip = _clip()
    models = clip.clip._MODELS
    if backbone not in models:
        raise WeightsError(
            f"Unknown CLIP backbone {backbone!r} (MODEL.BACKBONE.NAME); use one of "
            f"{sorted(models)} or set MODEL.BACKBONE.PATH to a local weights file."
        )
    url = models[backbone]
    cached = os.path.join(CLIP_CACHE, os.path.basename(url))
    if os.path.isfile(cached):
        return cached
    try:
        return clip.clip._download(url, CLIP_CACHE)
    except Exception as exc:  # offline, proxy, disk: all mean the same to the user
        raise WeightsError(
            f"CLIP weights for {backbone!r} are not in {cached} and could not be downloaded ({exc}); "
            f"put the OpenAI file there or set MODEL.BACKBONE.PATH to a local weights file."
        ) from exc


def read_state_dict(path: str) -> dict:
    """Read a CLIP state dict from an OpenAI JIT archive or a plain (possibly nested) state dict."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated but reads OpenAI's files
            return torch.jit.load(path, map_location="cpu").state_dict()
    except Exception:
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"Cannot read CLIP weights file {path!r} ({type(exc).__name__}); it must be an OpenAI "
            f"JIT archive or a torch state dict; re-download it or point MODEL.BACKBONE.PATH elsewhere."
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or "token_embedding.weight" not in obj:
        raise WeightsError(
            f"CLIP weights file {path!r} holds no CLIP state dict (no 'token_embedding.weight'); "
            f"point MODEL.BACKBONE.PATH to an OpenAI CLIP file."
        )
    return obj


def load_clip(backbone: str, path: str = "", device: str | torch.device = "cpu") -> nn.Module:
    """Build CLIP in fp32 with every width read from the weights; precision is the trainer's call."""
    clip = _clip()
    state_dict = dict(read_state_dict(resolve_weights(backbone, path)))
    model = clip.model.build_model(state_dict).float()
    # build_model stores weights in fp16; reload so fp32 files keep every bit
    model.load_state_dict(state_dict)
    return model.to(device).eval()


def check_input_size(model: nn.Module, size) -> None:
    """INPUT.SIZE must equal the image encoder's resolution (its positional embedding is fixed)."""
    res = int(model.visual.input_resolution)
    if tuple(int(n) for n in size) != (res, res):
        raise ValueError(
            f"INPUT.SIZE {tuple(size)} does not match the backbone's input resolution {res}x{res} "
            f"(MODEL.BACKBONE); set INPUT.SIZE ({res}, {res})."
        )


def tiny_clip(
    seed: int = 0,
    embed_dim: int = 32,
    image_resolution: int = 32,
    vision_layers: int = 2,
    vision_width: int = 64,
    patch_size: int = 8,
    text_width: int = 64,
    text_layers: int = 2,
) -> nn.Module:
    """A randomly initialised CLIP small enough for CPU tests; keeps the real tokenizer's vocab."""
    clip = _clip()
    torch.manual_seed(seed)
    # build_model infers heads as width // 64, so widths must be multiples of 64 to round-trip
    return clip.model.CLIP(
        embed_dim,
        image_resolution,
        vision_layers,
        vision_width,
        patch_size,
        77,
        49408,
        text_width,
        text_width // 64,
        text_layers,
    ).float()


def save_tiny_clip(path: str, seed: int = 0, **kwargs) -> str:
    """Write a tiny CLIP state dict to `path` (atomically) so it loads through load_clip."""
    state = tiny_clip(seed=seed, **kwargs).state_dict()
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")
    return path


# the precisions a trainer's PREC key takes
PRECISIONS = ("fp16", "fp32", "amp")


def cast_for_precision(model: nn.Module, prec: str, device: torch.device) -> str:
    """Cast the frozen CLIP for PREC (fp16 | fp32 | amp) and return the effective precision."""
    if prec not in PRECISIONS:
        raise ValueError(f"PREC must be one of {', '.join(PRECISIONS)} (got {prec!r}).")
    if prec in ("fp16", "amp") and torch.device(device).type == "cpu":
        warnings.warn(f"PREC {prec} is not useful on CPU; running in fp32.", stacklevel=2)
        prec = "fp32"
    if prec == "fp16":
        _clip().model.convert_weights(model)
    return prec
