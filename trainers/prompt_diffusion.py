"""Prompt diffusion (arXiv 2410.20164) as a mixin that turns a baseline trainer into its *Diff.

Stage 1 (epochs [0, STAGE1_EPOCHS)) trains the baseline exactly as the baseline trainer does.
Stage 2 (the remaining epochs) over-fits a copy of the prompt to every training image, then
trains a conditional diffusion model in prompt space to generate that over-fitted prompt from
noise given the prompt-free image feature. Inference samples each test image's prompt with
TRAINER.PD.STEPS deterministic ODE steps from seeded noise.

The baseline's model provides the three hooks of trainers.prompted.DiffusionHooks and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

from promptdiff.backbone.encoders import embed_dim
from promptdiff.config_keys import declare_keys
from promptdiff.diffusion import (
    FORMULATIONS,
    OPTIMIZERS,
    PREDICTIONS,
    SAMPLERS,
    SCHEDULES,
    TARGET_MODES,
    OverfitResult,
    PromptDiffusion,
    overfit_per_sample,
    prompt_to_target,
    target_to_prompt,
)
from promptdiff.engine import count_num_param, distributed
from promptdiff.host import log
from promptdiff.trainers.base import accuracy
from promptdiff.trainers.overfit_classes import overfit_loss_classes
from promptdiff.trainers.prompted import DiffusionHooks

INFERENCE_MODES = ("sample", "base", "mean")

declare_keys(
    "TRAINER.PD",
    # schedule: -1 = the first 80 % of OPTIM.MAX_EPOCH train the baseline, the rest is stage 2
    STAGE1_EPOCHS=-1,
    # per-sample overfitting
    OVERFIT_STEPS=10,
    # step size, or auto: calibrated on the first stage-2 batch relative to the prompt's rms
    # (adam moves each element by about lr per step, so a fixed lr means nothing across prompts)
    OVERFIT_LR="auto",
    OVERFIT_OPTIM="adam",
    # what is diffused and how
    TARGET="residual",  # residual (p* - p) | absolute (p*)
    FORMULATION="vp",  # vp (DDPM) | flow (rectified flow)
    SCHEDULE="linear",  # linear | cosine (vp only)
    TIMESTEPS=100,
    PREDICTION="x0",  # x0 | eps | v
    SAMPLER="ddim",  # ddim | euler | heun | dpmpp_2m
    STEPS=5,
    NUM_SAMPLES=1,  # M noise draws whose logits are averaged at test time
    NOISE_SEED=0,
    # sample (generated prompts) | base (the baseline's prompt alone) | mean (base + mean target)
    INFERENCE="sample",
    # denoiser
    DEPTH=4,
    WIDTH=256,
    HEADS=8,
    DROPOUT=0.1,
    EMA=0.999,  # 0 disables the EMA copy
    # stage-2 optimisation
    LR=1e-3,
    WEIGHT_DECAY=0.0,
    DIFF_WEIGHT=10.0,
    CE_WEIGHT=1.0,  # cross-entropy through the one-step generated prompt; 0 disables it
    UPDATE_BASE=False,  # keep training the baseline's prompt in stage 2
    BATCH_SIZE=0,  # stage-2 training batch size; 0 = DATALOADER.TRAIN_X.BATCH_SIZE
    # VPTDiff: diffuse only the first N prompt layers (0 = all)
    DIFFUSE_LAYERS=0,
    # classes in the per-sample over-fitting loss: the true class + the hardest others under the
    # base prompt; 0, or >= the class count, = all classes (exact)
    OVERFIT_CLASSES=64,
)
# OVERFIT_LR auto tries these multiples of the prompt's rms, smallest first, and keeps the first
# that over-fits: per-sample accuracy >= CALIBRATION_ACC and a loss CALIBRATION_DROP lower
OVERFIT_LR_FACTORS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
CALIBRATION_ACC = 95.0
CALIBRATION_DROP = 0.5
# below these, a stage-2 epoch warns that the targets are barely over-fitted
WARN_ACC = 90.0
WARN_DROP = 0.10


class OverfitStats:
    """What per-sample over-fitting did over one epoch: the logged figure and the weak-fit warning."""

    def __init__(self):
        self.n = 0
        self.before = self.after = self.correct = self.residual_sq = self.prompt_sq = 0.0

    def add(self, fit, acc: float, base: torch.Tensor) -> None:
        b = fit.targets.shape[0]
        self.n += b
        self.before += fit.loss_before.float().sum().item()
        self.after += fit.loss_after.float().sum().item()
        self.correct += acc * b / 100
        self.residual_sq += fit.targets.float().square().mean().item() * b
        self.prompt_sq += base.float().square().mean().item() * b

    def report(self, epoch: int, max_epoch: int) -> None:
        before, after = self.before / self.n, self.after / self.n
        drop = 1 - after / max(before, 1e-12)
        acc = 100 * self.correct / self.n
        ratio = (self.residual_sq / max(self.prompt_sq, 1e-24)) ** 0.5
        log(
            f"Over-fitting in epoch {epoch}/{max_epoch}: per-sample loss {before:.4f} -> "
            f"{after:.4f} ({drop:.1%} lower), per-sample accuracy {acc:.1f}%, "
            f"residual rms {ratio:.3f} x prompt rms"
        )
        if drop < WARN_DROP or acc < WARN_ACC:
            log(
                f"WARNING: stage-2 over-fitting is weak (loss {drop:.1%} lower, per-sample "
                f"accuracy {acc:.1f}%; want >= {WARN_DROP:.0%} and >= {WARN_ACC:g}%): the "
                "diffusion model learns little beyond the base prompt. Raise "
                "TRAINER.PD.OVERFIT_STEPS or TRAINER.PD.OVERFIT_LR (or set OVERFIT_LR auto)."
            )


class PromptDiffusionMixin:
    """Mix in before a ClipPromptTrainer subclass: `class CoOpDiff(PromptDiffusionMixin, CoOp)`."""

    model: DiffusionHooks

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        pd = cfg.TRAINER.PD
        # the diffusion core's own name lists, so a new sampler or schedule needs no edit here
        choices = {
            "TARGET": TARGET_MODES,
            "OVERFIT_OPTIM": OPTIMIZERS,
            "FORMULATION": FORMULATIONS,
            "SCHEDULE": SCHEDULES,
            "PREDICTION": PREDICTIONS,
            "SAMPLER": tuple(SAMPLERS),
        }
        for key, allowed in choices.items():
            if pd[key] not in allowed:
                raise ValueError(
                    f"TRAINER.PD.{key} {pd[key]!r} is unknown; use one of {', '.join(allowed)}."
                )
        if pd.INFERENCE not in INFERENCE_MODES:
            raise ValueError(
                f"TRAINER.PD.INFERENCE {pd.INFERENCE!r} is unknown; use one of "
                f"{', '.join(INFERENCE_MODES)}."
            )
        if str(pd.OVERFIT_LR) != "auto":
            try:
                ok = float(pd.OVERFIT_LR) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"TRAINER.PD.OVERFIT_LR {pd.OVERFIT_LR!r} must be a positive number or auto."
                )
        if pd.FORMULATION == "flow" and pd.PREDICTION == "eps":
            raise ValueError(
                "TRAINER.PD.PREDICTION 'eps' does not work with TRAINER.PD.FORMULATION 'flow' "
                "(x0 is undefined at pure noise); use PREDICTION x0 or v."
            )
        minimum = {
            "BATCH_SIZE": 0,
            "STEPS": 1,
            "NUM_SAMPLES": 1,
            "OVERFIT_STEPS": 0,
            "TIMESTEPS": 1,
            "DEPTH": 1,
            "WIDTH": 1,
            "HEADS": 1,
            "DIFFUSE_LAYERS": 0,
            "OVERFIT_CLASSES": 0,
            "WEIGHT_DECAY": 0,
            "DIFF_WEIGHT": 0,
            "CE_WEIGHT": 0,
        }
        for key, low in minimum.items():
            if pd[key] < low:
                raise ValueError(f"TRAINER.PD.{key} must be >= {low} (got {pd[key]}).")
        if not pd.LR > 0:
            raise ValueError(f"TRAINER.PD.LR must be > 0 (got {pd.LR}).")
        for key in ("EMA", "DROPOUT"):
            if not 0 <= pd[key] < 1:
                raise ValueError(f"TRAINER.PD.{key} must lie in [0, 1) (got {pd[key]}).")
        if pd.WIDTH % pd.HEADS:
            raise ValueError(
                f"TRAINER.PD.WIDTH {pd.WIDTH} must be divisible by TRAINER.PD.HEADS {pd.HEADS}."
            )
        if pd.FORMULATION == "vp" and pd.STEPS > pd.TIMESTEPS:
            raise ValueError(
                f"TRAINER.PD.STEPS {pd.STEPS} exceeds TRAINER.PD.TIMESTEPS {pd.TIMESTEPS}; a vp "
                f"schedule has at most TIMESTEPS sampling steps."
            )
        s1 = self.stage1_epochs(cfg)
        if not 0 <= s1 <= cfg.OPTIM.MAX_EPOCH:
            raise ValueError(
                f"TRAINER.PD.STAGE1_EPOCHS {pd.STAGE1_EPOCHS} must lie in 0..OPTIM.MAX_EPOCH "
                f"({cfg.OPTIM.MAX_EPOCH}), or be -1 for the default split."
            )
        if pd.OVERFIT_STEPS == 0 and s1 < cfg.OPTIM.MAX_EPOCH:
            raise ValueError(
                "TRAINER.PD.OVERFIT_STEPS 0 leaves stage 2 nothing to learn (every over-fitted "
                "prompt equals the base prompt); use >= 1, or set TRAINER.PD.STAGE1_EPOCHS to "
                "OPTIM.MAX_EPOCH to train the baseline only."
            )

    @staticmethod
    def stage1_epochs(cfg) -> int:
        """STAGE1_EPOCHS, where -1 means 0 with MODEL.INIT_WEIGHTS and 80 % of MAX_EPOCH without."""
        s1 = cfg.TRAINER.PD.STAGE1_EPOCHS
        if s1 >= 0:
            return s1
        return 0 if cfg.MODEL.INIT_WEIGHTS else int(round(0.8 * cfg.OPTIM.MAX_EPOCH))

    @property
    def in_stage2(self) -> bool:
        return self.epoch >= self.stage1_epochs(self.cfg)

    def baseline_optim_cfg(self):
        optim = self.cfg.OPTIM.clone()
        optim.defrost()
        optim.MAX_EPOCH = max(self.stage1_epochs(self.cfg), 1)
        return optim

    def build_model(self) -> None:
        super().build_model()
        pd = self.cfg.TRAINER.PD
        with torch.no_grad():
            probe = self.model.base_prompt(torch.zeros(1, embed_dim(self.model.clip)))
        self.diffusion = PromptDiffusion(
            tuple(probe.shape[1:]),
            embed_dim(self.model.clip),
            timesteps=pd.TIMESTEPS,
            schedule=pd.SCHEDULE,
            formulation=pd.FORMULATION,
            prediction=pd.PREDICTION,
            depth=pd.DEPTH,
            width=pd.WIDTH,
            heads=pd.HEADS,
            dropout=pd.DROPOUT,
            ema_decay=pd.EMA,
            use_ema=pd.EMA > 0,
        ).to(self.device)
        n_params = count_num_param(self.diffusion.denoiser)
        log(
            f"Prompt diffusion over {tuple(probe.shape[1:])} prompts; denoiser: {n_params:,} params"
        )
        self.diff_optim = torch.optim.AdamW(
            self.diffusion.denoiser.parameters(), lr=pd.LR, weight_decay=pd.WEIGHT_DECAY
        )
        stage2 = max(self.cfg.OPTIM.MAX_EPOCH - self.stage1_epochs(self.cfg), 1)
        self.diff_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.diff_optim, stage2)
        self.register_model("denoiser", self.diffusion, self.diff_optim, self.diff_sched)
        self.noise_generator = torch.Generator(device="cpu").manual_seed(pd.NOISE_SEED)
        self.overfit_stats = OverfitStats()

    # ---- training -----------------------------------------------------------------------------
    def before_epoch(self) -> None:
        super().before_epoch()
        self.overfit_stats = OverfitStats()
        if self.epoch == self.stage1_epochs(self.cfg) and self.epoch < self.max_epoch:
            log(f"Stage 2 (overfit, then diffuse) from epoch {self.epoch + 1}")
        if self.in_stage2:
            self.use_stage2_batch_size()

    def use_stage2_batch_size(self) -> None:
        """TRAINER.PD.BATCH_SIZE > 0 re-batches the training data for stage 2 (e.g. CoCoOp's
        batch 1 would overfit and train the denoiser one image per step)."""
        size = self.cfg.TRAINER.PD.BATCH_SIZE
        loader = self.train_loader_x
        if size <= 0:
            return
        data = loader.dataset
        sampler = RandomSampler(data)
        if distributed.is_distributed():
            size = distributed.per_rank_batch_size(size, "TRAINER.PD.BATCH_SIZE")
            sampler = distributed.shard_sampler(data, True, self.cfg.SEED)
        if loader.batch_size == size:
            return
        self.train_loader_x = DataLoader(
            data,
            batch_size=size,
            sampler=sampler,
            num_workers=loader.num_workers,
            drop_last=len(sampler) >= size,
            pin_memory=loader.pin_memory,
        )
        log(f"Stage 2 batch size: {size}")

    def forward_backward(self, batch) -> dict:
        if not self.in_stage2:
            return super().forward_backward(batch)
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            cond, base = self.condition_and_base(image)
            fit, fit_acc = self.overfit(image, label, cond, base.detach())
            target = self.diffusion_target(fit, base)
            diff_loss, x0_hat = self.diffusion.training_loss(target, cond)
            loss, ce_terms = self.stage2_loss(image, label, cond, base, diff_loss, x0_hat)
        self.check_losses(overfit=fit.targets, diff=diff_loss, ce=ce_terms.get("ce"))
        self.stage2_step(loss)
        self.overfit_stats.add(fit, fit_acc, base.detach())
        return {
            "loss": loss.item(),
            "diff": diff_loss.item(),
            **ce_terms,
            "of_before": fit.mean_before,
            "of_after": fit.mean_after,
            "of_acc": fit_acc,
        }

    def condition_and_base(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt-free image feature [B, E], base prompt [B, *S]); the base prompt carries
        gradients only with TRAINER.PD.UPDATE_BASE."""
        with torch.no_grad():
            cond = self.model.condition(image)
        base = self.model.base_prompt(cond)
        if not self.cfg.TRAINER.PD.UPDATE_BASE:
            base = base.detach()
        return cond, base

    def diffusion_target(self, fit: OverfitResult, base: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to generate: the over-fitted prompts in TRAINER.PD.TARGET form."""
        base = base.detach()
        return prompt_to_target(base.float() + fit.targets, base, self.cfg.TRAINER.PD.TARGET)

    def stage2_loss(self, image, label, cond, base, diff_loss, x0_hat) -> tuple[torch.Tensor, dict]:
        """(DIFF_WEIGHT x diffusion loss + CE_WEIGHT x cross-entropy of the prompts from the
        denoiser's one-step estimate, the cross-entropy and accuracy to log)."""
        pd = self.cfg.TRAINER.PD
        loss = pd.DIFF_WEIGHT * diff_loss
        if pd.CE_WEIGHT <= 0:
            return loss, {}
        prompts = target_to_prompt(x0_hat, base, pd.TARGET)
        logits = self.model.logits_for(image, cond, prompts).float()
        ce = F.cross_entropy(logits, label)
        return loss + pd.CE_WEIGHT * ce, {"ce": ce.item(), "acc": accuracy(logits, label)}

    def stage2_step(self, loss: torch.Tensor) -> None:
        """Step the denoiser (and the baseline's prompt with UPDATE_BASE), then its EMA; the
        denoiser's learning rate follows its schedule once per epoch."""
        update_base = self.cfg.TRAINER.PD.UPDATE_BASE
        self.model_backward_and_update(
            loss, ["denoiser", "prompt_learner"] if update_base else ["denoiser"]
        )
        if not update_base:
            # the CE through the generated prompt also reaches baseline tensors that stage 2 never
            # steps (MaPLe's couplings, VPT's non-diffused layers); drop those gradients
            self.model.prompt_learner.zero_grad(set_to_none=True)
        self.diffusion.update_ema()
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr("denoiser")

    # ---- per-sample over-fitting ------------------------------------------------------------------
    def overfit(self, image, label, cond, base) -> tuple[OverfitResult, float]:
        """Over-fit one copy of the prompt to each image: (OverfitResult of residuals, accuracy %
        of the over-fitted prompts on their own images)."""
        pd = self.cfg.TRAINER.PD
        # TRAINER.PD.OVERFIT_CLASSES: all classes, or the true class + the hardest under `base`
        logits_fn, of_label = overfit_loss_classes(
            self.model, image, cond, base, label, self.num_classes, pd.OVERFIT_CLASSES
        )

        def per_sample_ce(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = logits_fn(base + delta).float()
            return F.cross_entropy(logits, of_label, reduction="none"), logits

        def run(lr: float) -> tuple[OverfitResult, float]:
            zero = torch.zeros_like(base[0], dtype=torch.float32)
            fit = overfit_per_sample(
                per_sample_ce,
                zero,
                image.shape[0],
                pd.OVERFIT_STEPS,
                lr,
                pd.OVERFIT_OPTIM,
                has_aux=True,
            )
            return fit, accuracy(fit.aux_after, of_label)

        return run(self.overfit_lr(run, base))

    def overfit_lr(self, run, base: torch.Tensor) -> float:
        """TRAINER.PD.OVERFIT_LR, or with `auto` the step size calibrated on the first stage-2
        batch (kept in the denoiser's checkpoint, so a resumed run keeps it)."""
        value = str(self.cfg.TRAINER.PD.OVERFIT_LR)
        if value != "auto":
            return float(value)
        if self.diffusion.overfit_lr.item() > 0:
            return self.diffusion.overfit_lr.item()
        scale = base.float().square().mean().sqrt().item() or 1.0
        log(
            f"Calibrating the over-fitting step size (TRAINER.PD.OVERFIT_LR auto) on one batch of "
            f"{base.shape[0]}: prompt rms {scale:.3e}, {self.cfg.TRAINER.PD.OVERFIT_STEPS} "
            f"{self.cfg.TRAINER.PD.OVERFIT_OPTIM} steps"
        )
        tried = []
        for factor in OVERFIT_LR_FACTORS:
            lr = factor * scale
            fit, acc = run(lr)
            drop = 1 - fit.mean_after / max(fit.mean_before, 1e-12)
            log(
                f"  lr {lr:.3e} ({factor:g} x prompt rms): per-sample loss {fit.mean_before:.4f} "
                f"-> {fit.mean_after:.4f} ({drop:.0%} lower), per-sample accuracy {acc:.1f}%"
            )
            tried.append((acc, drop, lr))
            if acc >= CALIBRATION_ACC and drop >= CALIBRATION_DROP:
                break
        else:
            log(
                "WARNING: over-fitting calibration found no step size that reaches "
                f"{CALIBRATION_ACC:g}% per-sample accuracy and a {CALIBRATION_DROP:.0%} lower "
                "loss; using the best one tried. Raise TRAINER.PD.OVERFIT_STEPS."
            )
            lr = max(tried)[2]
        log(f"Over-fitting step size: TRAINER.PD.OVERFIT_LR = {lr:.3e}")
        self.diffusion.overfit_lr.fill_(lr)
        # under torchrun each rank calibrated on its own shard: all use rank 0's step size
        distributed.broadcast_tensors([self.diffusion.overfit_lr])
        return self.diffusion.overfit_lr.item()

    def after_epoch(self) -> None:
        if self.in_stage2 and self.overfit_stats.n:
            self.overfit_stats.report(self.epoch + 1, self.max_epoch)
        super().after_epoch()

    def get_current_lr(self, names=None) -> float:
        if names is None and self.in_stage2:
            names = "denoiser"
        return super().get_current_lr(names)

    # ---- inference ----------------------------------------------------------------------------
    def uses_diffusion(self) -> bool:
        """Inference samples prompts whenever the schedule has a stage 2."""
        return self.stage1_epochs(self.cfg) < self.cfg.OPTIM.MAX_EPOCH

    def inference_mode(self) -> str:
        """sample (generated prompts), base (the baseline's prompt alone) or mean (base plus the
        mean target); `base` whenever the schedule has no stage 2."""
        return self.cfg.TRAINER.PD.INFERENCE if self.uses_diffusion() else "base"

    def before_test(self, split: str) -> None:
        if self.inference_mode() == "base":
            super().before_test(split)
            return
        # the same noise for every evaluation, so results do not depend on what ran before
        self.noise_generator = torch.Generator(device="cpu")
        self.noise_generator.manual_seed(self.cfg.TRAINER.PD.NOISE_SEED)
        if distributed.is_distributed():
            # each image gets the noise it gets in one process, whichever rank evaluates it
            loader = self.val_loader if split == "val" else self.test_loader
            self.noise_generator = distributed.ShardNoise(
                self.noise_generator,
                self.cfg.DATALOADER.TEST.BATCH_SIZE,
                len(loader.dataset),
                self.cfg.TRAINER.PD.NUM_SAMPLES,
            )

    def sample_prompts(self, image: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One generated prompt [B, *S] per image (INFERENCE mean: base plus the mean target)."""
        pd = self.cfg.TRAINER.PD
        if self.inference_mode() == "mean":
            x = self.diffusion.stats.mean.expand(cond.shape[0], *self.diffusion.prompt_shape)
        else:
            generator, noise = self.noise_generator, None
            if isinstance(generator, distributed.ShardNoise):
                generator = None
                noise = self.noise_generator.next(cond.shape[0], self.diffusion.prompt_shape)
            x = self.diffusion.sample(
                cond.float(), steps=pd.STEPS, sampler=pd.SAMPLER, generator=generator, noise=noise
            )
        return target_to_prompt(x, self.model.base_prompt(cond), pd.TARGET)

    @torch.no_grad()
    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        mode = self.inference_mode()
        if mode == "base":
            return super().model_inference(image)
        n = self.cfg.TRAINER.PD.NUM_SAMPLES if mode == "sample" else 1
        with self.autocast():
            cond = self.model.condition(image)
            logits = 0.0
            for _ in range(n):
                prompts = self.sample_prompts(image, cond)
                logits = logits + self.model.logits_for(image, cond, prompts).float()
        return logits / n
