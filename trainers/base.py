"""What every CLIP prompt trainer shares: loading CLIP, precision, freezing, the optimisation step.

A trainer names its config namespace (PREC etc.) and builds its model in the class method
`build_prompt_model`: a PromptedCLIP (trainers/prompted.py), whose `prompt_learner` holds
everything trainable; `build_prompted_clip` calls it, with or without a trainer.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from promptdiff.backbone import (
    PRECISIONS,
    cast_for_precision,
    check_input_size,
    load_clip,
    resolve_weights,
)
from promptdiff.engine.runinfo import file_identity
from promptdiff.host import TrainerX, build_lr_scheduler, build_optimizer, load_checkpoint, log
from promptdiff.trainer_names import split_diff
from promptdiff.trainers.prompted import build_prompted_clip


def trainer_cfg(cfg, key: str):
    """The trainer's own namespace, e.g. cfg.TRAINER.COOP."""
    return getattr(cfg.TRAINER, key)


class ClipPromptTrainer(TrainerX):
    """TrainerX for a frozen CLIP with learnable prompts; subclasses set CFG_KEY (and
    CFG_ALSO_READS for other TRAINER blocks they read)."""

    CFG_KEY = ""

    def check_cfg(self, cfg) -> None:
        prec = trainer_cfg(cfg, self.CFG_KEY).PREC
        if prec not in PRECISIONS:
            raise ValueError(
                f"TRAINER.{self.CFG_KEY}.PREC {prec!r} is unknown; use one of {', '.join(PRECISIONS)}."
            )

    # ---- model ------------------------------------------------------------------------------
    def build_model(self) -> None:
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        log(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH, self.device)
        check_input_size(clip_model, cfg.INPUT.SIZE)
        self.prec = cast_for_precision(clip_model, trainer_cfg(cfg, self.CFG_KEY).PREC, self.device)
        log("Building custom CLIP")
        log("Turning off gradients in both the image and the text encoder")
        self.model = build_prompted_clip(cfg, classnames, clip_model)
        learner = self.model.prompt_learner
        if cfg.MODEL.INIT_WEIGHTS:
            self.load_init_weights(cfg.MODEL.INIT_WEIGHTS)
        trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        log(f"Parameters to be updated: {sorted(trainable)}")
        self.optim = build_optimizer(learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.baseline_optim_cfg())
        self.register_model("prompt_learner", learner, self.optim, self.sched)
        self.scaler = None
        if self.prec == "amp" and self.amp_dtype() == torch.float16:
            self.scaler = torch.amp.GradScaler("cuda")

    def baseline_optim_cfg(self):
        """OPTIM.* for the baseline's schedule (the Diff trainers shorten it to stage 1)."""
        return self.cfg.OPTIM

    @classmethod
    def build_prompt_model(cls, cfg, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        """This trainer's PromptedCLIP around a frozen CLIP (see build_prompted_clip)."""
        raise NotImplementedError

    def load_init_weights(self, path: str) -> None:
        """MODEL.INIT_WEIGHTS: a checkpoint of this trainer's prompt_learner (any epoch file)."""
        state = load_checkpoint(path)
        state = state.get("state_dict", state)
        missing, _ = self.model.prompt_learner.load_state_dict(
            self.filter_loaded_state_dict("prompt_learner", state), strict=False
        )
        log(f"Initialised prompt_learner from {path} (not found there: {missing or 'none'})")

    def filter_loaded_state_dict(self, name: str, state_dict: dict) -> dict:
        # upstream CoOp checkpoints carry the class-token buffers; they depend on the classes
        return {
            k: v
            for k, v in state_dict.items()
            if k.split(".")[-1] not in ("token_prefix", "token_suffix")
        }

    def amp_dtype(self) -> torch.dtype:
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def autocast(self):
        """Autocast for PREC amp (bf16 where supported), a no-op otherwise."""
        if self.prec != "amp":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype())

    # ---- loop -------------------------------------------------------------------------------
    def set_model_mode(self, mode: str = "train", names=None) -> None:
        super().set_model_mode(mode, names)
        # a cached class-feature table is only valid for the evaluation that built it
        self.model.clear_cache()

    def before_test(self, split: str) -> None:
        with self.autocast():
            self.model.cache_text_features()

    def model_backward_and_update(self, loss: torch.Tensor, names=None) -> None:
        if self.scaler is None:
            return super().model_backward_and_update(loss, names)
        self.model_zero_grad(names)
        self.detect_anomaly(loss)
        self.scaler.scale(loss).backward()
        self.sync_ranks(names)
        for name in self.get_model_names(names):
            optim = self._optims[name]
            # GradScaler.step refuses an optimizer none of whose tensors got a gradient (the
            # denoiser during stage 1)
            if optim is not None and any(
                p.grad is not None for group in optim.param_groups for p in group["params"]
            ):
                self.scaler.step(optim)
        self.scaler.update()

    def forward_backward(self, batch) -> dict:
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            output = self.model(image)
        loss = F.cross_entropy(output.float(), label)
        self.check_losses(ce=loss)
        self.model_backward_and_update(loss)
        summary = {"loss": loss.item(), "acc": accuracy(output, label)}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr("prompt_learner")
        return summary

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(input).float()

    def check_losses(self, **terms) -> None:
        """Stop on a non-finite loss term, naming it, the epoch and the batch, before it reaches
        the parameters (so the last complete checkpoint stays the last good one)."""
        for term, value in terms.items():
            if value is None:
                continue
            finite = (
                bool(torch.isfinite(value).all())
                if torch.is_tensor(value)
                else math.isfinite(value)
            )
            if not finite:
                raise FloatingPointError(
                    f"The {term} loss is not finite at epoch {self.epoch + 1}/{self.max_epoch}, "
                    f"batch {self.batch_idx + 1}/{self.num_batches}; training stopped and the last "
                    f"complete checkpoint in {self.output_dir} is kept: lower the learning rate "
                    f"or check the data."
                )

    def accepts_checkpoint_of(self, trainer: str) -> bool:
        # a *Diff trainer's prompt_learner is its baseline's, so their files load both ways
        return split_diff(trainer)[0] == split_diff(self.cfg.TRAINER.NAME)[0]

    def weights_identity(self) -> dict:
        """The CLIP weights file this run loads (path, size, sha256), hashed once."""
        if getattr(self, "_weights_identity", None) is None:
            path = resolve_weights(self.cfg.MODEL.BACKBONE.NAME, self.cfg.MODEL.BACKBONE.PATH)
            self._weights_identity = file_identity(path)
        return self._weights_identity


def accuracy(output: torch.Tensor, label: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return (output.argmax(1) == label).float().mean().item() * 100.0
