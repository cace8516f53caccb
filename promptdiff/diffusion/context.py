"""Set context: a second condition summarising each sample's nearest neighbours."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def neighbour_context(cond: Tensor, k: int, pool: Tensor | None = None) -> Tensor | None:
    """Mean of each row's k nearest rows by cosine similarity [B, C], or None without neighbours.

    Neighbours are the other rows of ``cond`` (so a batch of one has none), or, given ``pool``
    [P, C], the rows of the pool. k is capped at the number of candidates, so k >= B - 1 averages
    all other rows. Ties go to the lower index; the chosen rows are averaged in index order, so the
    result does not depend on how topk orders them.
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
    idx = torch.sort(idx, dim=1).values
    return keys[idx].mean(dim=1)
