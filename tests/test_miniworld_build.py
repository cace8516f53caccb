"""A first build of the miniature world: the CLIP's pre-training uses the multi-tensor optimiser
update, bit-equal to the per-tensor loop, and the world is rendered in a second process during
pre-training, byte-equal to rendering it alone."""

from __future__ import annotations

import filecmp
import os

import pytest
import torch

from promptdiff.tools import miniworld as tmw
from promptdiff.worlds import miniature as mw

SMALL = mw.WorldSpec(
    colours=("red", "blue"), n_train=2, n_val=1, n_test=1, domains=("photo", "sketch")
)
FEW_STEPS = mw.ClipRecipe(steps=4, pool_per_class=7, text_warmup=2, warmup=1)


def _loop_optimisers(monkeypatch):
    """torch.optim.Adam and AdamW forced to the per-tensor loop (torch's CPU default)."""
    for name in ("Adam", "AdamW"):
        cls = getattr(torch.optim, name)
        monkeypatch.setattr(
            torch.optim, name, lambda *a, _cls=cls, **k: _cls(*a, **{**k, "foreach": False})
        )


def test_pretraining_multi_tensor_update_equals_the_per_tensor_loop(monkeypatch):
    fast = mw.pretrain_clip(SMALL, FEW_STEPS, progress=False).state_dict()
    init = mw.build_clip(FEW_STEPS, SMALL.size).state_dict()
    with monkeypatch.context() as m:
        _loop_optimisers(m)
        plain = mw.pretrain_clip(SMALL, FEW_STEPS, progress=False).state_dict()
    assert fast.keys() == plain.keys()
    assert all(torch.equal(fast[k], plain[k]) for k in fast)
    # the steps did train: most weights moved away from the initialisation
    moved = [k for k in fast if fast[k].is_floating_point() and not torch.equal(fast[k], init[k])]
    assert len(moved) > len(fast) // 2


def _files(folder: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs
    )


def test_first_build_renders_the_world_beside_pretraining_with_the_same_bytes(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(mw, "CACHE_DIR", str(tmp_path / "cache"))
    first = tmw.build(str(tmp_path / "a"), SMALL, FEW_STEPS, progress=False)
    alone = mw.write_world(str(tmp_path / "b"), SMALL, progress=False)
    built = os.path.join(str(tmp_path / "a"), mw.dataset_dir(SMALL.kind))
    assert _files(built) == _files(alone) and len(_files(alone)) > 20
    match, mismatch, errors = filecmp.cmpfiles(built, alone, _files(alone), shallow=False)
    assert not mismatch and not errors
    # a second build finds the CLIP in the cache and pre-trains nothing
    monkeypatch.setattr(mw, "pretrain_clip", lambda *a, **k: pytest.fail("pre-trained twice"))
    second = tmw.build(str(tmp_path / "c"), SMALL, FEW_STEPS, progress=False)
    assert filecmp.cmp(first, second, shallow=False)
