"""Per-sample prompt over-fitting: B copies of one prompt, each optimised on its own loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "adam")


@dataclass
class OverfitResult:
    """Detached over-fitted prompts [B, *S], per-sample losses [B] before and after, and with
    ``has_aux`` what ``loss_fn`` returned beside the losses of the over-fitted prompts."""

    targets: Tensor
    loss_before: Tensor
    loss_after: Tensor
    aux_after: Any = None

    @property
    def mean_before(self) -> float:
        return self.loss_before.float().mean().item()

    @property
    def mean_after(self) -> float:
        return self.loss_after.float().mean().item()


def _per_sample(loss_fn: Callable, prompts: Tensor, has_aux: bool) -> tuple[Tensor, Any]:
    """(losses [B], aux or None) of loss_fn at the prompts."""
    losses, aux = loss_fn(prompts) if has_aux else (loss_fn(prompts), None)
    if losses.shape != (prompts.shape[0],):
        raise ValueError(
            f"loss_fn must return per-sample losses of shape [{prompts.shape[0]}], "
            f"got {list(losses.shape)}."
        )
    return losses, aux


def _optimizer(
    name: str, p: Tensor, lr: float, betas: tuple[float, float], eps: float
) -> torch.optim.Optimizer:
    """torch.optim over the copies [B, *S]: SGD (no momentum) or Adam, both elementwise, so
    each copy's update depends on its own gradient only. Adam takes the fused kernel where there
    is one (one kernel per step instead of several small ones)."""
    if name == "sgd":
        return torch.optim.SGD([p], lr=lr)
    fused = True if p.device.type in ("cpu", "cuda") else None
    return torch.optim.Adam([p], lr=lr, betas=betas, eps=eps, fused=fused)


def overfit_per_sample(
    loss_fn: Callable,
    base: Tensor,
    batch_size: int,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    has_aux: bool = False,
) -> OverfitResult:
    """Take ``steps`` gradient steps on B copies of ``base`` at once, copy i on loss_fn(.)[i].

    ``loss_fn(prompts [B, *S]) -> losses [B]`` must be separable (loss i depends on prompt i only;
    e.g. no batch-norm statistics across the batch): one backward pass of the summed losses then
    gives each copy exactly its own gradient. Gradients are taken with ``torch.autograd.grad``
    w.r.t. the copies only, so ``base`` and any parameter's ``.grad`` are left untouched. Grad mode
    is enabled inside, so this also works under the caller's ``torch.no_grad()``. The step is
    torch.optim's SGD or Adam on the [B, *S] tensor of copies: elementwise, hence per-copy as well
    (and the gradient is of the *sum*, so each copy's step is what it would be alone). Cost: ``steps`` forward+backward passes plus one forward
    for the final losses (the "before" losses come from the first step's forward). With
    ``has_aux`` (as in ``torch.func.grad``) ``loss_fn`` returns ``(losses, aux)``, and the aux of
    that final forward (e.g. the logits of the over-fitted prompts) comes back as ``aux_after``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}.")
    if batch_size < 1 or steps < 0:
        raise ValueError(f"batch_size must be >= 1 and steps >= 0, got {batch_size} and {steps}.")
    with torch.enable_grad():
        p = base.detach().unsqueeze(0).repeat(batch_size, *([1] * base.dim()))
        p.requires_grad_(True)
        optim = _optimizer(optimizer, p, lr, betas, eps)
        loss_before = None
        for _ in range(steps):
            losses, _ = _per_sample(loss_fn, p, has_aux)
            if loss_before is None:
                loss_before = losses.detach()
            (grad,) = torch.autograd.grad(losses.sum(), p)
            # autograd.grad may return other strides than p's (e.g. through a bmm of a transpose),
            # and fused Adam on the CPU then silently pairs the wrong elements: match p's layout
            p.grad = grad.contiguous()
            optim.step()
    with torch.no_grad():
        loss_after, aux_after = _per_sample(loss_fn, p, has_aux)
    loss_after = loss_after.detach()
    if loss_before is None:
        loss_before = loss_after
    return OverfitResult(p.detach(), loss_before, loss_after, aux_after)
