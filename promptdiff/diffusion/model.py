"""PromptDiffusion: schedule + denoiser + target standardisation + EMA behind one nn.Module."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptdiff.diffusion.centering import ClassMeans
from promptdiff.diffusion.denoiser import PromptDenoiser
from promptdiff.diffusion.ema import ema_update, warmup_decay
from promptdiff.diffusion.samplers import get_sampler
from promptdiff.diffusion.schedules import (
    PREDICTIONS,
    make_schedule,
    prediction_target,
    time_grid,
    x0_from_prediction,
)
from promptdiff.diffusion.standardize import RunningStandardizer


def check_options(
    formulation: str, prediction: str, width: int, heads: int, key: Callable[[str], str] = str.lower
) -> None:
    """Refuse a formulation/prediction pair or a width/heads split the model cannot use; `key`
    names an option ("PREDICTION") in the message, e.g. as the caller's config key."""
    if formulation == "flow" and prediction == "eps":
        raise ValueError(
            f"{key('PREDICTION')} 'eps' does not work with {key('FORMULATION')} 'flow' (x0 is "
            f"undefined at pure noise); use {key('PREDICTION').rsplit('.', 1)[-1]} x0 or v."
        )
    if width % heads:
        raise ValueError(f"{key('WIDTH')} {width} must be divisible by {key('HEADS')} {heads}.")


def _randn(shape, generator: torch.Generator | None, device, dtype) -> Tensor:
    """Standard normal drawn on the generator's device, so a CPU generator gives the same
    numbers whatever device the result lives on."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


class PromptDiffusion(nn.Module):
    """Diffusion over per-sample prompt tensors [*S] conditioned on a vector [C].

    The network works in standardised space (see :class:`RunningStandardizer`); inputs to
    ``training_loss`` and outputs of ``sample`` are raw. The loss is the mean squared error on the
    predicted quantity (x0, eps or v, standardised space), averaged over batch and elements.
    Schedule and sampler arithmetic is float32 (float64 for the schedule tables) also under
    autocast; only the denoiser runs in the autocast dtype. Call ``update_ema()`` after each
    optimiser step. Built with ``context=True``, ``training_loss`` and ``sample`` take an optional
    second condition ``context`` [B, C] (see :class:`PromptDenoiser`); None gives exactly the
    output without context.
    """

    def __init__(
        self,
        prompt_shape: tuple[int, ...],
        cond_dim: int,
        *,
        timesteps: int = 100,
        schedule: str = "linear",
        formulation: str = "vp",
        prediction: str = "x0",
        depth: int = 4,
        width: int = 256,
        heads: int = 8,
        dropout: float = 0.0,
        ema_decay: float = 0.999,
        use_ema: bool = True,
        class_centres: int = 0,
        context: bool = False,
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}.")
        check_options(formulation, prediction, width, heads)
        if len(prompt_shape) == 0 or min(prompt_shape) < 1:
            raise ValueError(f"prompt_shape must be a non-empty shape [*S], got {prompt_shape}.")
        self.schedule = make_schedule(formulation, schedule, timesteps)
        self.prediction = prediction
        self.prompt_shape = tuple(int(n) for n in prompt_shape)
        self.cond_dim = int(cond_dim)
        self.denoiser = PromptDenoiser(
            self.prompt_shape,
            cond_dim,
            depth=depth,
            width=width,
            heads=heads,
            dropout=dropout,
            context=context,
        )
        self.ema_decay = ema_decay
        self.ema = copy.deepcopy(self.denoiser).requires_grad_(False).eval() if use_ema else None
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.stats = RunningStandardizer(self.prompt_shape)
        # class_centres = K > 0: a per-class running mean of the raw targets (see centering.py)
        self.centres = ClassMeans(class_centres, self.prompt_shape) if class_centres else None
        # the per-sample over-fitting step size once calibrated (0: not yet), saved with the rest
        self.register_buffer("overfit_lr", torch.zeros((), dtype=torch.float64))

    def train(self, mode: bool = True) -> PromptDiffusion:
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()  # EMA weights are only ever used for inference
        return self

    def _check(self, cond: Tensor, x: Tensor | None = None, name: str = "x0") -> None:
        if cond.dim() != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"cond must have shape [B, {self.cond_dim}], got {list(cond.shape)}.")
        if x is not None and tuple(x.shape) != (cond.shape[0], *self.prompt_shape):
            raise ValueError(
                f"{name} must have shape [B, {', '.join(map(str, self.prompt_shape))}] with B = "
                f"{cond.shape[0]} (cond's batch), got {list(x.shape)}."
            )

    def _check_context(self, cond: Tensor, context: Tensor | None) -> None:
        if context is not None and context.shape != cond.shape:
            raise ValueError(
                f"context must have cond's shape {list(cond.shape)}, got {list(context.shape)}."
            )

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """float32 (alpha_t, sigma_t) shaped [B, 1, ...] to broadcast over [B, *S]."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        view = (-1,) + (1,) * len(self.prompt_shape)
        return alpha.float().view(view), sigma.float().view(view)

    def _predict(
        self, net: nn.Module, x_t: Tensor, t: Tensor, cond: Tensor, context: Tensor | None = None
    ):
        """(network output, x0 estimate), both float32 in standardised space."""
        alpha, sigma = self._alpha_sigma(t)
        pred = net(x_t, self.schedule.model_time(t).float(), cond, context).float()
        x0 = x0_from_prediction(self.schedule, self.prediction, pred, x_t, alpha, sigma)
        return pred, x0

    def training_loss(
        self,
        x0: Tensor,
        cond: Tensor,
        generator: torch.Generator | None = None,
        *,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(diffusion loss, one-step x0 estimate [B, *S] in raw space, differentiable).

        In training mode the batch is first folded into the standardisation stats. With
        prediction='eps' the x0 estimate is (x_t - sigma eps_hat) / alpha and gets very noisy at
        the noisiest steps; weight any loss through it accordingly.
        """
        self._check(cond, x0)
        self._check_context(cond, context)
        x0 = x0.float()
        if self.training:
            self.stats.update(x0)
        z0 = self.stats.normalize(x0)
        t = self.schedule.sample_t(x0.shape[0], generator, x0.device)
        eps = _randn(z0.shape, generator, z0.device, z0.dtype)
        alpha, sigma = self._alpha_sigma(t)
        x_t = alpha * z0 + sigma * eps
        pred, x0_hat = self._predict(self.denoiser, x_t, t, cond, context)
        target = prediction_target(self.schedule, self.prediction, z0, eps, alpha, sigma)
        return F.mse_loss(pred, target), self.stats.denormalize(x0_hat)

    forward = training_loss

    def start_estimate(
        self,
        cond: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """The training denoiser's x0 estimate [B, *S] (raw space, differentiable) from noise at
        the first point of every sampling grid, the noisiest time: exactly what one sampling step
        returns at test time (with the same weights and noise), so a loss on it trains the
        one-step sampler itself."""
        self._check(cond)
        self._check_context(cond, context)
        shape = (cond.shape[0], *self.prompt_shape)
        if noise is None:
            noise = _randn(shape, generator, cond.device, torch.float32)
        self._check(cond, noise, "noise")
        start = time_grid(self.schedule, 1).t[0].item()
        t = torch.full((cond.shape[0],), start, dtype=torch.float64, device=cond.device)
        x0 = self._predict(self.denoiser, noise.float(), t, cond, context)[1]
        return self.stats.denormalize(x0)

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        steps: int = 5,
        sampler: str = "ddim",
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        use_ema: bool | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Raw-space prompts [B, *S] from ``steps`` deterministic ODE steps.

        Starts from ``noise`` or N(0, I) drawn with ``generator`` (float32 at least, on cond's
        device). Uses the EMA weights when ``use_ema`` (default: when EMA is enabled).
        """
        self._check(cond)
        self._check_context(cond, context)
        sampler_fn = get_sampler(sampler)
        grid = time_grid(self.schedule, steps)
        if use_ema is None:
            use_ema = self.ema is not None
        if use_ema and self.ema is None:
            raise ValueError("use_ema must be False or None when the model has use_ema=False.")
        net = self.ema if use_ema else self.denoiser
        dtype = torch.promote_types(cond.dtype, torch.float32)
        shape = (cond.shape[0], *self.prompt_shape)
        if noise is None:
            noise = _randn(shape, generator, cond.device, dtype)
        self._check(cond, noise, "noise")

        def model_fn(x: Tensor, t: float, c: Tensor) -> Tensor:
            tt = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
            return self._predict(net, x, tt, c, context)[1].to(x.dtype)

        was_training = net.training
        net.eval()
        try:
            x0 = sampler_fn(model_fn, noise.to(cond.device, dtype), grid, cond)
        finally:
            net.train(was_training)
        return self.stats.denormalize(x0)

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the EMA weights towards the current weights (no-op when EMA is disabled)."""
        if self.ema is None:
            return
        ema_update(self.ema, self.denoiser, warmup_decay(self.ema_decay, int(self.ema_updates)))
        self.ema_updates += 1
