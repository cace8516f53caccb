"""build_prompted_clip: every trainer's model from a config, class names and a CLIP, without a
trainer, gives the logits the trainer's own model gives."""

from __future__ import annotations

import pytest
import torch
from conftest import train_args

from promptdiff.backbone import cast_for_precision, check_input_size, load_clip
from train import build_parser, setup_cfg

# trainer -> (config, options that fit the 2-layer tiny CLIP)
HOSTS = {
    "ZeroshotCLIP": ("CoOp/vit_b16_ep50", ()),
    "CoOp": ("CoOp/vit_b16_ep50", ()),
    "CoCoOp": ("CoCoOp/vit_b16_c4_ep10_batch1_ctxv1", ()),
    "VPT": ("VPT/vit_b16_c2_ep5_batch4_8ctx", ("TRAINER.VPT.PROMPT_DEPTH_VISION", "2")),
    "MaPLe": ("MaPLe/vit_b16_c2_ep5_batch4_2ctx", ("TRAINER.MAPLE.PROMPT_DEPTH", "2")),
    "IVLP": (
        "IVLP/vit_b16_c2_ep5_batch4_2+2ctx",
        ("TRAINER.IVLP.PROMPT_DEPTH_TEXT", "2", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "2"),
    ),
    "GenPT": ("GenPT/vit_b16_c4_ep10_batch8_ctxv1", ()),
    "PromptSRC": (
        "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx",
        ("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"),
    ),
}
DIFF = ("TRAINER.PD.WIDTH", "32", "TRAINER.PD.DEPTH", "1", "TRAINER.PD.HEADS", "2")


def _registered() -> list[str]:
    import promptdiff.trainers  # noqa: F401
    from promptdiff.host import TRAINER_REGISTRY

    return sorted(TRAINER_REGISTRY.registered_names())


def test_every_registered_trainer_is_covered():
    assert {n.removesuffix("Diff") for n in _registered()} == set(HOSTS)


@pytest.mark.parametrize("name", _registered())
def test_factory_logits_equal_the_trainers(name, shapes_root, tiny_weights, tmp_path):
    import promptdiff.datasets  # noqa: F401
    from promptdiff.host import TRAINER_REGISTRY, build_trainer, set_random_seed
    from promptdiff.trainers.prompted import build_prompted_clip

    config, extra = HOSTS[name.removesuffix("Diff")]
    key = TRAINER_REGISTRY.get(name).CFG_KEY
    diff = DIFF if name.endswith("Diff") else ()
    args = train_args(
        shapes_root, str(tmp_path), name, config, tiny_weights, *extra, *diff, prec_key=key
    )
    cfg = setup_cfg(build_parser().parse_args(args))
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    # the trainer's model: its trained-looking prompts (perturbed, so defaults cannot agree)
    learner = getattr(trainer.model, "prompt_learner", None)
    if learner is not None:
        with torch.no_grad():
            for p in learner.parameters():
                p.add_(0.01 * torch.randn_like(p))

    clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH)
    check_input_size(clip_model, cfg.INPUT.SIZE)
    cast_for_precision(clip_model, cfg.TRAINER[key].PREC, "cpu")
    model = build_prompted_clip(cfg, trainer.dm.dataset.classnames, clip_model)
    assert type(model) is type(trainer.model)
    assert not any(p.requires_grad for p in model.clip.parameters())
    if learner is not None:
        model.prompt_learner.load_state_dict(learner.state_dict())
        assert all(p.dtype == torch.float32 for p in model.prompt_learner.parameters())

    images = next(iter(trainer.test_loader))["img"]
    trainer.set_model_mode("eval")
    model.eval()
    with torch.no_grad():
        expected = trainer.model(images)
        if not name.endswith("Diff"):  # a *Diff trainer's inference samples; its model is this
            torch.testing.assert_close(trainer.model_inference(images), expected, rtol=0, atol=0)
        assert torch.equal(model(images), expected)
