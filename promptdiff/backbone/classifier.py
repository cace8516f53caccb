"""The fixed-template class features that ZeroshotCLIP, VPT's text side and GenPT's hand-crafted
view are built from, and the templates (the classifier itself: promptdiff/trainers/prompted.py)."""

from __future__ import annotations

import torch
from torch import nn

from promptdiff.backbone.encoders import encode_text_tokens
from promptdiff.backbone.prompts import tokenize

# The CLIP paper's hand-written template per dataset (CoOp's ZeroshotCLIP table); `{}` = class name.
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
# the one fixed template wherever a dataset has none of its own or a trainer needs a default
DEFAULT_TEMPLATE = "a photo of a {}."


def dataset_template(dataset: str) -> str:
    """The dataset's hand-written template (CUSTOM_TEMPLATES), or DEFAULT_TEMPLATE."""
    return CUSTOM_TEMPLATES.get(dataset, DEFAULT_TEMPLATE)


def prefix_template(prefix: str) -> str:
    """The template "<prefix> {}." of a prompt prefix such as a CTX_INIT ("a_photo of" ->
    "a photo of {}."); an empty prefix gives DEFAULT_TEMPLATE."""
    words = prefix.replace("_", " ").strip()
    if not words:
        return DEFAULT_TEMPLATE
    return words.replace("{", "{{").replace("}", "}}") + " {}."


@torch.no_grad()
def template_features(
    clip_model: nn.Module, classnames: list[str], templates: list[str]
) -> torch.Tensor:
    """Frozen text features [T, C, E] of every class name ("_" read as a space) in every template
    (`{}` = the class name), in CLIP's dtype; computed once when a model is built."""
    names = [name.replace("_", " ") for name in classnames]
    device = clip_model.token_embedding.weight.device
    return torch.stack(
        [
            encode_text_tokens(clip_model, tokenize([t.format(n) for n in names]).to(device))
            for t in templates
        ]
    )
