"""Deep vision prompting ("VPT" as configured in the MaPLe repository): learnable prompt tokens in
CLIP's image encoder, a fixed hand-written text prompt.

Prompts [depth, n, Dv] (initialised N(0, 0.02)): layer 0 is appended after the patch tokens, layer
i in 1..depth-1 replaces the previous layer's prompt tokens before image block i (see
promptdiff/backbone/encoders.py). The text side is "<CTX_INIT> <class>." ("a photo of a" when
CTX_INIT is empty; upstream always uses "a photo of a", the default of CTX_INIT); since the text
encoder is frozen and nothing textual is learned, its class features are computed once when the
model is built.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from promptdiff.backbone.classifier import prefix_template, template_features
from promptdiff.backbone.encoders import encode_image, vision_layers, vision_width
from promptdiff.backbone.loader import _clip
from promptdiff.config_keys import declare_keys
from promptdiff.host import TRAINER_REGISTRY, log
from promptdiff.trainers.base import ClipPromptTrainer
from promptdiff.trainers.prompt_diffusion import PromptDiffusionMixin
from promptdiff.trainers.prompted import PromptedCLIP

declare_keys(
    "TRAINER.VPT", N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1
)


# CLIP model -> the initial prompts upstream_prompt_draws drew while it was built
UPSTREAM_DRAWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def upstream_prompt_draws(depth: int, n_ctx: int):
    """While CLIP is built, draw the VPT prompts where upstream's CLIP fork draws them, so a seed
    gives upstream's initial prompts: layer 0 right after the vision patch embedding, layer i
    (0 < i < depth) at the end of vision block i; yields the list the layers are appended to,
    which UPSTREAM_DRAWS also keeps under the CLIP built."""
    clip_model = _clip().model
    drawn: list[torch.Tensor] = []
    blocks = []

    def draw(width: int) -> None:
        vectors = torch.empty(n_ctx, width)
        nn.init.normal_(vectors, std=0.02)
        drawn.append(vectors)

    def hook(module: nn.Module, name: str, submodule: nn.Module) -> None:
        if name == "visual":  # the vision tower is complete; `module` is the CLIP
            blocks.append(None)
            UPSTREAM_DRAWS[module] = drawn
        elif None in blocks:
            return
        elif name == "conv1" and isinstance(module, clip_model.VisionTransformer):
            draw(submodule.out_channels)
        elif name == "ln_2" and isinstance(module, clip_model.ResidualAttentionBlock):
            blocks.append(module)
            if 1 < len(blocks) <= depth:
                draw(submodule.normalized_shape[0])

    handle = register_module_module_registration_hook(hook)
    try:
        yield drawn
    finally:
        handle.remove()


class VPTPromptLearner(nn.Module):
    """The deep vision prompts [depth, n, Dv]; `initial` (one [n, Dv] tensor per layer) comes from
    upstream_prompt_draws, otherwise they are drawn here."""

    def __init__(self, opts, clip_model: nn.Module, initial: list[torch.Tensor] | None = None):
        super().__init__()
        depth, n_ctx = opts.PROMPT_DEPTH_VISION, opts.N_CTX_VISION
        n_layers = vision_layers(clip_model)  # also rejects non-ViT backbones in one sentence
        if not 1 <= depth <= n_layers:
            raise ValueError(
                f"TRAINER.VPT.PROMPT_DEPTH_VISION {depth} must lie in 1..{n_layers} (the "
                f"backbone's vision layers)."
            )
        if n_ctx < 1:
            raise ValueError(f"TRAINER.VPT.N_CTX_VISION must be >= 1 (got {n_ctx}).")
        if initial is not None and len(initial) == depth:
            vectors = torch.stack(initial)
        else:
            vectors = torch.empty(depth, n_ctx, vision_width(clip_model))
            nn.init.normal_(vectors, std=0.02)
        self.ctx = nn.Parameter(vectors)
        log(f"Vision prompts: {n_ctx} tokens at each of {depth} layers")


class VisionPromptedCLIP(PromptedCLIP):
    """Frozen CLIP with deep vision prompts (the learner's `ctx`) and fixed class text features.

    template: the text prompt of every class, `{}` = its name (promptdiff.backbone.classifier).
    diffuse_layers (VPTDiff): the prompt diffusion generates the first k layers per image; the
    remaining layers stay the learned shared prompts (0 = all layers).
    """

    def __init__(
        self,
        prompt_learner: VPTPromptLearner,
        clip_model: nn.Module,
        classnames: list[str],
        template: str,
        diffuse_layers: int = 0,
    ):
        super().__init__(prompt_learner, clip_model)
        depth = prompt_learner.ctx.shape[0]
        self.diffuse_layers = diffuse_layers or depth
        log(f'Text prompt: "{template.format("<class>")}"')
        text = template_features(clip_model, classnames, [template])[0]
        # derived from the classes and the frozen CLIP: never part of a checkpoint
        self.register_buffer("class_text_features", text, persistent=False)

    def text_features(self, *args, **kwargs) -> torch.Tensor:
        """The fixed class features [C, E], whatever the prompts and options."""
        return self.class_text_features

    def image_features(self, image: torch.Tensor, prompts=None, cond=None) -> torch.Tensor:
        return encode_image(self.clip, image, prompts)

    def base_prompt(self, cond: torch.Tensor) -> torch.Tensor:
        """The first diffuse_layers layers of the shared prompts, one copy per image: [B, k, n, Dv]."""
        ctx = self.prompt_learner.ctx[: self.diffuse_layers]
        return ctx.unsqueeze(0).expand(cond.shape[0], *ctx.shape)

    def logits_for(
        self, image: torch.Tensor, cond: torch.Tensor, prompts: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, C] of each image encoded with its own prompts [B, k, n, Dv] (+ shared rest)."""
        rest = self.prompt_learner.ctx[self.diffuse_layers :]
        if rest.shape[0]:
            rest = rest.to(prompts.dtype).unsqueeze(0).expand(prompts.shape[0], *rest.shape)
            prompts = torch.cat([prompts, rest], dim=1)
        return super().logits_for(image, cond, prompts)


@TRAINER_REGISTRY.register()
class VPT(ClipPromptTrainer):
    """Deep vision prompting: TRAINER.VPT.{N_CTX_VISION, CTX_INIT, PREC, PROMPT_DEPTH_VISION}."""

    CFG_KEY = "VPT"

    def build_model(self) -> None:
        opts = self.cfg.TRAINER.VPT
        with upstream_prompt_draws(opts.PROMPT_DEPTH_VISION, opts.N_CTX_VISION):
            super().build_model()

    @classmethod
    def build_prompt_model(cls, cfg, classnames, clip_model):
        opts = cfg.TRAINER.VPT
        learner = VPTPromptLearner(opts, clip_model, UPSTREAM_DRAWS.pop(clip_model, None))
        return VisionPromptedCLIP(learner, clip_model, classnames, prefix_template(opts.CTX_INIT))


@TRAINER_REGISTRY.register()
class VPTDiff(PromptDiffusionMixin, VPT):
    """VPT + prompt diffusion over the vision prompt stack [depth, n, Dv], or its first
    TRAINER.PD.DIFFUSE_LAYERS layers when that key is > 0."""

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        # the mixin has checked k >= 0; the upper bound is VPT's depth
        k, depth = cfg.TRAINER.PD.DIFFUSE_LAYERS, cfg.TRAINER.VPT.PROMPT_DEPTH_VISION
        if k > depth:
            raise ValueError(
                f"TRAINER.PD.DIFFUSE_LAYERS {k} must lie in 0..TRAINER.VPT.PROMPT_DEPTH_VISION "
                f"({depth}); 0 diffuses all layers."
            )

    @classmethod
    def build_prompt_model(cls, cfg, classnames, clip_model):
        model = super().build_prompt_model(cfg, classnames, clip_model)
        model.diffuse_layers = cfg.TRAINER.PD.DIFFUSE_LAYERS or model.diffuse_layers
        return model
