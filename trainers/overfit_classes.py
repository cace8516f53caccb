"""The classes of the per-sample over-fitting loss (TRAINER.PD.OVERFIT_CLASSES).

Each over-fitting step encodes every class prompt of every image (per-image prompts), forward and
backward, K times: at ImageNet's 1,000 classes that dominates stage 2. With OVERFIT_CLASSES = n the
loss of image i is the cross-entropy over its true class plus the n - 1 classes its base prompt
finds hardest (highest logits), chosen once per batch. n = 0, or n >= the number of classes, is the
exact all-class loss (the softmax over a permutation of all classes is the same loss).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor


def hardest_classes(logits: Tensor, label: Tensor, n: int) -> Tensor:
    """Class indices [B, n] per row: the true class first, then the n - 1 highest other logits."""
    if not 1 <= n <= logits.shape[1]:
        raise ValueError(f"n must lie in 1..{logits.shape[1]} (got {n}).")
    marked = logits.detach().float().scatter(1, label[:, None], float("inf"))
    return marked.topk(n, dim=1).indices


def encodes_classes(model) -> bool:
    """Whether model.logits_for takes `classes` (and then encodes only those class prompts)."""
    return "classes" in inspect.signature(model.logits_for).parameters


def logits_for_classes(model, image: Tensor, cond: Tensor, prompts: Tensor, classes: Tensor):
    """model.logits_for restricted to classes [B, k]: [B, k] (computed for all and gathered when
    the model cannot restrict its text encoding)."""
    if encodes_classes(model):
        return model.logits_for(image, cond, prompts, classes=classes)
    return torch.gather(model.logits_for(image, cond, prompts), 1, classes)


def overfit_loss_classes(
    model, image: Tensor, cond: Tensor, base: Tensor, label: Tensor, num_classes: int, keep: int
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """(prompts [B, *S] -> logits over each image's chosen classes, the labels within them).
    Models with fixed class features (VPT) gain nothing from fewer classes: they keep all."""
    if keep <= 0 or keep >= num_classes or not encodes_classes(model):
        return (lambda prompts: model.logits_for(image, cond, prompts)), label
    with torch.no_grad():
        classes = hardest_classes(model.logits_for(image, cond, base), label, keep)
    return (
        lambda prompts: logits_for_classes(model, image, cond, prompts, classes)
    ), torch.zeros_like(label)
