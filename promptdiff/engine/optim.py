"""Optimisers and learning-rate schedules from torch.optim, configured by OPTIM.* as in Dassl."""

from __future__ import annotations

import math

import torch
from torch.optim import lr_scheduler as S

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "radam")
SCHEDULERS = ("single_step", "multi_step", "cosine")


def build_optimizer(model_or_params, optim_cfg, param_groups=None) -> torch.optim.Optimizer:
    """Build OPTIM.NAME over a module's parameters, an iterable of parameters or param groups."""
    name = optim_cfg.NAME
    if name not in OPTIMIZERS:
        raise ValueError(f"OPTIM.NAME {name!r} is unknown; use one of {', '.join(OPTIMIZERS)}.")
    if param_groups is not None:
        params = param_groups
    elif isinstance(model_or_params, torch.nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = list(model_or_params)
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    for key, value in (("OPTIM.LR", lr), ("OPTIM.WEIGHT_DECAY", wd)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{key} is {value!r}; use a finite value of at least 0.")
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=optim_cfg.MOMENTUM,
            weight_decay=wd,
            dampening=optim_cfg.SGD_DAMPNING,
            nesterov=optim_cfg.SGD_NESTEROV,
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=lr,
            momentum=optim_cfg.MOMENTUM,
            weight_decay=wd,
            alpha=optim_cfg.RMSPROP_ALPHA,
        )
    return torch.optim.RAdam(params, lr=lr, weight_decay=wd, betas=betas)


def build_lr_scheduler(optimizer, optim_cfg) -> S.LRScheduler:
    """OPTIM.LR_SCHEDULER stepped once per epoch, behind an optional constant or linear warmup.

    With WARMUP_RECOUNT (Dassl's default) the main schedule starts from its first value when the
    warmup ends, which is what every CoOp-family config relies on.
    """
    name = optim_cfg.LR_SCHEDULER
    if name not in SCHEDULERS:
        raise ValueError(
            f"OPTIM.LR_SCHEDULER {name!r} is unknown; use one of {', '.join(SCHEDULERS)}."
        )
    if name == "cosine":
        main = S.CosineAnnealingLR(optimizer, T_max=float(optim_cfg.MAX_EPOCH))
    elif name == "single_step":
        stepsize = optim_cfg.STEPSIZE
        stepsize = stepsize[-1] if isinstance(stepsize, (list, tuple)) else stepsize
        if stepsize <= 0:
            stepsize = optim_cfg.MAX_EPOCH
        main = S.StepLR(optimizer, step_size=stepsize, gamma=optim_cfg.GAMMA)
    else:
        main = S.MultiStepLR(optimizer, milestones=list(optim_cfg.STEPSIZE), gamma=optim_cfg.GAMMA)

    warmup = optim_cfg.WARMUP_EPOCH
    if warmup <= 0:
        return main
    if optim_cfg.WARMUP_TYPE not in ("constant", "linear"):
        raise ValueError(
            f"OPTIM.WARMUP_TYPE {optim_cfg.WARMUP_TYPE!r} is unknown; use constant or linear."
        )
    base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    if optim_cfg.WARMUP_TYPE == "constant":
        factors = [
            (lambda e, f=optim_cfg.WARMUP_CONS_LR / base: f)
            for base in base_lrs  # noqa: B023
        ]
    else:
        min_lr = optim_cfg.WARMUP_MIN_LR
        factors = [
            (lambda e, f=min_lr / base: f if e == 0 else e / warmup)  # noqa: B023
            for base in base_lrs
        ]
    if not optim_cfg.WARMUP_RECOUNT:
        raise ValueError(
            "OPTIM.WARMUP_RECOUNT False is not supported; set it to True (every CoOp-family config does)."
        )
    warm = S.LambdaLR(optimizer, lr_lambda=factors)
    return S.SequentialLR(optimizer, schedulers=[warm, main], milestones=[warmup])
