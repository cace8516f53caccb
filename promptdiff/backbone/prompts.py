"""Class prompts "<context> <class name>." with learnable context vectors inserted into CLIP's
token embeddings (CoOp's construction, shared by CoOp, CoCoOp, MaPLe and their Diff variants)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from promptdiff.backbone import encoders  # called as encoders.X: tests wrap them to count calls
from promptdiff.backbone.loader import _clip

POSITIONS = ("end", "middle", "front")


@functools.cache
def bpe_tokenizer():
    """CLIP's BPE tokenizer, built once (it reads a gzip vocabulary, ~60 ms per construction)."""
    return _clip().simple_tokenizer.SimpleTokenizer()


def tokenize(texts: list[str]) -> torch.Tensor:
    return _clip().tokenize(texts)


def context_init(
    clip_model: nn.Module, ctx_init: str, n_ctx: int, n_classes: int = 0
) -> tuple[torch.Tensor, str]:
    """Context vectors [M, D] and the text they stand for: CTX_INIT's word embeddings (M = its
    word count) or N(0, 0.02) noise with "X" placeholders, as CoOp initialises them. With
    n_classes > 0 and no CTX_INIT the noise is class-specific [C, M, D] (CoOp's CSC), drawn in
    one call as upstream does, so a seed gives upstream's initial context."""
    width = clip_model.ln_final.weight.shape[0]
    if ctx_init:
        ctx_init = ctx_init.replace("_", " ")
        n_ctx = len(ctx_init.split(" "))
        with torch.no_grad():
            emb = clip_model.token_embedding(
                tokenize([ctx_init]).to(clip_model.token_embedding.weight.device)
            )
        return emb[0, 1 : 1 + n_ctx].detach().float().cpu(), ctx_init
    if n_ctx < 1:
        raise ValueError(f"N_CTX must be >= 1 when CTX_INIT is empty (got {n_ctx}).")
    vectors = torch.empty(*([n_classes] if n_classes > 0 else []), n_ctx, width)
    nn.init.normal_(vectors, std=0.02)
    return vectors, " ".join(["X"] * n_ctx)


class ClassPrompts(nn.Module):
    """Frozen token embeddings of "<prefix text> <class>." for every class, and the insertion of
    context vectors at CLASS_TOKEN_POSITION (end | middle | front).

    Context layouts accepted by `embed`: [M, D] shared, [C, M, D] class-specific; with
    per_sample=True, [B, M, D] or [B, C, M, D] (one context per image, as CoCoOp and the Diff
    trainers need). The embeddings are [C, T, D] or [B, C, T, D].
    """

    def __init__(
        self,
        clip_model: nn.Module,
        classnames: list[str],
        prefix_text: str,
        n_ctx: int,
        position: str = "end",
    ):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(
                f"CLASS_TOKEN_POSITION {position!r} is unknown; use one of {', '.join(POSITIONS)}."
            )
        names = [name.replace("_", " ") for name in classnames]
        name_lens = [len(bpe_tokenizer().encode(n)) for n in names]
        tokenized = tokenize([f"{prefix_text} {name}." for name in names])
        device = clip_model.token_embedding.weight.device
        with torch.no_grad():
            emb = clip_model.token_embedding(tokenized.to(device)).type(clip_model.dtype)
        self.n_ctx = n_ctx
        self.n_cls = len(names)
        self.position = position
        # non-persistent: checkpoints hold only the learned context, so a model trained on base
        # classes loads onto new classes
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("tokenized", tokenized.to(device), persistent=False)
        self.register_buffer("eot_index", tokenized.argmax(-1).to(device), persistent=False)
        self.register_buffer(
            "order", self._token_order(name_lens, tokenized.shape[1]).to(device), persistent=False
        )
        # suffix tokens every class shares right after the context ("of a" in MaPLe's "a photo
        # <of a> <class>."): they belong to the class-independent prefix too; the EOT never does
        rest = tokenized[:, 1 + n_ctx :]
        same = (rest == rest[:1]).all(0).long().cumprod(0).sum().item() if len(names) else 0
        self.n_common = int(min(same, int(self.eot_index.min()) - 1 - n_ctx)) if len(names) else 0

    def _token_order(self, name_lens: list[int], length: int) -> torch.Tensor:
        """Per class, which position of the "end" layout [SOS, ctx, name, rest] goes where."""
        m = self.n_ctx
        rows = []
        for n in name_lens:
            sos, ctx, name = [0], list(range(1, 1 + m)), list(range(1 + m, 1 + m + n))
            rest = list(range(1 + m + n, length))
            if self.position == "end":
                rows.append(sos + ctx + name + rest)
            elif self.position == "front":
                rows.append(sos + name + ctx + rest)
            else:
                half = m // 2
                rows.append(sos + ctx[:half] + name + ctx[half:] + rest)
        return torch.tensor(rows, dtype=torch.long)

    def embed(self, ctx: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        """Token embeddings with `ctx` inserted (cast to the frozen embeddings' dtype)."""
        ctx = ctx.to(self.token_prefix.dtype)
        lead = ctx.shape[:-2]
        if not per_sample:
            lead_ok = len(lead) == 0 or tuple(lead) == (self.n_cls,)
        else:
            lead_ok = len(lead) == 1 or (len(lead) == 2 and lead[1] == self.n_cls)
        if not lead_ok or ctx.shape[-2] != self.n_ctx:
            raise ValueError(
                f"Context of shape {tuple(ctx.shape)} does not fit {self.n_cls} classes x "
                f"{self.n_ctx} context tokens (per_sample={per_sample})."
            )
        batch = (lead[0],) if per_sample else ()
        if ctx.dim() == len(batch) + 2:
            ctx = ctx.unsqueeze(len(batch))
        ctx = ctx.expand(*batch, self.n_cls, *ctx.shape[-2:])
        prefix = self.token_prefix.expand(*batch, *self.token_prefix.shape)
        suffix = self.token_suffix.expand(*batch, *self.token_suffix.shape)
        emb = torch.cat([prefix, ctx, suffix], dim=-2)
        if self.position == "end":
            return emb
        index = self.order.view(*([1] * len(batch)), *self.order.shape, 1).expand_as(emb)
        return torch.gather(emb, -2, index)

    def shares_prefix(self, ctx: torch.Tensor, per_sample: bool) -> bool:
        """Whether [SOS] + context is class-independent: "end" layout, one context for all classes."""
        return self.position == "end" and ctx.dim() == (3 if per_sample else 2)

    def features(
        self,
        clip_model: nn.Module,
        ctx: torch.Tensor,
        per_sample: bool = False,
        deep_prompts: torch.Tensor | None = None,
        chunk_size: int | None = None,
        classes: torch.Tensor | None = None,
        share_prefix: bool = True,
    ) -> torch.Tensor:
        """Text features [C, E] (or [B, C, E] per sample) of the class prompts with `ctx`.

        deep_prompts: [L-1, n, D] shared, or [B, L-1, n, D] per sample (MaPLe's deeper prompts).
        classes: [B, k] class indices per sample (per_sample only): features [B, k, E] of those.
        share_prefix: encode the class-independent prefix once per context where the layout
        allows (see `encode_text_shared_prefix`); otherwise, or False, every sequence in full.
        """
        if classes is not None and (not per_sample or classes.dim() != 2):
            raise ValueError("classes must be [B, k] indices and needs per_sample=True.")
        if share_prefix and self.shares_prefix(ctx, per_sample):
            return self._shared_features(
                clip_model, ctx, per_sample, deep_prompts, chunk_size, classes
            )
        emb = self.embed(ctx, per_sample=per_sample)
        if not per_sample:
            return encoders.encode_text(
                clip_model, emb, self.eot_index, deep_prompts, chunk_size=chunk_size
            )
        batch = emb.shape[0]
        eot = self.eot_index.expand(batch, -1)
        if classes is not None:
            index = classes.to(emb.device)
            emb = torch.gather(emb, 1, index[..., None, None].expand(-1, -1, *emb.shape[2:]))
            eot = torch.gather(eot, 1, index)
        n_cls = emb.shape[1]
        if deep_prompts is not None and deep_prompts.dim() == 4:
            # one deep-prompt stack per image, shared by that image's class prompts
            deep_prompts = deep_prompts.repeat_interleave(n_cls, dim=0)
        out = encoders.encode_text(
            clip_model, emb.flatten(0, 1), eot.reshape(-1), deep_prompts, chunk_size=chunk_size
        )
        return out.view(batch, n_cls, -1)

    def _shared_features(self, clip_model, ctx, per_sample, deep_prompts, chunk_size, classes):
        ctx = ctx.to(self.token_prefix.dtype)
        contexts = ctx if per_sample else ctx.unsqueeze(0)
        batch = contexts.shape[0]
        deep_shared = deep_prompts is None or deep_prompts.dim() == 3 or deep_prompts.stride(0) == 0
        if per_sample and classes is None and batch > 1 and ctx.stride(0) == 0 and deep_shared:
            # one context expanded over the batch (e.g. the base prompt of CoOp or MaPLe): encode
            # it once
            deep = (
                deep_prompts[0]
                if deep_prompts is not None and deep_prompts.dim() == 4
                else deep_prompts
            )
            one = self._shared_features(clip_model, ctx[:1], True, deep, chunk_size, None)
            return one.expand(batch, -1, -1)
        common = self.token_suffix[:1, : self.n_common].expand(batch, -1, -1)
        sos = self.token_prefix[:1].expand(batch, -1, -1)
        prefix = torch.cat([sos, contexts, common], dim=1)
        suffix = self.token_suffix[:, self.n_common :]
        eot = self.eot_index
        if classes is not None:
            index = classes.to(suffix.device)
            suffix, eot = suffix[index], eot[index]
        out = encoders.encode_text_shared_prefix(
            clip_model, prefix, suffix, eot, deep_prompts, chunk_size=chunk_size
        )
        return out if per_sample else out[0]
