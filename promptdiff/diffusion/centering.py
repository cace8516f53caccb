"""Class-centred diffusion targets: a per-class running mean residual mu_y and its removal.

A residual over-fitted *with the label* carries a push toward the label; a denoiser that sees only
the image can at best re-weight those pushes by its own class belief. Removing each class's mean
residual (``mean``: r - mu_y) or its direction (``span``: r minus its projection on mu_y) leaves
what varies between images of a class. mu_y is never added back at test time (the label is
unknown there), so the generated part is all the prompt gets.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CENTER_MODES = ("none", "mean", "span")


class ClassMeans(nn.Module):
    """Exact running mean [K, *S] of the targets of each of K classes (float64 sums and counts,
    both buffers). A class never seen has mean 0."""

    def __init__(self, num_classes: int, shape: tuple[int, ...]):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.register_buffer("total", torch.zeros(num_classes, *shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @property
    def mean(self) -> Tensor:
        """[K, *S] float32: each class's mean target so far (0 for a class not seen yet)."""
        view = (-1,) + (1,) * (self.total.dim() - 1)
        return (self.total / self.count.clamp_min(1).view(view)).float()

    @torch.no_grad()
    def update(self, x: Tensor, labels: Tensor) -> None:
        """Fold targets [B, *S] of classes [B] into the sums."""
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < len(self.count):
            raise ValueError(
                f"labels must lie in 0..{len(self.count) - 1} (the training classes), got "
                f"{labels.min().item()}..{labels.max().item()}."
            )
        self.total.index_add_(0, labels, x.detach().to(self.total.dtype))
        self.count.index_add_(0, labels, torch.ones_like(labels))

    def centre(self, x: Tensor, labels: Tensor, mode: str) -> Tensor:
        """Targets [B, *S] with their class's mean removed (``mean``) or their component along it
        removed (``span``: per image, over the flattened prompt); ``none`` returns x."""
        if mode not in CENTER_MODES:
            raise ValueError(f"mode must be one of {CENTER_MODES}, got {mode!r}.")
        if mode == "none":
            return x
        mu = self.mean[labels].to(x.dtype)
        if mode == "mean":
            return x - mu
        flat_x, flat_mu = x.flatten(1), mu.flatten(1)
        norm_sq = flat_mu.square().sum(1, keepdim=True)
        # a class whose mean is 0 has no direction to remove
        coef = (flat_x * flat_mu).sum(1, keepdim=True) / norm_sq.clamp_min(1e-30)
        coef = torch.where(norm_sq > 0, coef, torch.zeros_like(coef))
        return (flat_x - coef * flat_mu).view_as(x)

    def fit_saved(self, state_dict: dict, prefix: str) -> None:
        """Resize the buffers to the class count a checkpoint saved (its training classes), so a
        model built for other classes (base-to-new evaluation) loads it strictly."""
        saved = state_dict.get(prefix + "total")
        if saved is None or saved.shape[0] == self.total.shape[0]:
            return
        if tuple(saved.shape[1:]) != tuple(self.total.shape[1:]):
            return  # a mis-shaped prompt is the strict load's error to report
        self.total = torch.zeros_like(saved, device=self.total.device)
        self.count = torch.zeros(saved.shape[0], dtype=torch.long, device=self.count.device)
