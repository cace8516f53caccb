"""IVLP (independent vision-language prompting, the ablation of the MaPLe repository): deep text
prompts and deep vision prompts learned side by side, with no coupling between them.

Text side as MaPLe's (trainers/maple.py): a context [n_t, Dt] after SOS, initialised by the same
CTX_INIT / N_CTX_TEXT rule, and PROMPT_DEPTH_TEXT - 1 deeper text prompts (N(0, 0.02)). Vision side
as VPT's (trainers/vpt.py): PROMPT_DEPTH_VISION layers of N_CTX_VISION prompt tokens (N(0, 0.02));
PROMPT_DEPTH_VISION 0 or N_CTX_VISION 0 learns no vision prompts (upstream's "language only"
config). Both stacks go through MaPLe's MultiModalPromptedCLIP; IVLPDiff diffuses the text stack
[L, n, Dt] and keeps the shared vision prompts.

The checkpoint holds `ctx`, `compound_prompts_text.<i>` and `vision_ctx` [L, n, Dv]. Upstream keeps
the deeper prompts inside its forked CLIP's blocks and saves the whole model under
`VLPromptLearner/`; UPSTREAM_PROMPTS maps those names, so upstream IVLP and PromptSRC checkpoints
load (`--model-dir` of an upstream run, or one file as MODEL.INIT_WEIGHTS).
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from promptdiff.backbone.encoders import text_layers, text_width, vision_layers, vision_width
from promptdiff.backbone.prompts import ClassPrompts
from promptdiff.config_keys import declare_keys
from promptdiff.host import TRAINER_REGISTRY, load_checkpoint, log
from promptdiff.trainers.maple import (
    DeepTextPrompts,
    MaPLe,
    MultiModalPromptedCLIP,
    deeper_text_prompts,
    maple_context,
)
from promptdiff.trainers.prompt_diffusion import PromptDiffusionMixin
from promptdiff.trainers.prompted import text_settings

declare_keys(
    "TRAINER.IVLP",
    N_CTX_VISION=2,
    N_CTX_TEXT=2,
    CTX_INIT="a photo of a",
    PREC="fp16",
    PROMPT_DEPTH_VISION=9,  # 0: no vision prompts (language-only IVLP)
    PROMPT_DEPTH_TEXT=9,
)

# upstream's state-dict names of the prompts -> (tower, layer); a layer of None is the block index
UPSTREAM_PROMPTS = (
    (re.compile(r"prompt_learner\.ctx"), "text", 0),
    (re.compile(r"text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow"), "text", None),
    (re.compile(r"image_encoder\.VPT"), "vision", 0),
    (re.compile(r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow"), "vision", None),
)
# the folder upstream IVLP and PromptSRC register their whole CustomCLIP under
UPSTREAM_MODEL = "VLPromptLearner"


def is_upstream_state(state_dict: dict) -> bool:
    """True for a state dict in upstream's layout (prompts inside CLIP's blocks)."""
    return any(pattern.fullmatch(k) for k in state_dict for pattern, _, _ in UPSTREAM_PROMPTS)


def from_upstream(state_dict: dict) -> dict:
    """The prompts of an upstream IVLP/PromptSRC state dict in this project's names; upstream's
    copy of the frozen CLIP and its class-token buffers are dropped."""
    layers: dict[str, dict[int, torch.Tensor]] = {"text": {}, "vision": {}}
    for key, value in state_dict.items():
        for pattern, tower, layer in UPSTREAM_PROMPTS:
            match = pattern.fullmatch(key)
            if match:
                layers[tower][int(match.group(1)) if layer is None else layer] = value
    state = {}
    for tower, found in layers.items():
        if found and sorted(found) != list(range(len(found))):
            raise ValueError(
                f"The upstream checkpoint holds {tower} prompts of layers {sorted(found)}, not "
                f"0..{len(found) - 1}; it is not an IVLP or PromptSRC checkpoint."
            )
    text, vision = layers["text"], layers["vision"]
    if text:
        state["ctx"] = text[0]
        state.update({f"compound_prompts_text.{i - 1}": text[i] for i in range(1, len(text))})
    if vision:
        state["vision_ctx"] = torch.stack([vision[i] for i in range(len(vision))])
    return state


class IVLPPromptLearner(DeepTextPrompts):
    """Deep text prompts [L_t, n_t, Dt] and independent deep vision prompts [L_v, n_v, Dv]."""

    def __init__(
        self, opts, classnames: list[str], clip_model: nn.Module, key: str = "TRAINER.IVLP"
    ):
        super().__init__()
        depth_t, depth_v = opts.PROMPT_DEPTH_TEXT, opts.PROMPT_DEPTH_VISION
        if not 1 <= depth_t <= text_layers(clip_model):
            raise ValueError(
                f"{key}.PROMPT_DEPTH_TEXT {depth_t} must lie in "
                f"1..{text_layers(clip_model)} (the backbone's text layers); for vision prompts "
                f"only use the VPT trainer."
            )
        if depth_v < 0 or opts.N_CTX_VISION < 0:
            raise ValueError(
                f"{key}.PROMPT_DEPTH_VISION ({depth_v}) and N_CTX_VISION "
                f"({opts.N_CTX_VISION}) must be >= 0 (0 = no vision prompts)."
            )
        vectors, prefix_text = maple_context(clip_model, opts.CTX_INIT, opts.N_CTX_TEXT, key)
        n_ctx = vectors.shape[0]
        self.ctx = nn.Parameter(vectors)
        self.compound_prompts_text = deeper_text_prompts(depth_t, n_ctx, text_width(clip_model))
        self.prompts = ClassPrompts(clip_model, classnames, prefix_text, n_ctx)
        self.vision_ctx = None
        if depth_v and opts.N_CTX_VISION:
            if depth_v > vision_layers(clip_model):  # also rejects non-ViT backbones
                raise ValueError(
                    f"{key}.PROMPT_DEPTH_VISION {depth_v} must lie in "
                    f"0..{vision_layers(clip_model)} (the backbone's vision layers)."
                )
            vision = torch.empty(depth_v, opts.N_CTX_VISION, vision_width(clip_model))
            nn.init.normal_(vision, std=0.02)
            self.vision_ctx = nn.Parameter(vision)
        log("Independent V-L design")
        log(f'Initial text context: "{prefix_text}"')
        log(f"Number of context words (tokens) for language prompting: {n_ctx}; depth {depth_t}")
        n_vision = opts.N_CTX_VISION if self.vision_ctx is not None else 0
        log(f"Number of context words (tokens) for vision prompting: {n_vision}; depth {depth_v}")

    def vision_prompts(self, text_prompts: torch.Tensor) -> torch.Tensor | None:
        """The learned vision prompts, the same whatever the text prompts (no coupling)."""
        return self.vision_ctx


@TRAINER_REGISTRY.register()
class IVLP(MaPLe):
    """Independent V-L prompting: TRAINER.IVLP.{N_CTX_TEXT, N_CTX_VISION, CTX_INIT, PREC,
    PROMPT_DEPTH_TEXT, PROMPT_DEPTH_VISION}."""

    CFG_KEY = "IVLP"

    @classmethod
    def build_prompt_model(cls, cfg, classnames, clip_model):
        learner = IVLPPromptLearner(cfg.TRAINER.IVLP, classnames, clip_model)
        return MultiModalPromptedCLIP(learner, clip_model, *text_settings(cfg))

    def filter_loaded_state_dict(self, name: str, state_dict: dict) -> dict:
        if name == "prompt_learner" and is_upstream_state(state_dict):
            state_dict = from_upstream(state_dict)
        return super().filter_loaded_state_dict(name, state_dict)

    def load_model(self, directory: str, epoch: int | None = None, check_run: bool = False) -> None:
        upstream = os.path.join(directory or "", UPSTREAM_MODEL)
        mine = os.path.join(directory or "", "prompt_learner")
        if not directory or os.path.isdir(mine) or not os.path.isdir(upstream):
            return super().load_model(directory, epoch, check_run)
        if self.get_model_names() != ["prompt_learner"]:
            raise FileNotFoundError(
                f"{directory} holds an upstream {UPSTREAM_MODEL} checkpoint, which has no "
                f"{', '.join(self.get_model_names()[1:])}; evaluate it with "
                f"--trainer {self.cfg.TRAINER.NAME.removesuffix('Diff')}."
            )
        fpath = os.path.join(
            upstream, "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        )
        ckpt = load_checkpoint(fpath)
        log(f"Load upstream {fpath} to prompt_learner (epoch={ckpt.get('epoch')})")
        state = self.filter_loaded_state_dict("prompt_learner", ckpt["state_dict"])
        self.load_state_strict("prompt_learner", state, fpath)
        self.evaluated_epoch = ckpt.get("epoch")


@TRAINER_REGISTRY.register()
class IVLPDiff(PromptDiffusionMixin, IVLP):
    """IVLP + prompt diffusion over the text prompts [L, n, Dt]; the vision prompts stay shared."""
