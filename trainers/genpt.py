"""GenPT: Generalizable Prompt Tuning (Zhang et al., arXiv 2410.03189), and GenPTDiff.

Only the abstract is known: soft and hand-crafted prompts are two views of the text modality whose
mutual information is maximised, and a class-wise augmentation from the visual modality makes the
prompts robust on unseen classes. Everything else below is a design decision, each a key of
TRAINER.GENPT (defaults below the imports):

- Soft view: CoOp's shared learnable context [M, D] with the class name at the end (N_CTX,
  CTX_INIT, PREC as in TRAINER.COOP; CoOp's prompt learner and prompted CLIP are reused).
- Hand-crafted view: the frozen text features of "<template with class name>" for every class,
  L2-normalised, averaged over TEMPLATES and normalised again (CLIP's prompt ensembling); an empty
  TEMPLATES takes the dataset's template from ZeroshotCLIP's table. Computed once when the model is
  built (for the classes being trained or evaluated); never checkpointed.
- Mutual information: the InfoNCE lower bound over classes, I >= log C - L. The normalised soft
  feature of class c is the anchor, the hand-crafted feature of c its positive and those of the
  other classes its negatives: L = CE(s_c . h_j / MI_TEMP, c). One direction suffices because the
  hand-crafted view is frozen; its gradient reaches only the context. Loss = CE + MI_WEIGHT * L.
  InfoNCE is kept over MINE/NWJ-type bounds: with C pairs per step those are high-variance, and
  InfoNCE's ceiling log C does not matter for a term that only pulls the two views together.
  Log lines show `mi_nce` (L) and `mi_cos` (mean cosine of s_c and h_c).
- Class-wise visual augmentation (AUG_MODE): new image features are convex combinations of
  L2-normalised image features of one class, with weights ~ Dirichlet(AUG_STRENGTH) over that
  class's features (with two features this is mixup with Beta(AUG_STRENGTH, AUG_STRENGTH)).
  `mixup` mixes within the batch (classes with >= 2 images in it); `prototype` mixes the batch's
  features with a per-class memory of the AUG_MEMORY most recent features (so a class seen once in
  the batch is still augmented; with large AUG_STRENGTH the samples approach the class prototype).
  The image encoder is frozen, so remembered features never go stale. AUG_SAMPLES mixed features
  per class present in the batch are classified with the soft prompts and join the batch's
  cross-entropy as extra samples. "Class-wise augmentation from the visual modality" is read as
  augmenting the training signal of the text prompts with new visual features of each class,
  since GenPT learns only text prompts; mixing across classes (label mixing) is not done.
  The memory is a persistent buffer of the prompt learner, so a resumed run continues with it;
  --eval-only and MODEL.INIT_WEIGHTS drop it.
- Inference: the soft prompt's classifier; ENSEMBLE = w gives (1 - w) * soft + w * hand-crafted
  logits (both CLIP-scaled), in evaluation only.

With MI_WEIGHT 0 and AUG_MODE none GenPT is CoOp (tests/test_genpt.py checks logits and a step).
GenPTDiff's stage 1 is GenPT with both terms; stage 2 is the shared mixin (the terms act on the
shared context, which stage 2 keeps unless TRAINER.PD.UPDATE_BASE); ENSEMBLE also applies to the
logits of the generated prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from promptdiff.backbone.classifier import dataset_template, template_features
from promptdiff.backbone.encoders import embed_dim
from promptdiff.config_keys import declare_keys
from promptdiff.host import TRAINER_REGISTRY, log
from promptdiff.trainers.base import ClipPromptTrainer, accuracy
from promptdiff.trainers.coop import CoOpCLIP, CoOpPromptLearner
from promptdiff.trainers.prompt_diffusion import PromptDiffusionMixin
from promptdiff.trainers.prompted import logits_from_features, text_settings

# CoOp's context plus the two terms
declare_keys(
    "TRAINER.GENPT",
    test_time=("ENSEMBLE",),
    N_CTX=16,
    CTX_INIT="",
    PREC="fp16",
    TEMPLATES=[],  # hand-crafted view; [] = the dataset's template (ZeroshotCLIP's table)
    MI_WEIGHT=1.0,  # weight of the InfoNCE term between the two views; 0 disables it
    MI_TEMP=0.07,  # its temperature
    AUG_MODE="prototype",  # none | mixup (within the batch) | prototype (per-class memory)
    AUG_STRENGTH=1.0,  # Dirichlet concentration of the mixing weights
    AUG_SAMPLES=1,  # mixed features per class present in the batch
    AUG_MEMORY=8,  # prototype: recent features remembered per class
    ENSEMBLE=0.0,  # inference: weight of the hand-crafted view's logits (0 = soft prompt only)
)

AUG_MODES = ("none", "mixup", "prototype")


def check_genpt_cfg(opts) -> None:
    """One sentence for any bad TRAINER.GENPT key."""
    if opts.AUG_MODE not in AUG_MODES:
        raise ValueError(
            f"TRAINER.GENPT.AUG_MODE {opts.AUG_MODE!r} is unknown; use one of {', '.join(AUG_MODES)}."
        )
    for key in ("MI_TEMP", "AUG_STRENGTH"):
        if not opts[key] > 0:
            raise ValueError(f"TRAINER.GENPT.{key} must be > 0 (got {opts[key]}).")
    for key in ("AUG_SAMPLES", "AUG_MEMORY"):
        if opts[key] < 1:
            raise ValueError(f"TRAINER.GENPT.{key} must be >= 1 (got {opts[key]}).")
    if opts.MI_WEIGHT < 0:
        raise ValueError(f"TRAINER.GENPT.MI_WEIGHT must be >= 0 (got {opts.MI_WEIGHT}).")
    if not 0 <= opts.ENSEMBLE <= 1:
        raise ValueError(f"TRAINER.GENPT.ENSEMBLE must lie in [0, 1] (got {opts.ENSEMBLE}).")
    for template in opts.TEMPLATES:
        if not isinstance(template, str) or template.count("{}") != 1 or _unformattable(template):
            raise ValueError(
                f"TRAINER.GENPT.TEMPLATES entry {template!r} must be a string with exactly one "
                f'"{{}}" where the class name goes, e.g. "a photo of a {{}}.".'
            )


def _unformattable(template: str) -> bool:
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        return True
    return False


def handcrafted_features(
    clip_model: nn.Module,
    classnames: list[str],
    templates: Sequence[str],
    normalize_each: bool = True,
) -> torch.Tensor:
    """Frozen class features [C, E]: per template L2-normalised (PromptSRC's: not), averaged,
    normalised again."""
    views = template_features(clip_model, classnames, templates).float()
    if normalize_each:
        views = F.normalize(views, dim=-1)
    return F.normalize(views.mean(0), dim=-1)


def info_nce(soft: torch.Tensor, hand: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over classes: soft feature c against all hand-crafted features, c the positive."""
    logits = F.normalize(soft.float(), dim=-1) @ F.normalize(hand.float(), dim=-1).t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits / temperature, target)


def mix_classwise(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: torch.Tensor,
    per_class: int,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` convex combinations [k * per_class, E] of the features of each class in
    `classes` that has at least two, weights ~ Dirichlet(alpha) over that class only; and labels."""
    members = labels.unsqueeze(0) == classes.unsqueeze(1)  # [k, N]
    keep = members.sum(1) >= 2
    members = members[keep].repeat_interleave(per_class, 0)
    # float64 gammas: for small alpha float32 draws can all underflow to 0 in a row
    conc = torch.full(members.shape, float(alpha), dtype=torch.float64, device=features.device)
    weights = torch.distributions.Gamma(conc, 1.0).sample() * members
    weights = weights / weights.sum(1, keepdim=True)
    return weights.to(features.dtype) @ features, classes[keep].repeat_interleave(per_class)


class ClassMemory(nn.Module):
    """The `size` most recent features of every class (first in, first out)."""

    def __init__(self, n_cls: int, size: int, dim: int):
        super().__init__()
        self.register_buffer("features", torch.zeros(n_cls, size, dim))
        self.register_buffer("count", torch.zeros(n_cls, dtype=torch.long))

    def pool(self, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The remembered features of `classes` and their labels."""
        size = self.features.shape[1]
        filled = self.count[classes].clamp(max=size).unsqueeze(1)
        valid = torch.arange(size, device=filled.device) < filled  # [k, size]
        return self.features[classes][valid], classes.unsqueeze(1).expand_as(valid)[valid]

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Remember features in batch order, as one write per feature would (vectorised)."""
        size = self.features.shape[1]
        order = torch.argsort(labels, stable=True)
        y = labels[order]
        rank = torch.arange(len(y), device=y.device) - torch.searchsorted(y, y)  # among its class
        n_new = torch.bincount(labels, minlength=self.count.shape[0])
        keep = rank >= n_new[y] - size  # earlier ones of a class would be overwritten anyway
        slot = (self.count[y] + rank) % size
        self.features[y[keep], slot[keep]] = features[order][keep].to(self.features.dtype)
        self.count += n_new


class GenPTPromptLearner(CoOpPromptLearner):
    """CoOp's shared context [M, D] before the class names; `memory` for AUG_MODE prototype."""

    def __init__(self, opts, classnames: list[str], clip_model: nn.Module):
        coop = SimpleNamespace(
            N_CTX=opts.N_CTX, CTX_INIT=opts.CTX_INIT, CSC=False, CLASS_TOKEN_POSITION="end"
        )
        super().__init__(coop, classnames, clip_model)
        self.memory = None
        if opts.AUG_MODE == "prototype":
            self.memory = ClassMemory(len(classnames), opts.AUG_MEMORY, embed_dim(clip_model))


class GenPTCLIP(CoOpCLIP):
    """CoOp's prompted CLIP plus the hand-crafted view's class features and the inference ensemble."""

    def __init__(
        self,
        learner,
        clip_model,
        hand_features,
        ensemble: float,
        chunk_size: int = 0,
        share_prefix: bool = True,
    ):
        super().__init__(learner, clip_model, chunk_size, share_prefix)
        # derived from the classes and the frozen CLIP: never part of a checkpoint
        self.register_buffer("hand_features", hand_features, persistent=False)
        self.ensemble_weight = ensemble

    def ensemble(self, logits: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """In evaluation (prompt learner in eval mode) mix in the hand-crafted view's logits."""
        w = self.ensemble_weight
        if w == 0 or self.prompt_learner.training:
            return logits
        hand = logits_from_features(self.clip, image_features, self.hand_features)
        return (1 - w) * logits + w * hand

    def logits_for(
        self, image: torch.Tensor, cond: torch.Tensor, prompts: torch.Tensor
    ) -> torch.Tensor:
        return self.ensemble(super().logits_for(image, cond, prompts), cond)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feats = self.image_features(image)
        text = self.class_features(self.shared_prompt())
        return self.ensemble(logits_from_features(self.clip, feats, text), feats)


@TRAINER_REGISTRY.register()
class GenPT(ClipPromptTrainer):
    """Generalizable Prompt Tuning: TRAINER.GENPT.* (see the module docstring)."""

    CFG_KEY = "GENPT"

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        check_genpt_cfg(cfg.TRAINER.GENPT)

    @classmethod
    def build_prompt_model(cls, cfg, classnames, clip_model):
        opts = cfg.TRAINER.GENPT
        templates = list(opts.TEMPLATES) or [dataset_template(cfg.DATASET.NAME)]
        log(f"Hand-crafted view: {templates}")
        hand = handcrafted_features(clip_model, classnames, templates)
        learner = GenPTPromptLearner(opts, classnames, clip_model)
        return GenPTCLIP(learner, clip_model, hand, opts.ENSEMBLE, *text_settings(cfg))

    def filter_loaded_state_dict(self, name: str, state_dict: dict) -> dict:
        # the prototype memory is training state (resuming restores it); a loaded model starts
        # without, and it depends on the classes
        state = super().filter_loaded_state_dict(name, state_dict)
        if name != "prompt_learner":
            return state
        return {k: v for k, v in state.items() if not k.startswith("memory.")}

    def augment(self, feats: torch.Tensor, label: torch.Tensor):
        """Class-wise mixed image features and labels (AUG_MODE), or None."""
        opts = self.cfg.TRAINER.GENPT
        if opts.AUG_MODE == "none":
            return None
        feats = F.normalize(feats.detach().float(), dim=-1)
        classes = torch.unique(label)
        pool, pool_label = feats, label
        memory = self.model.prompt_learner.memory
        if memory is not None:
            remembered, remembered_label = memory.pool(classes)
            pool, pool_label = torch.cat([feats, remembered]), torch.cat([label, remembered_label])
            memory.push(feats, label)
        return mix_classwise(pool, pool_label, classes, opts.AUG_SAMPLES, opts.AUG_STRENGTH)

    def forward_backward(self, batch) -> dict:
        image, label = self.parse_batch_train(batch)
        opts, model = self.cfg.TRAINER.GENPT, self.model
        with self.autocast():
            text = model.text_features()
            feats = model.image_features(image)
            labels, extra = label, self.augment(feats, label)
            if extra is not None:
                feats = torch.cat([feats.float(), extra[0]])
                labels = torch.cat([label, extra[1]])
            output = logits_from_features(model.clip, feats, text)
            loss = F.cross_entropy(output.float(), labels)
        # outside autocast: bf16 cosines divided by a small temperature lose the term's precision
        nce = info_nce(text, model.hand_features, opts.MI_TEMP)
        if opts.MI_WEIGHT > 0:
            loss = loss + opts.MI_WEIGHT * nce
        self.model_backward_and_update(loss)
        with torch.no_grad():
            cos = (F.normalize(text.float(), dim=-1) * model.hand_features).sum(-1).mean()
        summary = {
            "loss": loss.item(),
            "acc": accuracy(output[: len(label)], label),
            "mi_nce": nce.item(),
            "mi_cos": cos.item(),
        }
        if extra is not None:
            summary["n_aug"] = len(extra[1])
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr("prompt_learner")
        return summary


@TRAINER_REGISTRY.register()
class GenPTDiff(PromptDiffusionMixin, GenPT):
    """GenPT + prompt diffusion over the context [M, D]: each image gets its own context."""
