"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context shifted per image by a small meta-net.

Upstream facts kept here: the meta-net is Linear(E, E // 16) -> ReLU -> Linear(E // 16, D_text)
named meta_net.linear1 / meta_net.linear2; its input is the L2-normalised image feature and its
output is a bias added to every context vector; the context is initialised from CTX_INIT's word
embeddings (or N(0, 0.02)). Upstream trains with batch 1 and loops over the images of a batch;
here the whole batch is encoded at once (B x C class prompts, chunked by MODEL.TEXT.CHUNK),
which gives the same logits for any batch size.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from promptdiff.backbone.encoders import embed_dim, text_width
from promptdiff.backbone.prompts import ClassPrompts, context_init
from promptdiff.config_keys import declare_keys
from promptdiff.host import TRAINER_REGISTRY, log
from promptdiff.trainers.base import ClipPromptTrainer
from promptdiff.trainers.prompt_diffusion import PromptDiffusionMixin
from promptdiff.trainers.prompted import PromptedCLIP, text_settings

declare_keys("TRAINER.COCOOP", N_CTX=16, CTX_INIT="", PREC="fp16")


class CoCoOpPromptLearner(nn.Module):
    """Context [M, D], meta-net E -> D, and the class prompts the context is inserted into."""

    def __init__(self, opts, classnames: list[str], clip_model: nn.Module):
        super().__init__()
        vectors, prefix_text = context_init(clip_model, opts.CTX_INIT, opts.N_CTX)
        n_ctx = vectors.shape[0]
        log(f'Initial context: "{prefix_text}"')
        log(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(vectors)
        feat_dim = embed_dim(clip_model)
        hidden = max(feat_dim // 16, 1)  # upstream E // 16 (32 for ViT-B/16); >= 1 for tiny models
        self.meta_net = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(feat_dim, hidden)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("linear2", nn.Linear(hidden, text_width(clip_model))),
                ]
            )
        )
        self.prompts = ClassPrompts(clip_model, classnames, prefix_text, n_ctx)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image context [B, M, D] = ctx + meta_net(normalised image feature [B, E])."""
        image_features = image_features.to(device=self.ctx.device, dtype=self.ctx.dtype)
        bias = self.meta_net(image_features)
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)


class CoCoOpCLIP(PromptedCLIP):
    """Frozen CLIP + CoCoOp prompts: every image is classified with its own class prompts."""

    def cache_text_features(self) -> None:
        """Nothing is static: the class prompts depend on the image."""

    def base_prompt(self, cond: torch.Tensor) -> torch.Tensor:
        """The per-image context ctx + meta(f(x)): [B, M, D]."""
        return self.prompt_learner(cond)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        cond = self.condition(image)
        return self.logits_for(image, cond, self.base_prompt(cond))


@TRAINER_REGISTRY.register()
class CoCoOp(ClipPromptTrainer):
    """Conditional Context Optimization: TRAINER.COCOOP.{N_CTX, CTX_INIT, PREC}."""

    CFG_KEY = "COCOOP"

    @classmethod
    def build_prompt_model(cls, cfg, classnames, clip_model):
        learner = CoCoOpPromptLearner(cfg.TRAINER.COCOOP, classnames, clip_model)
        return CoCoOpCLIP(learner, clip_model, *text_settings(cfg))


@TRAINER_REGISTRY.register()
class CoCoOpDiff(PromptDiffusionMixin, CoCoOp):
    """CoCoOp + prompt diffusion over the per-image context ctx + meta(f(x)) [M, D]; the residual
    target is relative to each image's own base context."""
