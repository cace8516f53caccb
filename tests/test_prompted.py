"""The prompt-diffusion mixin relies on a trainer's model for nothing but trainers.prompted's
DiffusionHooks, so a new baseline needs its prompt learner and those hooks only."""

from __future__ import annotations

import ast
import os

from promptdiff.trainers.prompted import DiffusionHooks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the mixin and the over-fitting class choice it calls: the code that handles a baseline's model
MIXIN_FILES = ("trainers/prompt_diffusion.py", "trainers/overfit_classes.py")


def _model_attributes(path: str) -> set[str]:
    """Attributes read from `model` or `self.model` in a source file."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        if (isinstance(owner, ast.Name) and owner.id == "model") or (
            isinstance(owner, ast.Attribute)
            and owner.attr == "model"
            and isinstance(owner.value, ast.Name)
            and owner.value.id == "self"
        ):
            found.add(node.attr)
    return found


def test_mixin_uses_only_the_protocol():
    declared = {n for n in vars(DiffusionHooks) if not n.startswith("_")}
    declared |= set(DiffusionHooks.__annotations__)
    assert declared == {"clip", "prompt_learner", "condition", "base_prompt", "logits_for"}
    used = set().union(*(_model_attributes(path) for path in MIXIN_FILES))
    assert {"condition", "base_prompt", "logits_for"} <= used  # the walk sees the mixin's calls
    assert used <= declared, f"the mixin uses {sorted(used - declared)} outside DiffusionHooks"
