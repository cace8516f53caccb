"""Set context: a second condition summarising each sample's nearest neighbours."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nearest_rows(cond: Tensor, k: int, pool: Tensor | None = None) -> Tensor | None:
    """Indices [B, min(k, n)] of each row's k nearest rows by cosine similarity, ascending, or
    None without neighbours.

    Neighbours are the other rows of ``cond`` (so a batch of one has none), or, given ``pool``
    [P, C], the rows of the pool. k is capped at the number of candidates n. Ties go to the lower
    index.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0 (got {k}).")
    keys = cond if pool is None else pool
    n = keys.shape[0] - (1 if pool is None else 0)
    if k == 0 or n <= 0:
        return None
    sim = F.normalize(cond.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T
    if pool is None:
        sim.fill_diagonal_(-torch.inf)
    # stable descending sort: equal similarities keep index order
    idx = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, : min(k, n)]
    return torch.sort(idx, dim=1).values


def neighbour_context(cond: Tensor, k: int, pool: Tensor | None = None) -> Tensor | None:
    """Mean of each row's k nearest rows (nearest_rows) [B, C], or None without neighbours; k >=
    B - 1 averages all other rows. The chosen rows are averaged in index order, so the result
    does not depend on how topk orders them."""
    idx = nearest_rows(cond, k, pool)
    if idx is None:
        return None
    return (cond if pool is None else pool)[idx].mean(dim=1)
