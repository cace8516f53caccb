"""PromptSRC (Khattak et al., ICCV 2023): IVLP's deep independent prompts, trained with
self-regulating terms that keep them close to the frozen CLIP, and Gaussian prompt aggregation.

Prompts: IVLP's (trainers/ivlp.py), under TRAINER.PROMPTSRC: N_CTX_TEXT / N_CTX_VISION tokens at
PROMPT_DEPTH_TEXT / PROMPT_DEPTH_VISION layers, the text context initialised from CTX_INIT.
Loss = CE + L_SCL, all on L2-normalised features, as upstream:
- `scl_text`: TEXT_LOSS_WEIGHT x mean |prompted class features - frozen ones|, where the frozen
  features are the frozen CLIP's class features averaged (unnormalised) over the 60 ImageNet
  templates (promptdiff/backbone/templates.py), computed once, at the first training step;
- `scl_image`: IMAGE_LOSS_WEIGHT x mean |prompted image features - prompt-free ones|;
- `scl_logits`: KL(zero-shot || prompted) over classes, summed and divided by B x C (upstream's
  reduction), where zero-shot logits are the prompt-free image against the frozen text features.
Gaussian prompt aggregation (GPA): epoch e (1-based) of N gets the weight of the normal density
N(GPA_MEAN, GPA_STD) at e, normalised over 1..N; at each epoch's end the prompts times that weight
are added to a running sum, and after epoch N the sum replaces the prompts, so the last checkpoint
holds the aggregate and evaluation (after training or `--eval-only` of that epoch) uses it. The
sum is a buffer of the prompt learner (`gpa.*`), so a resumed run continues it exactly;
evaluation loading ignores it. In PromptSRCDiff, N is stage 1's epochs: stage 2 starts from the
aggregate. Upstream's deviations kept or changed are listed in docs/UPSTREAM.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from promptdiff.backbone.templates import IMAGENET_TEMPLATES
from promptdiff.config_keys import declare_keys
from promptdiff.diffusion import target_to_prompt
from promptdiff.host import TRAINER_REGISTRY, log
from promptdiff.trainers.base import accuracy
from promptdiff.trainers.genpt import handcrafted_features
from promptdiff.trainers.ivlp import IVLP, IVLPPromptLearner
from promptdiff.trainers.maple import MultiModalPromptedCLIP
from promptdiff.trainers.prompt_diffusion import PromptDiffusionMixin
from promptdiff.trainers.prompted import logits_from_features, text_settings

declare_keys(
    "TRAINER.PROMPTSRC",
    N_CTX_VISION=4,
    N_CTX_TEXT=4,
    CTX_INIT="a photo of a",
    PREC="fp16",
    PROMPT_DEPTH_VISION=9,  # 0: no vision prompts
    PROMPT_DEPTH_TEXT=9,
    # integers, as upstream declares them, so that upstream's config files merge (yacs refuses
    # 25 for a float key)
    TEXT_LOSS_WEIGHT=25,
    IMAGE_LOSS_WEIGHT=10,
    GPA_MEAN=15,
    GPA_STD=1,
    # PromptSRCDiff: the self-regulating terms also act on the generated prompts in stage 2.
    # Off: on the miniature world both ways gave 91.36 HM (3 seeds), and on is 4.3x slower
    SCL_ON_GENERATED=False,
)


def gaussian_weights(mean: float, std: float, epochs: int) -> list[float]:
    """GPA's per-epoch weights: the N(mean, std) density at epochs 1..N, normalised to sum 1."""
    if std <= 0:
        raise ValueError(f"TRAINER.PROMPTSRC.GPA_STD must be > 0 (got {std}).")
    density = [math.exp(-0.5 * ((e - mean) / std) ** 2) for e in range(1, epochs + 1)]
    total = sum(density)
    if total == 0:
        raise ValueError(
            f"TRAINER.PROMPTSRC.GPA_MEAN {mean} lies so far outside epochs 1..{epochs} for "
            f"GPA_STD {std} that every epoch's weight is 0; choose a mean within the epochs."
        )
    return [d / total for d in density]


class PromptAggregate(nn.Module):
    """Running weighted sum of a module's parameters (buffers, so checkpoints carry it)."""

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        self.names = list(params)
        for name, p in params.items():
            self.register_buffer(self._key(name), torch.zeros_like(p.detach()))
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _key(name: str) -> str:
        return "sum_" + name.replace(".", "_")

    @torch.no_grad()
    def add(self, module: nn.Module, weight: float) -> None:
        params = dict(module.named_parameters())
        for name in self.names:
            getattr(self, self._key(name)).add_(params[name].detach() * weight)
        self.epochs += 1

    @torch.no_grad()
    def load_into(self, module: nn.Module) -> None:
        params = dict(module.named_parameters())
        for name in self.names:
            params[name].copy_(getattr(self, self._key(name)))


class PromptSRCPromptLearner(IVLPPromptLearner):
    """IVLP's prompts under TRAINER.PROMPTSRC, plus their Gaussian aggregate `gpa`."""

    def __init__(self, opts, classnames: list[str], clip_model: nn.Module):
        super().__init__(opts, classnames, clip_model, key="TRAINER.PROMPTSRC")
        self.gpa = PromptAggregate(dict(self.named_parameters()))


class SelfRegulatedCLIP(MultiModalPromptedCLIP):
    """IVLP's prompted CLIP with the frozen text features [C, E] and the self-regulating terms."""

    def __init__(
        self,
        learner: PromptSRCPromptLearner,
        clip_model: nn.Module,
        classnames: list[str],
        opts,
        chunk_size: int = 0,
        share_prefix: bool = True,
    ):
        super().__init__(learner, clip_model, chunk_size, share_prefix)
        self.classnames = list(classnames)
        # derived from the classes and the frozen CLIP: never part of a checkpoint
        self.register_buffer("fixed_text", None, persistent=False)
        self.text_weight, self.image_weight = opts.TEXT_LOSS_WEIGHT, opts.IMAGE_LOSS_WEIGHT

    def frozen_text(self) -> torch.Tensor:
        """The frozen class features [C, E], L2-normalised; computed at first use, in full
        precision as upstream (evaluation never needs them: 60 templates x the classes)."""
        if self.fixed_text is None:
            device = self.clip.token_embedding.weight.device
            with torch.autocast(device.type, enabled=False):
                fixed = handcrafted_features(self.clip, self.classnames, IMAGENET_TEMPLATES, False)
            self.fixed_text = F.normalize(fixed.float(), dim=-1)
        return self.fixed_text

    def self_regulated(
        self, image: torch.Tensor, prompts: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits [B, C] with the text prompts [L, n, Dt] (or one per image [B, L, n, Dt]) and the
        weighted terms scl_text, scl_image, scl_logits; cond: the prompt-free image features."""
        per_sample = prompts.dim() == 4
        text = F.normalize(self.text_features(prompts, per_sample=per_sample).float(), dim=-1)
        img = F.normalize(self.image_features(image, prompts).float(), dim=-1)
        logits = logits_from_features(self.clip, img, text)
        with torch.no_grad():
            frozen = self.condition(image) if cond is None else cond
            zs_logits = logits_from_features(self.clip, frozen, self.frozen_text())
        kl = F.kl_div(
            F.log_softmax(logits, dim=1),
            F.log_softmax(zs_logits, dim=1),
            reduction="sum",
            log_target=True,
        )
        return logits, {
            "scl_text": self.text_weight * F.l1_loss(text, self.frozen_text().expand_as(text)),
            "scl_image": self.image_weight * F.l1_loss(img, frozen),
            "scl_logits": kl / logits.numel(),
        }


@TRAINER_REGISTRY.register()
class PromptSRC(IVLP):
    """Self-regulating prompts: TRAINER.PROMPTSRC.{N_CTX_TEXT, N_CTX_VISION, CTX_INIT, PREC,
    PROMPT_DEPTH_TEXT, PROMPT_DEPTH_VISION, TEXT_LOSS_WEIGHT, IMAGE_LOSS_WEIGHT, GPA_MEAN, GPA_STD}."""

    CFG_KEY = "PROMPTSRC"

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        opts = cfg.TRAINER.PROMPTSRC
        # before any data is read; build_model computes the weights over the baseline's epochs
        gaussian_weights(opts.GPA_MEAN, opts.GPA_STD, max(cfg.OPTIM.MAX_EPOCH, 1))

    @classmethod
    def build_prompt_model(cls, cfg, classnames, clip_model):
        opts = cfg.TRAINER.PROMPTSRC
        learner = PromptSRCPromptLearner(opts, classnames, clip_model)
        return SelfRegulatedCLIP(learner, clip_model, classnames, opts, *text_settings(cfg))

    def build_model(self) -> None:
        super().build_model()
        opts = self.cfg.TRAINER.PROMPTSRC
        epochs = self.baseline_optim_cfg().MAX_EPOCH
        self.gpa_weights = gaussian_weights(opts.GPA_MEAN, opts.GPA_STD, epochs)

    def filter_loaded_state_dict(self, name: str, state_dict: dict) -> dict:
        # the aggregate is training state (resuming restores it); evaluation uses the prompts
        state = super().filter_loaded_state_dict(name, state_dict)
        return {k: v for k, v in state.items() if not k.startswith("gpa.")}

    def forward_backward(self, batch) -> dict:
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            logits, terms = self.model.self_regulated(image, self.model.shared_prompt())
        ce = F.cross_entropy(logits, label)
        self.check_losses(ce=ce, **terms)
        loss = ce + sum(terms.values())
        self.model_backward_and_update(loss)
        summary = {"loss": loss.item(), "acc": accuracy(logits, label), "ce": ce.item()}
        summary.update({k: v.item() for k, v in terms.items()})
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr("prompt_learner")
            self.aggregate_prompts()
        return summary

    def aggregate_prompts(self) -> None:
        """Add this epoch's weighted prompts to the aggregate; after the last epoch, use it."""
        learner = self.model.prompt_learner
        learner.gpa.add(learner, self.gpa_weights[self.epoch])
        if self.epoch + 1 == len(self.gpa_weights):
            log(f"Prompts replaced by their Gaussian aggregate over {len(self.gpa_weights)} epochs")
            learner.gpa.load_into(learner)


@TRAINER_REGISTRY.register()
class PromptSRCDiff(PromptDiffusionMixin, PromptSRC):
    """PromptSRC + prompt diffusion over the text prompts [L, n, Dt] (stage 1's Gaussian
    aggregate is the base prompt); the independent vision prompts stay shared. With
    TRAINER.PROMPTSRC.SCL_ON_GENERATED the self-regulating terms join stage 2's loss, computed on
    the generated prompts (their gradient reaches the denoiser)."""

    def stage2_loss(self, image, label, cond, base, diff_loss, x0_hat) -> tuple[torch.Tensor, dict]:
        pd = self.cfg.TRAINER.PD
        if not self.cfg.TRAINER.PROMPTSRC.SCL_ON_GENERATED:
            return super().stage2_loss(image, label, cond, base, diff_loss, x0_hat)
        prompts = target_to_prompt(self.ce_estimate(cond, x0_hat), base, pd.TARGET)
        logits, terms = self.model.self_regulated(image, prompts, cond)
        ce = F.cross_entropy(logits, label)
        self.check_losses(**terms)
        loss = pd.DIFF_WEIGHT * diff_loss + pd.CE_WEIGHT * ce + sum(terms.values())
        summary = {"ce": ce.item(), "acc": accuracy(logits, label)}
        return loss, summary | {k: v.item() for k, v in terms.items()}
