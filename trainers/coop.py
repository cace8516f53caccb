"""CoOp (Zhou et al., IJCV 2022): a learned context shared by all class prompts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from promptdiff.backbone.encoders import encode_image
from promptdiff.backbone.prompts import ClassPrompts, context_init
from promptdiff.host import TRAINER_REGISTRY, log
from trainers.base import ClipPromptTrainer, logits_from_features
from trainers.prompt_diffusion import PromptDiffusionMixin


class CoOpPromptLearner(nn.Module):
    """The context vectors (shared [M, D] or class-specific [C, M, D]) and the class prompts."""

    def __init__(self, opts, classnames: list[str], clip_model: nn.Module):
        super().__init__()
        n_classes = len(classnames) if opts.CSC else 0
        vectors, prefix_text = context_init(clip_model, opts.CTX_INIT, opts.N_CTX, n_classes)
        n_ctx = vectors.shape[-2]
        if vectors.dim() == 3:
            log("Initializing class-specific contexts")
        log(f'Initial context: "{prefix_text}"')
        log(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(vectors)
        self.prompts = ClassPrompts(
            clip_model, classnames, prefix_text, n_ctx, opts.CLASS_TOKEN_POSITION
        )


class PromptedCLIP(nn.Module):
    """Frozen CLIP plus a prompt learner; caches the class features of a static prompt per evaluation."""

    def __init__(
        self,
        prompt_learner: nn.Module,
        clip_model: nn.Module,
        chunk_size: int = 0,
        share_prefix: bool = True,
    ):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.clip = clip_model
        self.chunk_size = chunk_size or None
        self.share_prefix = share_prefix
        self._text_cache = None

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        return encode_image(self.clip, image)

    def text_features(self) -> torch.Tensor:
        learner = self.prompt_learner
        return learner.prompts.features(
            self.clip, learner.ctx, chunk_size=self.chunk_size, share_prefix=self.share_prefix
        )

    def cache_text_features(self) -> None:
        with torch.no_grad():
            self._text_cache = self.text_features()

    def clear_cache(self) -> None:
        self._text_cache = None

    # ---- what prompt diffusion needs (see trainers/prompt_diffusion.py) ----
    def condition(self, image: torch.Tensor) -> torch.Tensor:
        """The prompt-free, L2-normalised image feature [B, E]."""
        return F.normalize(self.image_features(image).float(), dim=-1)

    def base_prompt(self, image: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The shared context, one copy per image: [B, M, D] (or [B, C, M, D] with CSC)."""
        ctx = self.prompt_learner.ctx
        return ctx.unsqueeze(0).expand(cond.shape[0], *ctx.shape)

    def logits_for(
        self,
        image: torch.Tensor,
        cond: torch.Tensor,
        prompts: torch.Tensor,
        classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, C] of each image with its own context (all class prompts per image), or
        [B, k] over the classes [B, k] given per image."""
        text = self.prompt_learner.prompts.features(
            self.clip,
            prompts,
            per_sample=True,
            chunk_size=self.chunk_size,
            classes=classes,
            share_prefix=self.share_prefix,
        )
        return logits_from_features(self.clip, cond, text)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        text = self._text_cache if self._text_cache is not None else self.text_features()
        return logits_from_features(self.clip, self.image_features(image), text)


def text_settings(cfg) -> tuple[int, bool]:
    """(TEXT_CHUNK, TEXT_SHARE_PREFIX): how per-image class prompts go through the text encoder."""
    return cfg.TRAINER.PD.TEXT_CHUNK, cfg.TRAINER.PD.TEXT_SHARE_PREFIX


@TRAINER_REGISTRY.register()
class CoOp(ClipPromptTrainer):
    """Context Optimization: TRAINER.COOP.{N_CTX, CSC, CTX_INIT, PREC, CLASS_TOKEN_POSITION}."""

    CFG_KEY = "COOP"

    def build_prompt_model(self, cfg, classnames, clip_model):
        learner = CoOpPromptLearner(cfg.TRAINER.COOP, classnames, clip_model)
        return PromptedCLIP(learner, clip_model, *text_settings(cfg))


@TRAINER_REGISTRY.register()
class CoOpDiff(PromptDiffusionMixin, CoOp):
    """CoOp + prompt diffusion over the context [M, D]: each image gets its own context."""
