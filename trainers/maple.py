"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompts, text prompts coupled to vision prompts.

Text side: a context [n, Dt] inserted after SOS (layer 0) and PROMPT_DEPTH - 1 deeper text prompts
[n, Dt] (N(0, 0.02)) that replace the context tokens before text blocks 1..PROMPT_DEPTH-1. Vision
side: each text-side prompt is mapped by its own Linear Dt -> Dv ("proj" for layer 0,
"compound_prompt_projections.<i>" for the deeper ones) into the vision prompts of the same layer.
Parameter names follow upstream, so upstream prompt_learner checkpoints load.

Context initialisation as upstream: with CTX_INIT and N_CTX <= 4 the class prompts read
"<CTX_INIT> <class>." and the first N_CTX tokens after SOS are the learned context, initialised
from their own embeddings: N_CTX 2 with "a photo of a" learns "a photo" and keeps "of a" fixed
(the initial prompt is exactly "a photo of a <class>."). N_CTX larger than CTX_INIT's word count
would overwrite the class name, so it is an error here. With N_CTX > 4 or no CTX_INIT the context
is N(0, 0.02) noise with "X" placeholders. Upstream clones one coupling layer for all deeper
layers (identical initial weights); that is kept. Widths come from the loaded CLIP.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from promptdiff.backbone.encoders import (
    encode_image,
    text_layers,
    text_width,
    vision_layers,
    vision_width,
)
from promptdiff.backbone.prompts import ClassPrompts, context_init
from promptdiff.config_keys import declare_keys
from promptdiff.host import TRAINER_REGISTRY, log
from promptdiff.trainers.base import ClipPromptTrainer
from promptdiff.trainers.prompt_diffusion import PromptDiffusionMixin
from promptdiff.trainers.prompted import PromptedCLIP, text_settings

declare_keys("TRAINER.MAPLE", N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9)


def maple_context(
    clip_model: nn.Module, ctx_init: str, n_ctx: int, key: str = "TRAINER.MAPLE"
) -> tuple[torch.Tensor, str]:
    """Context vectors [n_ctx, Dt] and the prefix text of the class prompts (upstream rule); key
    names the config namespace in errors (IVLP shares the rule with N_CTX_TEXT)."""
    n_key = f"{key}.N_CTX" if key == "TRAINER.MAPLE" else f"{key}.N_CTX_TEXT"
    if n_ctx < 1:
        raise ValueError(f"{n_key} must be >= 1 (got {n_ctx}).")
    if ctx_init and n_ctx <= 4:
        words, prefix_text = context_init(clip_model, ctx_init, n_ctx)
        if n_ctx > words.shape[0]:
            raise ValueError(
                f"{n_key} {n_ctx} is larger than the {words.shape[0]} words of "
                f'{key}.CTX_INIT "{prefix_text}"; the context would overwrite the class '
                f"name. Use {n_key.rsplit('.', 1)[1]} <= {words.shape[0]} or a longer CTX_INIT."
            )
        return words[:n_ctx].clone(), prefix_text
    if ctx_init:
        log(f"N_CTX {n_ctx} > 4: CTX_INIT is ignored and the context starts random (as upstream)")
    return context_init(clip_model, "", n_ctx)


def deeper_text_prompts(depth: int, n_ctx: int, width: int) -> nn.ParameterList:
    """The depth - 1 deeper text prompts, each [n_ctx, width] drawn from N(0, 0.02)."""
    deeper = []
    for _ in range(depth - 1):
        p = torch.empty(n_ctx, width)
        nn.init.normal_(p, std=0.02)
        deeper.append(nn.Parameter(p))
    return nn.ParameterList(deeper)


class DeepTextPrompts(nn.Module):
    """Text prompts [L, n, Dt]: `ctx` after SOS (layer 0) and `compound_prompts_text` (layers
    1..L-1); subclasses create both, plus `prompts` (ClassPrompts), and map them to vision prompts."""

    @property
    def depth(self) -> int:
        return 1 + len(self.compound_prompts_text)

    def text_prompts(self) -> torch.Tensor:
        """The shared text-side prompts [L, n, Dt]: layer 0 = ctx, then the deeper ones."""
        return torch.stack([self.ctx, *self.compound_prompts_text])


class MaPLePromptLearner(DeepTextPrompts):
    """Text-side prompts [L, n, Dt] (ctx + compound_prompts_text) and their couplings to vision."""

    def __init__(self, opts, classnames: list[str], clip_model: nn.Module):
        super().__init__()
        depth = opts.PROMPT_DEPTH
        max_depth = min(text_layers(clip_model), vision_layers(clip_model))
        if not 1 <= depth <= max_depth:
            raise ValueError(
                f"TRAINER.MAPLE.PROMPT_DEPTH {depth} must lie in 1..{max_depth} (the backbone's "
                f"text and vision layers)."
            )
        vectors, prefix_text = maple_context(clip_model, opts.CTX_INIT, opts.N_CTX)
        n_ctx, d_text, d_vision = vectors.shape[0], text_width(clip_model), vision_width(clip_model)
        log("MaPLe design: Multi-modal Prompt Learning")
        log(f'Initial context: "{prefix_text}"')
        log(f"Number of MaPLe context words (tokens): {n_ctx}; prompt depth: {depth}")
        self.ctx = nn.Parameter(vectors)
        self.proj = nn.Linear(d_text, d_vision)
        self.compound_prompts_text = deeper_text_prompts(depth, n_ctx, d_text)
        coupling = nn.Linear(d_text, d_vision)
        self.compound_prompt_projections = nn.ModuleList(
            [copy.deepcopy(coupling) for _ in range(depth - 1)]
        )
        self.prompts = ClassPrompts(clip_model, classnames, prefix_text, n_ctx)

    def vision_prompts(self, text_prompts: torch.Tensor) -> torch.Tensor:
        """Vision prompts [..., L, n, Dv] coupled to text-side prompts [..., L, n, Dt]."""
        layers = [self.proj, *self.compound_prompt_projections]
        if text_prompts.shape[-3] != len(layers):
            raise ValueError(
                f"Text-side prompts have {text_prompts.shape[-3]} layers; MaPLe's depth is "
                f"{len(layers)}."
            )
        return torch.stack(
            [layer(text_prompts[..., i, :, :]) for i, layer in enumerate(layers)], dim=-3
        )


class MultiModalPromptedCLIP(PromptedCLIP):
    """Frozen CLIP with prompts in both encoders (MaPLe's coupled ones or IVLP's independent ones:
    any DeepTextPrompts with `vision_prompts(text_prompts)`); the prompt is the text side [L, n, Dt]."""

    def shared_prompt(self) -> torch.Tensor:
        return self.prompt_learner.text_prompts()

    def text_features(
        self,
        text_prompts: torch.Tensor,
        per_sample: bool = False,
        classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class features [C, E] for prompts [L, n, Dt], or [B, C, E] for [B, L, n, Dt] ([B, k, E]
        for the classes [B, k] given per image)."""
        deep = text_prompts[..., 1:, :, :] if text_prompts.shape[-3] > 1 else None
        return super().text_features(text_prompts[..., 0, :, :], per_sample, classes, deep)

    def image_features(self, image: torch.Tensor, prompts: torch.Tensor, cond=None) -> torch.Tensor:
        return encode_image(self.clip, image, self.prompt_learner.vision_prompts(prompts))


@TRAINER_REGISTRY.register()
class MaPLe(ClipPromptTrainer):
    """Multi-modal Prompt Learning: TRAINER.MAPLE.{N_CTX, CTX_INIT, PREC, PROMPT_DEPTH}."""

    CFG_KEY = "MAPLE"

    @classmethod
    def build_prompt_model(cls, cfg, classnames, clip_model):
        learner = MaPLePromptLearner(cfg.TRAINER.MAPLE, classnames, clip_model)
        return MultiModalPromptedCLIP(learner, clip_model, *text_settings(cfg))


@TRAINER_REGISTRY.register()
class MaPLeDiff(PromptDiffusionMixin, MaPLe):
    """MaPLe + prompt diffusion over the text-side prompts [L, n, Dt]; each image's vision prompts
    follow through the learned couplings."""
