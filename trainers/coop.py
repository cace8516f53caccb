"""CoOp (Zhou et al., IJCV 2022): a learned context shared by all class prompts."""

from __future__ import annotations

from torch import nn

from promptdiff.backbone.prompts import ClassPrompts, context_init
from promptdiff.config_keys import declare_keys
from promptdiff.host import TRAINER_REGISTRY, log
from promptdiff.trainers.base import ClipPromptTrainer
from promptdiff.trainers.prompt_diffusion import PromptDiffusionMixin
from promptdiff.trainers.prompted import PromptedCLIP, text_settings

declare_keys(
    "TRAINER.COOP", N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end"
)


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


class CoOpCLIP(PromptedCLIP):
    """Frozen CLIP + CoOp's context [M, D] (or [C, M, D] with CSC), shared by all images."""


@TRAINER_REGISTRY.register()
class CoOp(ClipPromptTrainer):
    """Context Optimization: TRAINER.COOP.{N_CTX, CSC, CTX_INIT, PREC, CLASS_TOKEN_POSITION}."""

    CFG_KEY = "COOP"

    @classmethod
    def build_prompt_model(cls, cfg, classnames, clip_model):
        learner = CoOpPromptLearner(cfg.TRAINER.COOP, classnames, clip_model)
        return CoOpCLIP(learner, clip_model, *text_settings(cfg))


@TRAINER_REGISTRY.register()
class CoOpDiff(PromptDiffusionMixin, CoOp):
    """CoOp + prompt diffusion over the context [M, D]: each image gets its own context."""
