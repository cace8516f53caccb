"""Exponential moving average of a module's weights."""

from __future__ import annotations

import torch
from torch import nn


def warmup_decay(decay: float, num_updates: int) -> float:
    """Decay with warm-up, min(decay, (1 + n) / (10 + n)), so early averages forget the init."""
    return min(decay, (1 + num_updates) / (10 + num_updates))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
