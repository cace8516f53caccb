"""The frozen CLIP with a prompt learner that every baseline's model extends, and the hooks prompt
diffusion (trainers/prompt_diffusion.py) calls on it."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from promptdiff.backbone.classifier import logits_from_features
from promptdiff.backbone.encoders import encode_image
from promptdiff.config_keys import declare_keys
from promptdiff.engine.config import rename_key


class DiffusionHooks(Protocol):
    """What PromptDiffusionMixin calls on a trainer's model. `logits_for` may also take
    `classes` [B, k] to encode only those class prompts (see trainers/overfit_classes.py)."""

    clip: nn.Module  # frozen; its embedding width is the condition's
    prompt_learner: nn.Module  # everything trainable (stage 2 keeps it unless UPDATE_BASE)

    def condition(self, image: torch.Tensor) -> torch.Tensor:
        """The prompt-free, L2-normalised image feature [B, E]."""
        ...

    def base_prompt(self, cond: torch.Tensor) -> torch.Tensor:
        """The prompt being diffused, one per image: [B, *S]."""
        ...

    def logits_for(
        self, image: torch.Tensor, cond: torch.Tensor, prompts: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, C] of each image classified with its own prompt [B, *S]."""
        ...


# how per-image class prompts go through the text encoder (exact either way)
declare_keys(
    "MODEL.TEXT",
    test_time=("CHUNK",),  # chunking only bounds memory: the same model either way
    # sequences per text-encoder call (0 = all at once); with gradients each chunk is checkpointed
    CHUNK=0,
    # encode the class-independent [SOS] + context prefix once per prompt, not once per class
    # (CLASS_TOKEN_POSITION end, CoCoOp, MaPLe and their Diff trainers)
    SHARE_PREFIX=True,
)
rename_key("TRAINER.PD.TEXT_CHUNK", "MODEL.TEXT.CHUNK")
rename_key("TRAINER.PD.TEXT_SHARE_PREFIX", "MODEL.TEXT.SHARE_PREFIX")


def text_settings(cfg) -> tuple[int, bool]:
    """(MODEL.TEXT.CHUNK, MODEL.TEXT.SHARE_PREFIX)."""
    text = cfg.MODEL.TEXT
    if text.CHUNK < 0:
        raise ValueError(f"MODEL.TEXT.CHUNK must be >= 0 (got {text.CHUNK}); 0 = no chunking.")
    return text.CHUNK, text.SHARE_PREFIX


class PromptedCLIP(nn.Module):
    """Frozen CLIP plus a prompt learner (`ctx`, and `prompts`: the ClassPrompts that take it); the
    class features of the shared prompt are cached for one evaluation.

    Defaults are those of a text context (CoOp's): the image side is CLIP's own, and each image is
    classified by its prompt-free feature against its own class prompts.
    """

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

    def shared_prompt(self) -> torch.Tensor:
        """The learned prompt [*S] every image uses in the baseline: the learner's `ctx`."""
        return self.prompt_learner.ctx

    def text_features(
        self,
        prompts: torch.Tensor | None = None,
        per_sample: bool = False,
        classes: torch.Tensor | None = None,
        deep_prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class features [C, E] with the context [M, D] (the shared one by default), or [B, C, E]
        with one per image [B, M, D] ([B, k, E] for the classes [B, k] given per image)."""
        return self.prompt_learner.prompts.features(
            self.clip,
            self.shared_prompt() if prompts is None else prompts,
            per_sample=per_sample,
            deep_prompts=deep_prompts,
            chunk_size=self.chunk_size,
            classes=classes,
            share_prefix=self.share_prefix,
        )

    def image_features(
        self,
        image: torch.Tensor,
        prompts: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image features [B, E] under the prompts' image side: none here, so the prompt-free
        feature `cond` serves when the caller has it."""
        return encode_image(self.clip, image) if cond is None else cond

    def cache_text_features(self) -> None:
        with torch.no_grad():
            self._text_cache = self.text_features(self.shared_prompt())

    def clear_cache(self) -> None:
        self._text_cache = None

    def class_features(self, prompts: torch.Tensor) -> torch.Tensor:
        """text_features of the shared prompt, from this evaluation's cache when there is one."""
        return self._text_cache if self._text_cache is not None else self.text_features(prompts)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        prompts = self.shared_prompt()
        text = self.class_features(prompts)
        return logits_from_features(self.clip, self.image_features(image, prompts), text)

    # ---- the DiffusionHooks ----
    def condition(self, image: torch.Tensor) -> torch.Tensor:
        """The prompt-free, L2-normalised image feature [B, E]."""
        return F.normalize(encode_image(self.clip, image).float(), dim=-1)

    def base_prompt(self, cond: torch.Tensor) -> torch.Tensor:
        """The shared prompt, one copy per image: [B, *S]."""
        prompts = self.shared_prompt()
        return prompts.unsqueeze(0).expand(cond.shape[0], *prompts.shape)

    def logits_for(
        self,
        image: torch.Tensor,
        cond: torch.Tensor,
        prompts: torch.Tensor,
        classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, C] of each image with its own prompt (all class prompts per image), or
        [B, k] over the classes [B, k] given per image."""
        text = self.text_features(prompts, per_sample=True, classes=classes)
        return logits_from_features(self.clip, self.image_features(image, prompts, cond), text)
