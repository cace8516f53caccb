"""Prompt diffusion (arXiv 2410.20164) as a mixin that turns a baseline trainer into its *Diff.

Stage 1 (epochs [0, STAGE1_EPOCHS)) trains the baseline exactly as the baseline trainer does.
Stage 2 (the remaining epochs) over-fits a copy of the prompt to every training image, then
trains a conditional diffusion model in prompt space to generate that over-fitted prompt from
noise given the prompt-free image feature. Inference samples each test image's prompt with
TRAINER.PD.STEPS deterministic ODE steps from seeded noise.

The baseline's model provides the three hooks of trainers.prompted.DiffusionHooks and nothing else.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from promptdiff.backbone.encoders import embed_dim
from promptdiff.config_keys import declare_keys
from promptdiff.diffusion import (
    CENTER_MODES,
    FORMULATIONS,
    OPTIMIZERS,
    PREDICTIONS,
    SAMPLERS,
    SCHEDULES,
    TARGET_MODES,
    OverfitResult,
    PromptDiffusion,
    check_options,
    check_steps,
    fit_figures,
    fit_sums,
    nearest_rows,
    neighbour_context,
    overfit_per_sample,
    prompt_to_target,
    target_to_prompt,
)
from promptdiff.engine import count_num_param, distributed
from promptdiff.engine.data import DatasetWrapper, loader_of, rank_batch_size
from promptdiff.engine.utils import write_json
from promptdiff.host import log
from promptdiff.trainers.base import accuracy
from promptdiff.trainers.overfit_classes import overfit_loss_classes
from promptdiff.trainers.overfit_entropy import entropy_loss
from promptdiff.trainers.prompted import DiffusionHooks

INFERENCE_MODES = ("sample", "base", "mean", "tune")
OVERFIT_TARGETS = ("label", "entropy", "neighbours")
# TRAINER.PD.CE_FROM: which one-step estimate stage 2's cross-entropy goes through
CE_SOURCES = ("noised", "start")
# where SET_CONTEXT's neighbours come from at test time (see PromptDiffusionMixin.build_context_pool)
CONTEXT_POOLS = ("batch", "split", "train")

declare_keys(
    "TRAINER.PD",
    # how a trained model is evaluated, or a measurement after training: run identity leaves
    # these out, so --eval-only may change them
    test_time=(
        "STEPS",
        "SAMPLER",
        "NUM_SAMPLES",
        "NOISE_SEED",
        "INFERENCE",
        "SET_CONTEXT_POOL",
        "HELDOUT_FIT",
    ),
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
    SAMPLER="ddim",  # ddim | euler | heun | dpmpp_2m | x0_refeed
    # ODE steps at test time. 1, not the paper's 5 (its reading): one step beat five on the
    # per-image-camera world's val and on both worlds' test (docs/RESULTS_PERCAM.md)
    STEPS=1,
    NUM_SAMPLES=1,  # M noise draws whose logits are averaged at test time
    NOISE_SEED=0,
    # sample (generated prompts) | base (the baseline's prompt alone) | mean (base + mean target)
    # | tune (test-time prompt tuning: each test image over-fitted label-free, no diffusion)
    INFERENCE="sample",
    # set context, and the denoiser's held-out fit
    # k > 0: the denoiser also sees the mean condition of each image's k nearest neighbours
    # (cosine) in its batch; 0 = off
    SET_CONTEXT=0,
    # test time: batch (neighbours in the test batch) | split / train (a fixed seeded random pool
    # of DATALOADER.TEST.BATCH_SIZE images of the evaluated split / of the training images)
    SET_CONTEXT_POOL="batch",
    # after training, the denoiser's fit to the val images' over-fitted targets (heldout_fit.json)
    HELDOUT_FIT=True,
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
    # which one-step estimate the cross-entropy goes through: "noised" (the paper's reading, the
    # x0 estimate from the diffusion loss's own noised target at its random time) or "start" (from
    # fresh noise at the sampling start: the prompt STEPS 1 generates at test time)
    CE_FROM="noised",
    UPDATE_BASE=False,  # keep training the baseline's prompt in stage 2
    BATCH_SIZE=0,  # stage-2 training batch size; 0 = DATALOADER.TRAIN_X.BATCH_SIZE
    # VPTDiff: diffuse only the first N prompt layers (0 = all)
    DIFFUSE_LAYERS=0,
    # classes in the per-sample over-fitting loss: the true class + the hardest others under the
    # base prompt; 0, or >= the class count, = all classes (exact)
    OVERFIT_CLASSES=64,
    # ---- residual targets without the label push (issue 17; off by default)
    # none | mean (diffuse r - mu_y) | span (diffuse r without its component along mu_y), with
    # mu_y the running mean residual of class y; mu_y is never added back (test labels are unknown)
    CENTER="none",
    # label (cross-entropy with the label) | entropy (label-free: marginal entropy of the most
    # confident augmented views, as test-time prompt tuning does) | neighbours (cross-entropy of
    # the image's OVERFIT_NEIGHBOURS nearest other images of the batch, with their labels, never
    # its own: what its neighbourhood, e.g. its camera, needs rather than its class)
    OVERFIT_TARGET="label",
    OVERFIT_NEIGHBOURS=4,
    OVERFIT_VIEWS=8,  # entropy: views per image (view 0 is the image itself)
    OVERFIT_CONFIDENT=0.25,  # entropy: fraction of the views kept, the lowest-entropy ones
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
    """What per-sample over-fitting did over one epoch: the logged figure and the weak-fit warning
    (and with TRAINER.PD.CENTER, the share of the residual's energy the class means removed)."""

    def __init__(self, pd=None):
        self.n = 0
        self.before = self.after = self.correct = self.residual_sq = self.prompt_sq = 0.0
        self.entropy = pd is not None and pd.OVERFIT_TARGET == "entropy"
        self.neighbours = pd is not None and pd.OVERFIT_TARGET == "neighbours"
        self.center = "none" if pd is None else pd.CENTER
        self.energy_in = self.energy_out = 0.0

    def add(self, fit, acc: float, base: torch.Tensor, target: torch.Tensor | None = None) -> None:
        if target is not None:
            self.energy_in += fit.targets.double().square().sum().item()
            self.energy_out += target.double().square().sum().item()
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
        what = "entropy (label-free)" if self.entropy else "loss"
        what += " on its neighbours" if self.neighbours else ""
        log(
            f"Over-fitting in epoch {epoch}/{max_epoch}: per-sample {what} {before:.4f} -> "
            f"{after:.4f} ({drop:.1%} lower), per-sample accuracy {acc:.1f}%, "
            f"residual rms {ratio:.3f} x prompt rms"
        )
        if self.center != "none" and self.energy_in > 0:
            removed = 1 - self.energy_out / self.energy_in
            log(
                f"Class-centred targets in epoch {epoch}/{max_epoch} (TRAINER.PD.CENTER "
                f"{self.center}): mu_y removed {removed:.1%} of the residual energy"
            )
        # label-free over-fitting does not aim at the label: only its entropy drop is a target
        want = f"want >= {WARN_DROP:.0%}" + ("" if self.entropy else f" and >= {WARN_ACC:g}%")
        if drop < WARN_DROP or (acc < WARN_ACC and not self.entropy):
            log(
                f"WARNING: stage-2 over-fitting is weak ({what} {drop:.1%} lower, per-sample "
                f"accuracy {acc:.1f}%; {want}): the "
                "diffusion model learns little beyond the base prompt. Raise "
                "TRAINER.PD.OVERFIT_STEPS or TRAINER.PD.OVERFIT_LR (or set OVERFIT_LR auto)."
            )


class PromptDiffusionMixin:
    """Mix in before a ClipPromptTrainer subclass: `class CoOpDiff(PromptDiffusionMixin, CoOp)`."""

    model: DiffusionHooks
    CFG_ALSO_READS = ("PD",)

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
            "CENTER": CENTER_MODES,
            "OVERFIT_TARGET": OVERFIT_TARGETS,
            "CE_FROM": CE_SOURCES,
        }
        for key, allowed in choices.items():
            if pd[key] not in allowed:
                raise ValueError(
                    f"TRAINER.PD.{key} {pd[key]!r} is unknown; use one of {', '.join(allowed)}."
                )
        if pd.SET_CONTEXT_POOL not in CONTEXT_POOLS:
            raise ValueError(
                f"TRAINER.PD.SET_CONTEXT_POOL {pd.SET_CONTEXT_POOL!r} is unknown; use one of "
                f"{', '.join(CONTEXT_POOLS)}."
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
        if pd.CENTER != "none" and pd.TARGET != "residual":
            raise ValueError(
                f"TRAINER.PD.CENTER {pd.CENTER!r} centres residuals; set TRAINER.PD.TARGET "
                f"residual (got {pd.TARGET!r}) or CENTER none."
            )
        if not 0 < pd.OVERFIT_CONFIDENT <= 1:
            raise ValueError(
                f"TRAINER.PD.OVERFIT_CONFIDENT must lie in (0, 1] (got {pd.OVERFIT_CONFIDENT})."
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
            "OVERFIT_VIEWS": 1,
            "OVERFIT_NEIGHBOURS": 1,
            "WEIGHT_DECAY": 0,
            "DIFF_WEIGHT": 0,
            "CE_WEIGHT": 0,
            "SET_CONTEXT": 0,
        }
        for key, low in minimum.items():
            if pd[key] < low:
                raise ValueError(f"TRAINER.PD.{key} must be >= {low} (got {pd[key]}).")
        if not pd.LR > 0:
            raise ValueError(f"TRAINER.PD.LR must be > 0 (got {pd.LR}).")
        for key in ("EMA", "DROPOUT"):
            if not 0 <= pd[key] < 1:
                raise ValueError(f"TRAINER.PD.{key} must lie in [0, 1) (got {pd[key]}).")
        # the denoiser's own rules (flow with eps, WIDTH by HEADS), named as config keys
        check_options(pd.FORMULATION, pd.PREDICTION, pd.WIDTH, pd.HEADS, "TRAINER.PD.{}".format)
        check_steps(pd.FORMULATION, pd.TIMESTEPS, pd.STEPS, "TRAINER.PD.{}".format)
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
            class_centres=self.num_classes if pd.CENTER != "none" else 0,
            context=pd.SET_CONTEXT > 0,
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
        self.overfit_stats = OverfitStats(pd)
        self.context_pool = None

    # ---- training -----------------------------------------------------------------------------
    def before_epoch(self) -> None:
        super().before_epoch()
        self.overfit_stats = OverfitStats(self.cfg.TRAINER.PD)
        if self.epoch == self.stage1_epochs(self.cfg) and self.epoch < self.max_epoch:
            log(f"Stage 2 (overfit, then diffuse) from epoch {self.epoch + 1}")
        if self.in_stage2:
            self.use_stage2_batch_size()

    def use_stage2_batch_size(self) -> None:
        """TRAINER.PD.BATCH_SIZE > 0 re-batches the training data for stage 2 (e.g. CoCoOp's
        batch 1 would overfit and train the denoiser one image per step)."""
        size, key = self.cfg.TRAINER.PD.BATCH_SIZE, "TRAINER.PD.BATCH_SIZE"
        if size <= 0 or self.train_loader_x.batch_size == rank_batch_size(size, key):
            return
        data = self.train_loader_x.dataset
        self.train_loader_x = loader_of(self.cfg, data, "RandomSampler", size, True, key)
        log(f"Stage 2 batch size: {rank_batch_size(size, key)}")

    def forward_backward(self, batch) -> dict:
        if not self.in_stage2:
            return super().forward_backward(batch)
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            cond, base = self.condition_and_base(image)
            fit, fit_acc = self.overfit(image, label, cond, base.detach())
            target = self.diffusion_target(fit, base, label, update=True)
            diff_loss, x0_hat = self.diffusion.training_loss(
                target, cond, context=self.set_context(cond)
            )
            loss, ce_terms = self.stage2_loss(image, label, cond, base, diff_loss, x0_hat)
        self.check_losses(overfit=fit.targets, diff=diff_loss, ce=ce_terms.get("ce"))
        self.stage2_step(loss)
        self.overfit_stats.add(fit, fit_acc, base.detach(), target)
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

    def diffusion_target(
        self,
        fit: OverfitResult,
        base: torch.Tensor,
        label: torch.Tensor | None = None,
        update: bool = False,
    ) -> torch.Tensor:
        """What the denoiser learns to generate: the over-fitted prompts in TRAINER.PD.TARGET form,
        with TRAINER.PD.CENTER their class's mean residual removed (`update` first folds these
        residuals into the class means: training batches only)."""
        pd = self.cfg.TRAINER.PD
        base = base.detach()
        target = prompt_to_target(base.float() + fit.targets, base, pd.TARGET)
        if pd.CENTER == "none":
            return target
        if label is None:
            raise ValueError(
                f"TRAINER.PD.CENTER {pd.CENTER} centres each residual on its class's mean: pass "
                "the labels to diffusion_target."
            )
        if update:
            self.diffusion.centres.update(target, label)
        return self.diffusion.centres.centre(target, label, pd.CENTER)

    def stage2_loss(self, image, label, cond, base, diff_loss, x0_hat) -> tuple[torch.Tensor, dict]:
        """(DIFF_WEIGHT x diffusion loss + CE_WEIGHT x cross-entropy of the prompts from the
        denoiser's one-step estimate, the cross-entropy and accuracy to log)."""
        pd = self.cfg.TRAINER.PD
        loss = pd.DIFF_WEIGHT * diff_loss
        if pd.CE_WEIGHT <= 0:
            return loss, {}
        prompts = target_to_prompt(self.ce_estimate(cond, x0_hat), base, pd.TARGET)
        logits = self.model.logits_for(image, cond, prompts).float()
        ce = F.cross_entropy(logits, label)
        return loss + pd.CE_WEIGHT * ce, {"ce": ce.item(), "acc": accuracy(logits, label)}

    def ce_estimate(self, cond: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        """The one-step estimate stage 2's cross-entropy goes through (TRAINER.PD.CE_FROM): the
        diffusion loss's own (noised), or a fresh one from noise at the sampling start (start)."""
        if self.cfg.TRAINER.PD.CE_FROM == "start":
            return self.diffusion.start_estimate(cond.float(), context=self.set_context(cond))
        return x0_hat

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
        if pd.OVERFIT_TARGET == "entropy":
            # the targets never see the label; it only scores them for the log
            fit = self.tune_label_free(image, base, self.view_generator())
            with torch.no_grad():
                logits = self.model.logits_for(image, cond, base + fit.targets)
            return fit, accuracy(logits.float(), label)
        near = self.overfit_neighbours(cond, pd)
        k = 1 if near is None else near.shape[1]
        # copy i is scored on its own image, or on its k neighbours' (each with its own base)
        on = [image, cond, base, label]
        if near is not None:
            on = [t[near.flatten()] for t in on]
        on_base = on[2]
        # TRAINER.PD.OVERFIT_CLASSES: all classes, or the true class + the hardest under `base`
        logits_fn, of_label = overfit_loss_classes(
            self.model, *on, self.num_classes, pd.OVERFIT_CLASSES
        )

        def per_sample_ce(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if k == 1:
                logits = logits_fn(on_base + delta).float()
                return F.cross_entropy(logits, of_label, reduction="none"), logits
            logits = logits_fn(on_base + delta.repeat_interleave(k, 0)).float()
            return F.cross_entropy(logits, of_label, reduction="none").view(-1, k).mean(1), logits

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

    def overfit_neighbours(self, cond: torch.Tensor, pd) -> torch.Tensor | None:
        """[B, k] batch rows each prompt copy is over-fitted on with OVERFIT_TARGET neighbours:
        its image's OVERFIT_NEIGHBOURS nearest other images by cosine of the condition feature
        (nearest_rows), so its own label never enters; None (each copy on its own image) for the
        other targets and for a batch of one image, which has no others."""
        if pd.OVERFIT_TARGET != "neighbours":
            return None
        return nearest_rows(cond.float(), pd.OVERFIT_NEIGHBOURS)

    def tune_label_free(
        self, image: torch.Tensor, base: torch.Tensor, generator: torch.Generator
    ) -> OverfitResult:
        """Over-fit one prompt copy per image without labels (TRAINER.PD.OVERFIT_TARGET entropy):
        per-sample marginal entropy of its most confident views, before and after."""
        pd = self.cfg.TRAINER.PD
        keep = max(1, round(pd.OVERFIT_CONFIDENT * pd.OVERFIT_VIEWS))
        loss = entropy_loss(
            self.model, image, base, pd.OVERFIT_VIEWS, keep, pd.OVERFIT_CLASSES, generator
        )

        def run(lr: float) -> tuple[OverfitResult, float]:
            zero = torch.zeros_like(base[0], dtype=torch.float32)
            steps, optim = pd.OVERFIT_STEPS, pd.OVERFIT_OPTIM
            fit = overfit_per_sample(loss, zero, image.shape[0], steps, lr, optim, has_aux=True)
            return fit, float("nan")

        return run(self.overfit_lr(run, base, label_free=True))[0]

    def view_generator(self) -> torch.Generator:
        """The generator of this training batch's views: seeded by (SEED, epoch, batch, rank), so
        a resumed run draws the views an uninterrupted one does."""
        parts = [self.cfg.SEED, self.epoch, self.batch_idx, distributed.rank()]
        seed = int(np.random.SeedSequence([max(p, 0) for p in parts]).generate_state(1)[0])
        return torch.Generator().manual_seed(seed)

    def overfit_lr(self, run, base: torch.Tensor, label_free: bool = False) -> float:
        """TRAINER.PD.OVERFIT_LR, or with `auto` the step size calibrated on the first stage-2
        batch (kept in the denoiser's checkpoint, so a resumed run keeps it); `label_free` judges
        a step size by the entropy drop alone."""
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
                f"-> {fit.mean_after:.4f} ({drop:.0%} lower)"
                + ("" if label_free else f", per-sample accuracy {acc:.1f}%")
            )
            if label_free:  # no label to reach: the entropy drop alone decides
                acc = 100.0
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
        """sample (generated prompts), base (the baseline's prompt alone), mean (base plus the
        mean target) or tune (test-time tuning, no denoiser); `base` instead of sample or mean
        whenever the schedule has no stage 2."""
        mode = self.cfg.TRAINER.PD.INFERENCE
        return mode if mode == "tune" or self.uses_diffusion() else "base"

    def before_test(self, split: str) -> None:
        if self.inference_mode() == "tune":
            self.before_tuning()
            return
        if self.inference_mode() == "base":
            super().before_test(split)
            return
        self.build_context_pool(split)
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
                cond.float(),
                steps=pd.STEPS,
                sampler=pd.SAMPLER,
                generator=generator,
                noise=noise,
                context=self.set_context(cond, self.context_pool),
            )
        return target_to_prompt(x, self.model.base_prompt(cond), pd.TARGET)

    @torch.no_grad()
    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        mode = self.inference_mode()
        if mode == "base":
            return super().model_inference(image)
        if mode == "tune":
            return self.tuned_logits(image)
        n = self.cfg.TRAINER.PD.NUM_SAMPLES if mode == "sample" else 1
        with self.autocast():
            cond = self.model.condition(image)
            logits = 0.0
            for _ in range(n):
                prompts = self.sample_prompts(image, cond)
                logits = logits + self.model.logits_for(image, cond, prompts).float()
        return logits / n

    # ---- INFERENCE tune: test-time prompt tuning, the procedure the entropy targets amortise --
    def before_tuning(self) -> None:
        """Seed the test views (TRAINER.PD.NOISE_SEED) and restart the tuning clock."""
        self.test_views = torch.Generator().manual_seed(self.cfg.TRAINER.PD.NOISE_SEED)
        self.tune_seconds, self.tune_images = 0.0, 0

    def tuned_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of each test image under its own prompt, over-fitted label-free from the
        base prompt (TRAINER.PD.OVERFIT_* keys, as the entropy targets are); timed per image."""
        sync = torch.cuda.synchronize if image.is_cuda else (lambda: None)
        sync()
        start = time.perf_counter()
        with self.autocast():
            cond = self.model.condition(image)
            base = self.model.base_prompt(cond).detach()
            fit = self.tune_label_free(image, base, self.test_views)
            logits = self.model.logits_for(image, cond, base + fit.targets).float()
        sync()
        self.tune_seconds += time.perf_counter() - start
        self.tune_images += image.shape[0]
        return logits

    def test(self, split: str | None = None) -> float:
        result = super().test(split)
        if self.inference_mode() == "tune" and self.tune_images:
            pd = self.cfg.TRAINER.PD
            log(
                f"Test-time prompt tuning (TRAINER.PD.INFERENCE tune): "
                f"{1000 * self.tune_seconds / self.tune_images:.1f} ms per image over "
                f"{self.tune_images} images ({pd.OVERFIT_STEPS} steps, {pd.OVERFIT_VIEWS} views, "
                f"{pd.OVERFIT_CONFIDENT:g} kept)"
            )
        return result

    # ---- checkpoints -------------------------------------------------------------------------
    def load_state_strict(self, name: str, state_dict: dict, fpath: str) -> None:
        # the class means are sized by the training classes; an evaluation on other classes
        # (base-to-new) loads them as saved and never reads them
        if name == "denoiser" and self.diffusion.centres is not None:
            self.diffusion.centres.fit_saved(state_dict, "centres.")
        super().load_state_strict(name, state_dict, fpath)

    # ---- set context (TRAINER.PD.SET_CONTEXT) -------------------------------------------------
    def set_context(self, cond: torch.Tensor, pool: torch.Tensor | None = None):
        """The denoiser's context [B, E]: the mean condition of each image's SET_CONTEXT nearest
        neighbours among the other images of the batch (or in `pool`); None when off or when
        there are none (a batch of one), which gives exactly the output without context."""
        return neighbour_context(cond.float(), self.cfg.TRAINER.PD.SET_CONTEXT, pool)

    @torch.no_grad()
    def build_context_pool(self, split: str) -> None:
        """For SET_CONTEXT_POOL split / train (a control for what the test batch's neighbours
        carry, e.g. the domain): the condition features of a fixed random pool of
        DATALOADER.TEST.BATCH_SIZE images (seed NOISE_SEED, test transform) of the evaluated split
        or of the training images. Every test image takes its neighbours from this pool instead
        of its batch; a pooled image of the evaluated split may be its own neighbour."""
        pd = self.cfg.TRAINER.PD
        self.context_pool = None
        if pd.SET_CONTEXT == 0 or pd.SET_CONTEXT_POOL == "batch":
            return
        if pd.SET_CONTEXT_POOL == "train":
            source = getattr(self.dm.dataset, "train_x", None)
            data = DatasetWrapper(source, self.dm.tfm_test) if source else None
        else:
            loader = self.val_loader if split == "val" else self.test_loader
            data = loader.dataset if loader is not None else None
        if data is None:
            raise ValueError(
                f"TRAINER.PD.SET_CONTEXT_POOL {pd.SET_CONTEXT_POOL} needs a dataset to draw its "
                "pool from and this trainer has none (e.g. predicting on given images); use "
                "SET_CONTEXT_POOL batch."
            )
        generator = torch.Generator().manual_seed(pd.NOISE_SEED)
        chosen = torch.randperm(len(data), generator=generator)[
            : self.cfg.DATALOADER.TEST.BATCH_SIZE
        ]
        images = torch.stack([data[i]["img"] for i in chosen.tolist()]).to(self.device)
        with self.autocast():
            self.context_pool = self.model.condition(images).float()
        log(
            f"Set context from a fixed pool of {len(chosen)} {pd.SET_CONTEXT_POOL} images "
            f"(TRAINER.PD.SET_CONTEXT_POOL {pd.SET_CONTEXT_POOL})"
        )

    # ---- held-out fit of the denoiser (TRAINER.PD.HELDOUT_FIT) ---------------------------------
    def after_train(self) -> None:
        # before the engine's after_train, which may load model-best and then tests
        if self.uses_diffusion() and self.cfg.TRAINER.PD.HELDOUT_FIT:
            self.heldout_fit()
        super().after_train()

    def heldout_fit(self) -> dict | None:
        """Over-fit the val images' prompt copies as stage 2 does the training images', and
        compare the denoiser's (EMA) predictions from seeded noise with them: one step (the x0
        estimate at the noisiest time) and the STEPS-step sample. Logs one line, writes
        OUTPUT_DIR/heldout_fit.json and returns its record; None where skipped."""
        pd = self.cfg.TRAINER.PD
        if self.val_loader is None:
            log("Held-out fit: skipped, the dataset has no val split.")
            return None
        if distributed.is_distributed():
            log("Held-out fit: skipped under torchrun (it measures one process's val images).")
            return None
        # eval mode: no dropout, so the figures are deterministic
        self.set_model_mode("eval")
        generator = torch.Generator().manual_seed(pd.NOISE_SEED)
        runs = {"one_step": (1, "ddim"), "sampled": (pd.STEPS, pd.SAMPLER)}
        sums = dict.fromkeys(runs, 0)
        for batch in self.val_loader:
            image, label = self.parse_batch_train(batch)
            with self.autocast():
                cond, base = self.condition_and_base(image)
                fit, _ = self.overfit(image, label, cond, base.detach())
                target = self.diffusion_target(fit, base, label).detach().float()
            context = self.set_context(cond)
            noise = torch.randn(target.shape, generator=generator).to(target.device)
            for name, (steps, sampler) in runs.items():
                pred = self.diffusion.sample(
                    cond.float(), steps=steps, sampler=sampler, noise=noise, context=context
                )
                sums[name] = sums[name] + fit_sums(pred, target, self.diffusion.stats.mean)
        figures = {name: fit_figures(value) for name, value in sums.items()}
        n = int(sums["one_step"][-1].item())
        one, sampled = figures["one_step"], figures["sampled"]
        log(
            f"Held-out fit on {n} val images: R^2 one-step {one['r2']:.3f}, R^2 sampled "
            f"{sampled['r2']:.3f} ({pd.STEPS} {pd.SAMPLER} steps), cosine one-step "
            f"{one['cosine']:.3f} / sampled {sampled['cosine']:.3f} (around the training-target "
            f"mean: {one['cosine_centred']:.3f} / {sampled['cosine_centred']:.3f})"
        )
        record = {
            "images": n,
            "epoch": self.evaluated_epoch,
            "steps": pd.STEPS,
            "sampler": pd.SAMPLER,
            "noise_seed": pd.NOISE_SEED,
            **figures,
        }
        write_json(record, os.path.join(self.output_dir, "heldout_fit.json"))
        return record
