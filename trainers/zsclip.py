"""Zero-shot CLIP with the CLIP paper's hand-written template per dataset (evaluation only)."""

from __future__ import annotations

import torch

from promptdiff.backbone import cast_for_precision, check_input_size, load_clip
from promptdiff.backbone.encoders import encode_image, encode_text_tokens
from promptdiff.backbone.prompts import tokenize
from promptdiff.config_keys import declare_keys
from promptdiff.host import TRAINER_REGISTRY, TrainerX, log
from trainers.base import logits_from_features

declare_keys("TRAINER.ZSCLIP", PREC="fp16")

CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """Classifies with CLIP's features of "<template with class name>"; nothing is trained."""

    CFG_KEY = "ZSCLIP"  # its TRAINER.ZSCLIP block, named as the prompted trainers name theirs

    def build_model(self) -> None:
        cfg = self.cfg
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH, self.device)
        check_input_size(clip_model, cfg.INPUT.SIZE)
        cast_for_precision(clip_model, cfg.TRAINER[self.CFG_KEY].PREC, self.device)
        template = CUSTOM_TEMPLATES.get(cfg.DATASET.NAME, DEFAULT_TEMPLATE)
        prompts = [template.format(c.replace("_", " ")) for c in self.dm.dataset.classnames]
        log(f"Prompts: {prompts}")
        with torch.no_grad():
            self.text_features = encode_text_tokens(clip_model, tokenize(prompts).to(self.device))
        self.clip_model = clip_model

    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        return logits_from_features(
            self.clip_model, encode_image(self.clip_model, image), self.text_features
        )

    def train(self):
        raise RuntimeError("ZeroshotCLIP trains nothing; run train.py with --eval-only.")
