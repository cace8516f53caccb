"""Per-element running standardisation of diffusion targets, and residual/absolute conversion."""

from __future__ import annotations

import torch
from torch import Tensor, nn

TARGET_MODES = ("residual", "absolute")


class RunningStandardizer(nn.Module):
    """Running per-element mean and std of targets [B, *S], kept as buffers.

    ``momentum=None`` keeps the exact mean and (population) variance of every sample seen so far
    (Chan et al.'s parallel merge); a float m uses an exponential moving average,
    stat <- (1 - m) stat + m batch_stat, after the first batch initialises it. Stats change only in
    ``update``, which the owner calls in training mode; ``frozen=True`` turns ``update`` off.
    Before any update the transform is the identity. The std is floored at ``rel_floor`` times the
    RMS std so that elements that never vary are not blown up to unit scale.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        momentum: float | None = None,
        frozen: bool = False,
        rel_floor: float = 1e-3,
    ):
        super().__init__()
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be None or in (0, 1], got {momentum}.")
        self.momentum, self.frozen, self.rel_floor = momentum, frozen, rel_floor
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold a batch [B, *S] into the running stats (no-op when frozen)."""
        if self.frozen or x.shape[0] == 0:
            return
        x = x.detach().to(self.mean.dtype)
        n_b = x.shape[0]
        mean_b, var_b = x.mean(0), x.var(0, unbiased=False)
        n_a = int(self.count)
        if n_a == 0:
            self.mean.copy_(mean_b)
            self.var.copy_(var_b)
        elif self.momentum is not None:
            self.mean.lerp_(mean_b, self.momentum)
            self.var.lerp_(var_b, self.momentum)
        else:
            n = n_a + n_b
            delta = mean_b - self.mean
            self.var.mul_(n_a / n).add_(var_b * (n_b / n) + delta.square() * (n_a * n_b / n**2))
            self.mean.add_(delta * (n_b / n))
        self.count += n_b

    @property
    def std(self) -> Tensor:
        """Per-element std with the relative floor applied."""
        floor = self.rel_floor * self.var.mean().sqrt() + torch.finfo(self.var.dtype).tiny
        return self.var.sqrt().clamp_min(floor)

    def normalize(self, x: Tensor) -> Tensor:
        """Raw [B, *S] -> standardised."""
        return (x - self.mean) / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        """Standardised [B, *S] -> raw."""
        return x * self.std + self.mean


def _check_mode(mode: str) -> None:
    if mode not in TARGET_MODES:
        raise ValueError(f"mode must be one of {TARGET_MODES}, got {mode!r}.")


def prompt_to_target(prompts: Tensor, base: Tensor, mode: str = "residual") -> Tensor:
    """Per-sample prompts [B, *S] -> diffusion targets: p* - p (residual) or p* (absolute)."""
    _check_mode(mode)
    return prompts - base if mode == "residual" else prompts


def target_to_prompt(targets: Tensor, base: Tensor, mode: str = "residual") -> Tensor:
    """Inverse of :func:`prompt_to_target`; differentiable in both arguments."""
    _check_mode(mode)
    return targets + base if mode == "residual" else targets
