"""Label-free per-sample over-fitting (TRAINER.PD.OVERFIT_TARGET entropy), as test-time prompt
tuning does it: each image's prompt copy minimises the entropy of its mean class probability over
the most confident of V augmented views. No label enters, so the same target exists for a test
image (INFERENCE tune runs the tuning there; the denoiser learns to amortise it).

The views are seeded random resized crops and horizontal flips of the already-normalised batch
(one affine resampling, torch ops only); view 0 is the image itself. The confident views are
chosen once per batch, by their entropy under the base prompt, so every over-fitting step sees
the same views and the loss is a fixed, per-image separable function of the prompt copies.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from promptdiff.trainers.overfit_classes import encodes_classes, logits_for_classes

# area fraction and aspect-ratio range of a crop (torchvision's RandomResizedCrop ratio; a
# smaller area floor than its 0.08, since a crop must still show the object of a small image)
CROP_AREA = (0.3, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def augment_views(image: Tensor, views: int, generator: torch.Generator) -> Tensor:
    """[B * views, C, H, W]: image i's views at rows i * views ... (view 0 is image i itself),
    drawn from `generator` (a CPU generator: the same views on any device)."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}.")
    b = image.shape[0]
    n = b * views
    area = torch.empty(n).uniform_(*CROP_AREA, generator=generator)
    log_ratio = torch.empty(n).uniform_(*map(math.log, CROP_RATIO), generator=generator)
    ratio = log_ratio.exp()
    # half-extents as fractions of the image (affine_grid's [-1, 1] coordinates)
    sx = (area * ratio).sqrt().clamp(max=1.0)
    sy = (area / ratio).sqrt().clamp(max=1.0)
    tx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
    flip = torch.rand(n, generator=generator) < 0.5
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -sx, sx)
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    x = image.repeat_interleave(views, 0)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out = out.view(b, views, *image.shape[1:])
    out[:, 0] = image
    return out.flatten(0, 1)


def entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of softmax(logits) over the last dim."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def marginal_entropy(logits: Tensor) -> Tensor:
    """[B]: entropy of the mean class probability over each row's views, logits [B, k, C]."""
    logp = logits.float().log_softmax(-1).logsumexp(1) - math.log(logits.shape[1])
    return -(logp.exp() * logp).sum(-1)


def confident_views(logits: Tensor, keep: int) -> Tensor:
    """[B, keep]: indices of each row's `keep` lowest-entropy views, logits [B, V, C]."""
    return entropy(logits).topk(keep, dim=1, largest=False).indices


def entropy_loss(
    model,
    image: Tensor,
    base: Tensor,
    views: int,
    keep: int,
    num_classes: int,
    generator: torch.Generator,
) -> Callable[[Tensor], tuple[Tensor, None]]:
    """delta [B, *S] -> (marginal entropy [B] of each image's `keep` most confident views under
    base + delta, None), for overfit_per_sample(has_aux=True). `num_classes` > 0 (below the class
    count, models that encode chosen classes) restricts the softmax to the classes most probable
    under the base prompt, chosen once per batch."""
    b = image.shape[0]
    with torch.no_grad():
        every = augment_views(image, views, generator)
        cond_every = model.condition(every)
        logits = model.logits_for(every, cond_every, base.repeat_interleave(views, 0)).float()
        logits = logits.view(b, views, -1)
        chosen = confident_views(logits, keep)
        rows = (torch.arange(b, device=chosen.device)[:, None] * views + chosen).flatten()
        rows = rows.to(every.device)
        sel, sel_cond = every[rows], cond_every[rows]
        classes = None
        total = logits.shape[-1]
        if 0 < num_classes < total and encodes_classes(model):
            picked = logits.gather(1, chosen.to(logits.device)[..., None].expand(-1, -1, total))
            probs = picked.softmax(-1).mean(1)
            classes = probs.topk(num_classes, dim=1).indices.repeat_interleave(keep, 0)

    def loss(delta: Tensor) -> tuple[Tensor, None]:
        prompts = (base + delta).repeat_interleave(keep, 0)
        if classes is None:
            out = model.logits_for(sel, sel_cond, prompts)
        else:
            out = logits_for_classes(model, sel, sel_cond, prompts, classes)
        return marginal_entropy(out.float().view(b, keep, -1)), None

    return loss
