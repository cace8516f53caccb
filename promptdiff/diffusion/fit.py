"""How well predicted targets match true ones: R^2 and per-sample cosine, summed batch by batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fit_sums(pred: Tensor, target: Tensor, mean: Tensor) -> Tensor:
    """float64 [5]: squared error, squared deviation of target from `mean`, the sums over samples
    of cosine(pred, target) and of cosine(pred - mean, target - mean), and the sample count.

    Sums add over batches; :func:`fit_figures` turns them into figures.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} must match.")
    pred, target = pred.double().flatten(1), target.double().flatten(1)
    mean = mean.double().reshape(1, -1).expand_as(target)
    return torch.stack(
        [
            (pred - target).square().sum(),
            (target - mean).square().sum(),
            F.cosine_similarity(pred, target, dim=1).sum(),
            F.cosine_similarity(pred - mean, target - mean, dim=1).sum(),
            torch.tensor(float(target.shape[0]), dtype=torch.float64),
        ]
    ).cpu()


def fit_figures(sums: Tensor) -> dict[str, float]:
    """{r2: 1 - SSE / SST (1: perfect, 0: as good as predicting the mean), cosine, cosine_centred
    (both means over samples)} from :func:`fit_sums`; NaN where undefined."""
    sse, sst, cos, cos_c, n = sums.tolist()
    return {
        "r2": 1 - sse / sst if sst > 0 else float("nan"),
        "cosine": cos / n if n else float("nan"),
        "cosine_centred": cos_c / n if n else float("nan"),
    }
