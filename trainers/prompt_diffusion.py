"""Prompt diffusion (arXiv 2410.20164) as a mixin that turns a baseline trainer into its *Diff.

Stage 1 (epochs [0, STAGE1_EPOCHS)) trains the baseline exactly as the baseline trainer does.
Stage 2 (the remaining epochs) over-fits a copy of the prompt to every training image, then
trains a conditional diffusion model in prompt space to generate that over-fitted prompt from
noise given the prompt-free image feature. Inference samples each test image's prompt with
TRAINER.PD.STEPS deterministic ODE steps from seeded noise.

The baseline's model provides three methods and nothing else:
  condition(image) -> [B, E]              prompt-free L2-normalised image feature
  base_prompt(image, cond) -> [B, *S]     the prompt being diffused, per image
  logits_for(image, cond, prompts) -> [B, C]   classify each image with its own prompt
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

from promptdiff.backbone.encoders import embed_dim
from promptdiff.diffusion import PromptDiffusion, overfit_per_sample
from promptdiff.host import log
from trainers.base import accuracy


class PromptDiffusionMixin:
    """Mix in before a ClipPromptTrainer subclass: `class CoOpDiff(PromptDiffusionMixin, CoOp)`."""

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        pd = cfg.TRAINER.PD
        checks = {
            "TARGET": ("residual", "absolute"),
            "OVERFIT_OPTIM": ("sgd", "adam"),
        }
        for key, allowed in checks.items():
            if pd[key] not in allowed:
                raise ValueError(
                    f"TRAINER.PD.{key} {pd[key]!r} is unknown; use one of {', '.join(allowed)}."
                )
        if pd.BATCH_SIZE < 0:
            raise ValueError(
                f"TRAINER.PD.BATCH_SIZE must be >= 0 (got {pd.BATCH_SIZE}; 0 = as stage 1)."
            )
        for key in ("STEPS", "NUM_SAMPLES"):
            if pd[key] < 1:
                raise ValueError(f"TRAINER.PD.{key} must be >= 1 (got {pd[key]}).")
        if pd.OVERFIT_STEPS < 0:
            raise ValueError(f"TRAINER.PD.OVERFIT_STEPS must be >= 0 (got {pd.OVERFIT_STEPS}).")
        s1 = self.stage1_epochs(cfg)
        if not 0 <= s1 <= cfg.OPTIM.MAX_EPOCH:
            raise ValueError(
                f"TRAINER.PD.STAGE1_EPOCHS {pd.STAGE1_EPOCHS} must lie in 0..OPTIM.MAX_EPOCH "
                f"({cfg.OPTIM.MAX_EPOCH}), or be -1 for the default split."
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
            probe = self.model.base_prompt(None, torch.zeros(1, embed_dim(self.model.clip)))
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
        n_params = sum(p.numel() for p in self.diffusion.denoiser.parameters())
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

    # ---- training -----------------------------------------------------------------------------
    def before_epoch(self) -> None:
        super().before_epoch()
        if self.epoch == self.stage1_epochs(self.cfg) and self.epoch < self.max_epoch:
            log(f"Stage 2 (overfit, then diffuse) from epoch {self.epoch + 1}")
        if self.in_stage2:
            self.use_stage2_batch_size()

    def use_stage2_batch_size(self) -> None:
        """TRAINER.PD.BATCH_SIZE > 0 re-batches the training data for stage 2 (e.g. CoCoOp's
        batch 1 would overfit and train the denoiser one image per step)."""
        size = self.cfg.TRAINER.PD.BATCH_SIZE
        loader = self.train_loader_x
        if size <= 0 or loader.batch_size == size:
            return
        data = loader.dataset
        self.train_loader_x = DataLoader(
            data,
            batch_size=size,
            sampler=RandomSampler(data),
            num_workers=loader.num_workers,
            drop_last=len(data) >= size,
            pin_memory=loader.pin_memory,
        )
        log(f"Stage 2 batch size: {size}")

    def forward_backward(self, batch) -> dict:
        if not self.in_stage2:
            return super().forward_backward(batch)
        pd = self.cfg.TRAINER.PD
        image, label = self.parse_batch_train(batch)
        model = self.model
        with self.autocast():
            with torch.no_grad():
                cond = model.condition(image)
            base = model.base_prompt(image, cond)
            if not pd.UPDATE_BASE:
                base = base.detach()
            fixed = base.detach()
            last = {}

            def per_sample_ce(delta: torch.Tensor) -> torch.Tensor:
                logits = model.logits_for(image, cond, fixed + delta).float()
                last["logits"] = logits
                return F.cross_entropy(logits, label, reduction="none")

            fit = overfit_per_sample(
                per_sample_ce,
                torch.zeros_like(fixed[0], dtype=torch.float32),
                image.shape[0],
                pd.OVERFIT_STEPS,
                pd.OVERFIT_LR,
                pd.OVERFIT_OPTIM,
            )
            target = fit.targets if pd.TARGET == "residual" else fixed.float() + fit.targets
            diff_loss, x0_hat = self.diffusion.training_loss(target, cond)
            loss = pd.DIFF_WEIGHT * diff_loss
            summary = {}
            if pd.CE_WEIGHT > 0:
                prompts = base + x0_hat if pd.TARGET == "residual" else x0_hat
                logits = model.logits_for(image, cond, prompts).float()
                ce = F.cross_entropy(logits, label)
                loss = loss + pd.CE_WEIGHT * ce
                summary = {"ce": ce.item(), "acc": accuracy(logits, label)}
        names = ["denoiser", "prompt_learner"] if pd.UPDATE_BASE else ["denoiser"]
        self.model_backward_and_update(loss, names)
        if not pd.UPDATE_BASE:
            # the CE through the generated prompt also reaches baseline tensors that stage 2 never
            # steps (MaPLe's couplings, VPT's non-diffused layers); drop those gradients
            self.model.prompt_learner.zero_grad(set_to_none=True)
        self.diffusion.update_ema()
        summary = {
            "loss": loss.item(),
            "diff": diff_loss.item(),
            **summary,
            "of_before": fit.mean_before,
            "of_after": fit.mean_after,
            "of_acc": accuracy(last["logits"], label),
        }
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr("denoiser")
        return summary

    def get_current_lr(self, names=None) -> float:
        if names is None and self.in_stage2:
            names = "denoiser"
        return super().get_current_lr(names)

    # ---- inference ----------------------------------------------------------------------------
    def uses_diffusion(self) -> bool:
        """Inference samples prompts whenever the schedule has a stage 2."""
        return self.stage1_epochs(self.cfg) < self.cfg.OPTIM.MAX_EPOCH

    def before_test(self, split: str) -> None:
        if not self.uses_diffusion():
            super().before_test(split)
            return
        # the same noise for every evaluation, so results do not depend on what ran before
        self.noise_generator = torch.Generator(device="cpu")
        self.noise_generator.manual_seed(self.cfg.TRAINER.PD.NOISE_SEED)

    def sample_prompts(self, image: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One generated prompt [B, *S] per image."""
        pd = self.cfg.TRAINER.PD
        x = self.diffusion.sample(
            cond.float(), steps=pd.STEPS, sampler=pd.SAMPLER, generator=self.noise_generator
        )
        if pd.TARGET == "absolute":
            return x
        return self.model.base_prompt(image, cond) + x

    @torch.no_grad()
    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        if not self.uses_diffusion():
            return super().model_inference(image)
        with self.autocast():
            cond = self.model.condition(image)
            logits = 0.0
            for _ in range(self.cfg.TRAINER.PD.NUM_SAMPLES):
                prompts = self.sample_prompts(image, cond)
                logits = logits + self.model.logits_for(image, cond, prompts).float()
        return logits / self.cfg.TRAINER.PD.NUM_SAMPLES
