"""Conditional transformer denoiser over prompt tokens."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(u: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features [B, 2 * (dim // 2)] of times u in [0, 1] (scaled to 0..1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=u.device) / half)
    args = 1000.0 * u.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class PromptDenoiser(nn.Module):
    """Maps (x_t [B, *S], model time [B] in [0, 1], cond [B, C]) to a prediction [B, *S].

    Tokens: [condition, time, one per prompt vector] (the prompt tensor is flattened to
    [N, D] with D = S[-1]) plus learned positions; pre-LN encoder blocks, a final LayerNorm, and a
    zero-initialised Linear read at the prompt positions, so an untrained model outputs zeros.

    With ``context=True`` a forward call may pass ``context`` [B, C] (e.g. the mean condition of
    a set of neighbours): one more token, appended last. Without it the token is absent, not
    zeroed, so the computation is exactly that of a model built without context. Its layers are
    created after all others, so both models draw the same initial weights from one seed.
    """

    def __init__(
        self,
        prompt_shape: tuple[int, ...],
        cond_dim: int,
        *,
        depth: int = 4,
        width: int = 256,
        heads: int = 8,
        dropout: float = 0.0,
        context: bool = False,
    ):
        super().__init__()
        self.prompt_shape = tuple(int(n) for n in prompt_shape)
        self.dim = self.prompt_shape[-1]
        self.n_tokens = math.prod(self.prompt_shape[:-1])
        self.width = width
        self.prompt_in = nn.Linear(self.dim, width)
        self.cond_in = nn.Linear(cond_dim, width)
        self.time_mlp = nn.Sequential(
            nn.Linear(2 * (width // 2), width), nn.SiLU(), nn.Linear(width, width)
        )
        self.pos = nn.Parameter(torch.randn(self.n_tokens + 2, width) * 0.02)
        # separate layers, not nn.TransformerEncoder, which deep-copies one initialisation
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                heads,
                4 * width,
                dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.context_in = nn.Linear(cond_dim, width) if context else None
        self.context_pos = nn.Parameter(torch.randn(width) * 0.02) if context else None

    def forward(self, x: Tensor, u: Tensor, cond: Tensor, context: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        dtype = self.prompt_in.weight.dtype
        tokens = self.prompt_in(x.reshape(b, self.n_tokens, self.dim).to(dtype))
        c = self.cond_in(cond.to(dtype))[:, None]
        t = self.time_mlp(timestep_embedding(u, self.width).to(dtype))[:, None]
        h = torch.cat([c, t, tokens], dim=1) + self.pos
        if context is not None:
            if self.context_in is None:
                raise ValueError("context was given to a PromptDenoiser built with context=False.")
            extra = self.context_in(context.to(dtype)) + self.context_pos
            h = torch.cat([h, extra[:, None]], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, 2 : 2 + self.n_tokens])).reshape(b, *self.prompt_shape)
