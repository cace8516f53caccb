"""Zero-shot CLIP with the CLIP paper's hand-written template per dataset (evaluation only)."""

from __future__ import annotations

import torch

from promptdiff.backbone import cast_for_precision, check_input_size, load_clip
from promptdiff.backbone.classifier import dataset_template, logits_from_features, template_features
from promptdiff.backbone.encoders import encode_image
from promptdiff.config_keys import declare_keys
from promptdiff.host import TRAINER_REGISTRY, TrainerX, log

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
        template = dataset_template(cfg.DATASET.NAME)
        classnames = self.dm.dataset.classnames
        log(f"Prompts: {[template.format(c.replace('_', ' ')) for c in classnames]}")
        self.text_features = template_features(clip_model, classnames, [template])[0]
        self.clip_model = clip_model

    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        return logits_from_features(
            self.clip_model, encode_image(self.clip_model, image), self.text_features
        )

    def train(self):
        raise RuntimeError("ZeroshotCLIP trains nothing; run train.py with --eval-only.")
