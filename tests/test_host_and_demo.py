"""The host switch's error path, and the demo's tiny-CLIP pre-training doing its job."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from promptdiff.backbone import tiny_clip
from promptdiff.backbone.prompts import tokenize
from promptdiff.synthetic import _draw, class_names, pretrain_tiny_clip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dassl_host_without_dassl_is_one_line_error():
    try:
        import dassl  # noqa: F401

        pytest.skip("a real Dassl is installed here; this checks the message when it is not")
    except ImportError:
        pass
    proc = subprocess.run(
        [sys.executable, "train.py", "--host", "dassl", "--trainer", "CoOp"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "PROMPTDIFF_HOST=dassl" in lines[0] and "Dassl" in lines[0]


def test_unknown_host_value_is_rejected():
    env = dict(os.environ, PROMPTDIFF_HOST="detectron")
    proc = subprocess.run(
        [sys.executable, "-c", "import promptdiff.host"], cwd=ROOT, env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "PROMPTDIFF_HOST='detectron'" in proc.stderr


def _zero_shot_accuracy(model, n: int = 96) -> float:
    names = class_names(24)
    rng = np.random.default_rng(123)
    labels = rng.integers(0, len(names), size=n)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = np.stack([np.asarray(_draw(names[i], 32, rng)) for i in labels])
    images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(
            model.encode_text(tokenize([f"a photo of a {c.replace('_', ' ')}." for c in names])),
            dim=-1,
        )
    return float(((img @ txt.t()).argmax(1).numpy() == labels).mean())


def test_demo_pretraining_gives_zero_shot_transfer():
    model = tiny_clip()
    before = _zero_shot_accuracy(model)
    pretrain_tiny_clip(model, steps=120)
    after = _zero_shot_accuracy(model)
    assert before < 0.15  # a random CLIP is near chance (1/24)
    assert after > 0.15 and after > before + 0.1  # chance is 1/24
