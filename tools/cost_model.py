"""Projected cost of every trainer on ImageNet 16-shot with ViT-B/16 on one GPU, from FLOP counts.

floor = tokens x 2 x parameters per token / peak rate (one forward pass; a backward pass through
frozen weights computes input gradients only, i.e. one more forward's worth). Attention scores,
layer norms and the denoiser are left out: under 5 % at <= 77 text and 197 image tokens. The
projection divides the floor by an achieved fraction of the peak (--mfu), which has to be
measured on the GPU; until then it is an assumption, and the output says so.

    python tools/cost_model.py [--peak-tflops 989] [--mfu 0.4] [--classes 1000] [--topk 64]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from tabulate import tabulate

TEXT_PPT = 12 * 12 * 512**2  # text blocks' matrix parameters met by one token (37.7 M)
IMAGE_PPT = 12 * 12 * 768**2  # vision blocks' (84.9 M)
IMAGE_TOKENS = 197  # 14 x 14 patches + CLS at 224 px
TRAIN_IMAGES = 16_000  # 16 shots x 1,000 classes
TEST_IMAGES = 50_000
NAME_TOKENS = 6.0  # ImageNet class name + "." + EOT, BPE tokens on average


@dataclass
class Setup:
    classes: int = 1000
    topk: int = 64  # TRAINER.PD.OVERFIT_CLASSES
    overfit_steps: int = 10  # K
    shared: bool = True  # prefix sharing and top-k on (False: the plain path, all classes)


def text_tokens(prefix: int, n_cls: int, s: Setup) -> float:
    """Tokens through the text encoder for one prompt over n_cls classes (upstream: 77 each)."""
    return prefix + n_cls * NAME_TOKENS if s.shared else n_cls * 77.0


def gflop(text: float = 0.0, image: float = 0.0) -> float:
    """Forward GFLOP of `text` text-token passes and `image` image-token passes."""
    return 2e-9 * (text * TEXT_PPT + image * IMAGE_TOKENS * IMAGE_PPT)


def trainers(s: Setup) -> dict[str, dict[str, float]]:
    """GFLOP per phase: stage 1 per epoch, stage 2 per epoch, test (whole test set)."""
    c, k, kk = s.classes, (s.topk if s.shared else s.classes), s.overfit_steps
    coop = coop_img = text_tokens(17, c, s)  # SOS + 16 context tokens
    maple = text_tokens(5, c, s)  # SOS + 2 context + "of a"
    # upstream re-encodes the class prompts for every test batch (of 100), here once per test
    test_encodings = 1 if s.shared else TEST_IMAGES / 100
    out = {}
    # CoOp: batch 32, the class prompts forward + backward once per batch; images forward only
    s1 = TRAIN_IMAGES / 32 * gflop(text=2 * coop) + TRAIN_IMAGES * gflop(image=1)
    test = test_encodings * gflop(text=coop) + TEST_IMAGES * gflop(image=1)
    out["CoOp"] = {"stage 1": s1, "test": test}

    # *Diff stage 2, per image: K steps forward + backward and one final forward over the chosen
    # classes, the selection pass (per batch when the base prompt is shared, else per image), the
    # cross-entropy through the generated prompt (all classes, forward + backward), the condition
    def overfit(prefix, per_image_base, vision_pass=0.0):
        chosen = text_tokens(prefix, k, s)
        full = text_tokens(prefix, c, s)
        select = full / 32 if not per_image_base else full
        text = (2 * kk + 1) * chosen + (select if s.shared and k < c else 0) + 2 * full
        image = 1 + vision_pass * (2 * kk + 1 + 2)
        return TRAIN_IMAGES * gflop(text=text, image=image)

    per_image_test = TEST_IMAGES * gflop(text=coop_img, image=1)
    out["CoOpDiff"] = {"stage 1": s1, "stage 2": overfit(17, False), "test": per_image_test}
    cocoop_s1 = TRAIN_IMAGES * gflop(text=2 * coop_img, image=1)
    out["CoCoOp"] = {"stage 1": cocoop_s1, "test": per_image_test}
    out["CoCoOpDiff"] = {"stage 1": cocoop_s1, "stage 2": overfit(17, True), "test": per_image_test}
    # VPT: text features fixed; the prompted image encoder forward + backward
    vpt_s1 = TRAIN_IMAGES * gflop(image=2)
    out["VPT"] = {"stage 1": vpt_s1, "test": TEST_IMAGES * gflop(image=1)}
    vptdiff_s2 = TRAIN_IMAGES * gflop(image=1 + 2 * kk + 1 + 2)
    out["VPTDiff"] = {
        "stage 1": vpt_s1,
        "stage 2": vptdiff_s2,
        "test": TEST_IMAGES * gflop(image=2),
    }
    # MaPLe: batch 4, shared prompts (text once per batch), prompted images forward + backward
    maple_s1 = TRAIN_IMAGES / 4 * gflop(text=2 * maple) + TRAIN_IMAGES * gflop(image=2)
    maple_test = test_encodings * gflop(text=maple) + TEST_IMAGES * gflop(image=1)
    out["MaPLe"] = {"stage 1": maple_s1, "test": maple_test}
    out["MaPLeDiff"] = {
        "stage 1": maple_s1,
        "stage 2": overfit(5, False, vision_pass=1.0),
        "test": TEST_IMAGES * gflop(text=maple, image=2),
    }
    return out


def table(peak_tflops: float, mfu: float, setup: Setup) -> str:
    fast = trainers(setup)
    plain = trainers(Setup(setup.classes, setup.topk, setup.overfit_steps, shared=False))
    rows = []
    for name, phases in fast.items():
        for phase, g in phases.items():
            floor = g / (peak_tflops * 1e3)
            rows.append(
                [
                    name,
                    phase + (" (per epoch)" if phase.startswith("stage") else ""),
                    f"{g / 1e6:.2f}",
                    f"{floor:.1f}",
                    f"{floor / mfu:.0f}",
                    f"{plain[name][phase] / (peak_tflops * 1e3) / mfu:.0f}",
                ]
            )
    headers = [
        "trainer",
        "phase",
        "PFLOP",
        "floor s",
        f"projected s ({mfu:.0%} of peak)",
        "projected s, upstream-style (77 tokens, all classes, per batch)",
    ]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    p.add_argument("--mfu", type=float, default=0.4, help="achieved fraction of the peak")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--topk", type=int, default=64, help="TRAINER.PD.OVERFIT_CLASSES")
    p.add_argument("--overfit-steps", type=int, default=10)
    args = p.parse_args(argv)
    print(table(args.peak_tflops, args.mfu, Setup(args.classes, args.topk, args.overfit_steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
