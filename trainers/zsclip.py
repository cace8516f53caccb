"""Zero-shot CLIP with the CLIP paper's hand-written template per dataset (evaluation only)."""

from __future__ import annotations

import torch
from torch import nn

from promptdiff.backbone import cast_for_precision, check_input_size, load_clip
from promptdiff.backbone.classifier import dataset_template
from promptdiff.config_keys import declare_keys
from promptdiff.host import TRAINER_REGISTRY, TrainerX, log
from promptdiff.trainers.prompted import TemplateCLIP, build_prompted_clip

declare_keys("TRAINER.ZSCLIP", PREC="fp16")


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """Classifies with CLIP's features of "<template with class name>"; nothing is trained."""

    CFG_KEY = "ZSCLIP"  # its TRAINER.ZSCLIP block, named as the prompted trainers name theirs

    def build_model(self) -> None:
        cfg = self.cfg
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH, self.device)
        check_input_size(clip_model, cfg.INPUT.SIZE)
        cast_for_precision(clip_model, cfg.TRAINER[self.CFG_KEY].PREC, self.device)
        self.model = build_prompted_clip(cfg, self.dm.dataset.classnames, clip_model)

    @classmethod
    def build_prompt_model(cls, cfg, classnames: list[str], clip_model: nn.Module) -> TemplateCLIP:
        """The fixed-template classifier with the dataset's template (see build_prompted_clip)."""
        template = dataset_template(cfg.DATASET.NAME)
        log(f"Prompts: {[template.format(c.replace('_', ' ')) for c in classnames]}")
        return TemplateCLIP(clip_model, classnames, template)

    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def train(self):
        raise RuntimeError("ZeroshotCLIP trains nothing; run train.py with --eval-only.")
