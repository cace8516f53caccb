"""CLIP as a classifier: the logits, ZeroshotCLIP's fixed-template classifier, the frozen CLIP with
a prompt learner that every baseline's model extends, the hooks prompt diffusion
(trainers/prompt_diffusion.py) calls on it, and `build_prompted_clip`, which builds any trainer's
model from a config, its class names and a CLIP, without building the trainer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from promptdiff.backbone.classifier import template_features
from promptdiff.backbone.encoders import encode_image
from promptdiff.config_keys import declare_keys
from promptdiff.engine.config import rename_key
from promptdiff.host import TRAINER_REGISTRY


def logits_from_features(
    clip_model: nn.Module, image_features: torch.Tensor, text_features: torch.Tensor
) -> torch.Tensor:
    """CLIP logits: scaled cosine similarity; text_features [C, E] or per image [B, C, E]."""
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    scale = clip_model.logit_scale.exp().float()
    if text_features.dim() == 2:
        return scale * image_features @ text_features.t()
    return scale * torch.einsum("be,bce->bc", image_features, text_features)


def build_prompted_clip(cfg, classnames: Sequence[str], clip_model: nn.Module) -> nn.Module:
    """The model of trainer cfg.TRAINER.NAME (any host) for these classes around a loaded CLIP,
    which is frozen here: its PromptedCLIP on CLIP's device with fp32 prompts, or ZeroshotCLIP's
    TemplateCLIP; the trainers, predict and the tools build their models with it."""
    for p in clip_model.parameters():
        p.requires_grad_(False)
    trainer_class = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    model = trainer_class.build_prompt_model(cfg, list(classnames), clip_model)
    model = model.to(clip_model.token_embedding.weight.device)
    learner = getattr(model, "prompt_learner", None)
    if learner is not None:
        # trainable tensors stay fp32 (master copies), whatever CLIP's dtype
        learner.float()
    return model


class TemplateCLIP(nn.Module):
    """Frozen CLIP classifying each image by its features of "<template with class name>"."""

    def __init__(self, clip_model: nn.Module, classnames: list[str], template: str):
        super().__init__()
        self.clip = clip_model
        text = template_features(clip_model, classnames, [template])[0]
        # derived from the classes and the frozen CLIP: never part of a checkpoint
        self.register_buffer("class_text_features", text, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image_features = encode_image(self.clip, image)
        return logits_from_features(self.clip, image_features, self.class_text_features)


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
