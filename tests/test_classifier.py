"""promptdiff.backbone.classifier: the fixed-template class features and the templates' defaults;
CLIP's logits from them (promptdiff.trainers.prompted)."""

from __future__ import annotations

import clip
import pytest
import torch

from promptdiff.backbone import tiny_clip
from promptdiff.backbone.classifier import (
    DEFAULT_TEMPLATE,
    dataset_template,
    prefix_template,
    template_features,
)
from promptdiff.trainers.prompted import logits_from_features


@pytest.mark.parametrize(
    "prefix, template",
    [("a photo of a", "a photo of a {}."), ("a_drawing  of ", "a drawing  of {}."),
     ("", DEFAULT_TEMPLATE), ("  ", DEFAULT_TEMPLATE), ("odd {x}", "odd {{x}} {}.")],
)  # fmt: skip
def test_prefix_template(prefix, template):
    assert prefix_template(prefix) == template
    assert template.format("dog").endswith("dog.")


def test_dataset_template_falls_back_to_the_default():
    assert dataset_template("EuroSAT") == "a centered satellite photo of {}."
    assert dataset_template("MiniWorld") == DEFAULT_TEMPLATE == "a photo of a {}."


def test_template_features_equal_clips_encode_text():
    model = tiny_clip().eval()
    names = ["sea_lion", "dog"]
    templates = ["a photo of a {}.", "{} texture."]
    feats = template_features(model, names, templates)
    assert feats.shape == (2, 2, 32) and not feats.requires_grad
    with torch.no_grad():
        for t, template in enumerate(templates):
            texts = [template.format(n.replace("_", " ")) for n in names]
            torch.testing.assert_close(feats[t], model.encode_text(clip.tokenize(texts)))
    image = torch.randn(3, 32)
    logits = logits_from_features(model, image, feats[0])
    cos = torch.nn.functional.cosine_similarity(image[:, None], feats[0][None], dim=-1)
    torch.testing.assert_close(logits, model.logit_scale.exp() * cos)
