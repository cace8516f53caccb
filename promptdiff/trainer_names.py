"""The one naming rule of the prompt-diffusion trainers: a *Diff trainer is named after its
baseline plus "Diff" (CoOp -> CoOpDiff), and shares that baseline's checkpoints and table row."""

from __future__ import annotations

DIFF_SUFFIX = "Diff"


def split_diff(name: str) -> tuple[str, bool]:
    """(the baseline's name, whether `name` is its Diff variant): "CoOpDiff" -> ("CoOp", True)."""
    if name.endswith(DIFF_SUFFIX) and len(name) > len(DIFF_SUFFIX):
        return name[: -len(DIFF_SUFFIX)], True
    return name, False
