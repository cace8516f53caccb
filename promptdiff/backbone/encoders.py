"""Run CLIP's own modules block by block, with prompt tokens inserted or replaced between blocks.

Shape conventions (N/B = batch, T = text length, n = prompt tokens, D = width, E = embed dim):
- vision prompts: [L, n, Dv] shared by the batch, [B, L, n, Dv] per image, or a list of L tensors
  each [n, Dv] or [B, n, Dv]. Layer 0 is appended after the patch tokens (after the positional
  embedding, before ln_pre); layer i in 1..L-1 replaces the last n tokens before block i.
- text deep prompts: [L-1, n, Dt] shared, [N, L-1, n, Dt] per sequence, or a list of L-1 tensors
  each [n, Dt] or [N, n, Dt]; entry i-1 replaces positions prompt_start..prompt_start+n-1 before
  text block i (MaPLe's deeper text prompts; layer-0 context lives in the embeddings already).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

PromptLayers = Tensor | Sequence[Tensor]


def text_width(clip_model: nn.Module) -> int:
    """Width Dt of the text transformer (token embedding size)."""
    return int(clip_model.ln_final.weight.shape[0])


def text_layers(clip_model: nn.Module) -> int:
    """Number of residual blocks in the text transformer."""
    return len(clip_model.transformer.resblocks)


def embed_dim(clip_model: nn.Module) -> int:
    """Dimension E of the joint image-text embedding space."""
    return int(clip_model.text_projection.shape[1])


def is_vit(clip_model: nn.Module) -> bool:
    """True when the image encoder is a ViT (the only kind that takes vision prompts)."""
    visual = clip_model.visual
    # duck-typed so that any CLIP-compatible ViT works, not only clip.model.VisionTransformer
    return hasattr(visual, "class_embedding") and hasattr(visual, "transformer")


def vision_width(clip_model: nn.Module) -> int:
    """Width Dv of the ViT image transformer."""
    _require_vit(clip_model)
    return int(clip_model.visual.conv1.weight.shape[0])


def vision_layers(clip_model: nn.Module) -> int:
    """Number of residual blocks in the ViT image transformer."""
    _require_vit(clip_model)
    return len(clip_model.visual.transformer.resblocks)


def _require_vit(clip_model: nn.Module) -> None:
    if not is_vit(clip_model):
        raise ValueError(
            f"Vision prompts need a ViT backbone; this CLIP's image encoder is a "
            f"{type(clip_model.visual).__name__}. Use a ViT backbone (e.g. ViT-B/16) or no vision prompts."
        )


def _model_dtype(clip_model: nn.Module) -> torch.dtype:
    # CLIP.dtype reads conv1's weight, which exists for both ViT and ResNet image encoders
    return clip_model.dtype


def _prompt_layers(
    prompts: PromptLayers,
    batch: int,
    width: int,
    what: str,
    per_item: str,
) -> list[Tensor]:
    """Split prompts into per-layer tensors, each [n, D] (shared) or [batch, n, D], and check them."""
    if isinstance(prompts, Tensor):
        if prompts.dim() == 3:
            layers = list(prompts.unbind(0))
        elif prompts.dim() == 4:
            layers = list(prompts.unbind(1))
        else:
            raise ValueError(
                f"{what} must have shape [L, n, D] or [{per_item}, L, n, D] "
                f"(got {tuple(prompts.shape)})."
            )
    else:
        layers = list(prompts)
        for i, p in enumerate(layers):
            if not isinstance(p, Tensor) or p.dim() not in (2, 3):
                shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
                raise ValueError(
                    f"{what}: layer {i} must be a tensor [n, D] or [{per_item}, n, D] (got {shape})."
                )
    n_tokens = None
    for i, p in enumerate(layers):
        if p.shape[-1] != width:
            raise ValueError(
                f"{what} have width {p.shape[-1]} at layer {i}, but the model's width is {width}."
            )
        if p.dim() == 3 and p.shape[0] != batch:
            raise ValueError(
                f"{what} are given per {per_item} for {p.shape[0]} items at layer {i}, "
                f"but the batch holds {batch}."
            )
        n = p.shape[-2]
        if n < 1:
            raise ValueError(f"{what} need at least one token per layer (layer {i} has {n}).")
        if n_tokens is not None and n != n_tokens:
            raise ValueError(
                f"{what} must have the same number of tokens at every layer "
                f"(layer 0 has {n_tokens}, layer {i} has {n})."
            )
        n_tokens = n
    return layers


def _seq_first(prompt: Tensor, batch: int, like: Tensor) -> Tensor:
    """Lay one layer's prompt out as [n, batch, D] in like's dtype and device (CLIP blocks are LND)."""
    prompt = prompt.to(device=like.device, dtype=like.dtype)
    if prompt.dim() == 2:
        return prompt.unsqueeze(1).expand(-1, batch, -1)
    return prompt.permute(1, 0, 2)


def encode_image(
    clip_model: nn.Module,
    images: Tensor,
    prompts: PromptLayers | None = None,
) -> Tensor:
    """Image features [B, E]; vision prompts as in the module docstring (None: CLIP's own result)."""
    if prompts is None and not is_vit(clip_model):
        return clip_model.encode_image(images)
    _require_vit(clip_model)
    visual = clip_model.visual
    batch = images.shape[0]
    layers: list[Tensor] = []
    if prompts is not None:
        layers = _prompt_layers(prompts, batch, vision_width(clip_model), "Vision prompts", "image")
        depth, n_layers = len(layers), vision_layers(clip_model)
        if not 1 <= depth <= n_layers:
            raise ValueError(
                f"Vision prompt depth {depth} must be between 1 and the model's "
                f"{n_layers} vision layers."
            )

    # mirrors VisionTransformer.forward op for op so that no prompts gives CLIP's bits exactly
    x = visual.conv1(images.type(_model_dtype(clip_model)))
    x = x.reshape(x.shape[0], x.shape[1], -1)
    x = x.permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype)
    cls = cls + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    if layers:
        # prompts get no positional embedding, as in upstream VPT and MaPLe
        first = layers[0].to(device=x.device, dtype=x.dtype)
        x = torch.cat([x, first.expand(batch, -1, -1)], dim=1)
    x = visual.ln_pre(x)

    x = x.permute(1, 0, 2)
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i < len(layers):
            keep = x.shape[0] - layers[i].shape[-2]
            x = torch.cat([x[:keep], _seq_first(layers[i], batch, x)], dim=0)
        x = block(x)
    x = x.permute(1, 0, 2)

    x = visual.ln_post(x[:, 0, :])
    if visual.proj is not None:
        x = x @ visual.proj
    return x


def encode_text(
    clip_model: nn.Module,
    embeddings: Tensor,
    eot_index: Tensor,
    deep_prompts: PromptLayers | None = None,
    prompt_start: int = 1,
    truncate: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Text features [N, E] from token embeddings [N, T, Dt] (no positional embedding yet)."""
    if embeddings.dim() != 3:
        raise ValueError(
            f"Text embeddings must have shape [N, T, D] (got {tuple(embeddings.shape)})."
        )
    n_seq, length, width = embeddings.shape
    if width != text_width(clip_model):
        raise ValueError(
            f"Text embeddings have width {width}, but the model's text width is "
            f"{text_width(clip_model)}."
        )
    context = clip_model.positional_embedding.shape[0]
    if length > context:
        raise ValueError(
            f"Text sequences have {length} tokens, more than the model's context length {context}."
        )
    if eot_index.shape != (n_seq,):
        raise ValueError(
            f"eot_index must have shape [{n_seq}] (one EOT position per sequence), "
            f"got {tuple(eot_index.shape)}."
        )

    layers: list[Tensor] = []
    if deep_prompts is not None:
        layers = _prompt_layers(deep_prompts, n_seq, width, "Deep text prompts", "sequence")
        depth, n_layers = len(layers) + 1, text_layers(clip_model)
        if depth > n_layers:
            raise ValueError(
                f"Deep text prompts give prompt depth {depth} ({len(layers)} deeper layers), "
                f"more than the model's {n_layers} text layers."
            )
        if layers:
            n = layers[0].shape[-2]
            if prompt_start < 0 or prompt_start + n > length:
                raise ValueError(
                    f"Deep text prompts of {n} tokens at prompt_start {prompt_start} do not fit "
                    f"in sequences of {length} tokens."
                )

    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None (got {chunk_size}).")
    if chunk_size is None or chunk_size >= n_seq:
        return _encode_text_chunk(clip_model, embeddings, eot_index, layers, prompt_start, truncate)
    # with gradients, a chunk's activations are recomputed in backward instead of kept, so peak
    # memory holds one chunk's whatever the number of sequences
    grad = torch.is_grad_enabled() and (
        embeddings.requires_grad or any(p.requires_grad for p in layers)
    )
    outputs = []
    for start in range(0, n_seq, chunk_size):
        stop = start + chunk_size
        chunk_layers = [p[start:stop] if p.dim() == 3 else p for p in layers]
        args = (
            clip_model,
            embeddings[start:stop],
            eot_index[start:stop],
            chunk_layers,
            prompt_start,
            truncate,
        )
        if grad:
            outputs.append(checkpoint(_encode_text_chunk, *args, use_reentrant=False))
        else:
            outputs.append(_encode_text_chunk(*args))
    return torch.cat(outputs, dim=0)


def _encode_text_chunk(
    clip_model: nn.Module,
    embeddings: Tensor,
    eot_index: Tensor,
    layers: list[Tensor],
    prompt_start: int,
    truncate: bool,
) -> Tensor:
    dtype = _model_dtype(clip_model)
    n_seq, length = embeddings.shape[:2]
    n = layers[0].shape[-2] if layers else 0
    if truncate and n_seq:
        last = int(eot_index.max()) + 1
        if last > length:
            raise ValueError(f"eot_index {last - 1} is beyond the sequence length {length}.")
        # the text transformer is causal and only the EOT feature is read, so later tokens are dead
        # weight; keep the deep-prompt slots so replacement below stays well defined
        length = max(last, prompt_start + n)
        embeddings = embeddings[:, :length]

    # mirrors CLIP.encode_text op for op so that no prompts gives CLIP's bits exactly
    x = embeddings.type(dtype)
    x = x + clip_model.positional_embedding[:length].type(dtype)
    x = x.permute(1, 0, 2)
    for i, block in enumerate(clip_model.transformer.resblocks):
        if 0 < i <= len(layers):
            prompt = _seq_first(layers[i - 1], n_seq, x)
            x = torch.cat([x[:prompt_start], prompt, x[prompt_start + n :]], dim=0)
        x = block(x)
    x = x.permute(1, 0, 2)
    x = clip_model.ln_final(x).type(dtype)
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, eot_index.to(x.device)] @ clip_model.text_projection


def encode_text_tokens(
    clip_model: nn.Module,
    tokens: Tensor,
    truncate: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Text features [N, E] of tokenised text [N, T]; truncate=False equals CLIP's encode_text."""
    embeddings = clip_model.token_embedding(tokens)
    # the EOT token has the highest id in CLIP's vocabulary, as CLIP itself assumes
    return encode_text(
        clip_model, embeddings, tokens.argmax(dim=-1), truncate=truncate, chunk_size=chunk_size
    )


# ---- prefix sharing ------------------------------------------------------------------------------
# CLIP's text transformer is causal, so the hidden states of a class-independent prefix
# ([SOS] + context, in the "end" layout) are the same for every class prompt built on it. They are
# computed once per group (an image, or one shared prompt); each class's suffix (name, ".", EOT)
# then runs through every block attending over the cached prefix keys/values plus its own causal
# past. Same block weights, same arithmetic up to float rounding; the prefix's linear layers run
# once instead of once per class.


def _heads(x: Tensor, n_heads: int) -> Tensor:
    """[N, T, D] -> [N, H, T, D/H]."""
    n, t, d = x.shape
    return x.view(n, t, n_heads, d // n_heads).transpose(1, 2)


def _qkv(block: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    attn = block.attn
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    n_heads = attn.num_heads
    return _heads(q, n_heads), _heads(k, n_heads), _heads(v, n_heads)


def _attn_out(block: nn.Module, x: Tensor, a: Tensor) -> Tensor:
    """Residual attention output, then the block's MLP (CLIP's ResidualAttentionBlock order)."""
    n, _, t, _ = a.shape
    a = a.transpose(1, 2).reshape(n, t, -1)
    x = x + block.attn.out_proj(a)
    return x + block.mlp(block.ln_2(x))


def _prefix_kv(
    clip_model: nn.Module, prefix: Tensor, layers: list[Tensor], prompt_start: int
) -> list[tuple[Tensor, Tensor]]:
    """Keys and values [G, H, P, Dh] of the prefix at every text block."""
    x = prefix
    blocks = list(clip_model.transformer.resblocks)
    cache = []
    for i, block in enumerate(blocks):
        if 0 < i <= len(layers):
            p = layers[i - 1].to(device=x.device, dtype=x.dtype)
            p = p.unsqueeze(0).expand(x.shape[0], -1, -1) if p.dim() == 2 else p
            x = torch.cat([x[:, :prompt_start], p, x[:, prompt_start + p.shape[1] :]], dim=1)
        q, k, v = _qkv(block, block.ln_1(x))
        cache.append((k, v))
        if i + 1 < len(blocks):  # the last block's prefix output is never read
            x = _attn_out(block, x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    return cache


def _suffix_features(
    clip_model: nn.Module,
    suffix: Tensor,
    eot: Tensor,
    groups: Tensor,
    cache: list[tuple[Tensor, Tensor]],
) -> Tensor:
    """Features [n, E] of n suffixes [n, S, D] (positional embedding added), sequence j reading
    the prefix cache of group groups[j]; eot: EOT positions [n] within the suffix."""
    x = suffix
    s = x.shape[1]
    p = cache[0][0].shape[2]
    # query i of the suffix sees the whole prefix and suffix positions <= i
    mask = torch.ones(s, p + s, dtype=torch.bool, device=x.device)
    mask[:, p:] = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
    for block, (k_p, v_p) in zip(clip_model.transformer.resblocks, cache, strict=True):
        q, k, v = _qkv(block, block.ln_1(x))
        k = torch.cat([k_p[groups], k], dim=2)
        v = torch.cat([v_p[groups], v], dim=2)
        x = _attn_out(block, x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    x = clip_model.ln_final(x).type(_model_dtype(clip_model))
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, eot] @ clip_model.text_projection


def encode_text_shared_prefix(
    clip_model: nn.Module,
    prefix: Tensor,
    suffix: Tensor,
    eot_index: Tensor,
    deep_prompts: PromptLayers | None = None,
    prompt_start: int = 1,
    chunk_size: int | None = None,
) -> Tensor:
    """Text features [G, C, E] of the sequences prefix[g] + suffix[g, c] (token embeddings, no
    positional embedding yet), computing each prefix's hidden states once.

    prefix: [G, P, D]; suffix: [C, S, D] shared by the groups or [G, C, S, D]; eot_index: EOT
    positions in the whole sequence, [C] or [G, C], each >= P. Deep text prompts as in
    `encode_text`, [L-1, n, D] shared or per group [G, L-1, n, D]; they must lie in the prefix.
    Equal to `encode_text` on the concatenated sequences (truncated after the last EOT) up to
    float rounding. chunk_size: (group, class) pairs per pass; with gradients each chunk is
    checkpointed, so peak memory holds one chunk's activations whatever the class count.
    """
    if prefix.dim() != 3 or suffix.dim() not in (3, 4):
        raise ValueError(
            f"prefix must be [G, P, D] and suffix [C, S, D] or [G, C, S, D] "
            f"(got {tuple(prefix.shape)} and {tuple(suffix.shape)})."
        )
    n_groups, n_prefix, width = prefix.shape
    if suffix.dim() == 4 and suffix.shape[0] != n_groups:
        raise ValueError(f"suffix has {suffix.shape[0]} groups, prefix {n_groups}.")
    n_cls = suffix.shape[-3]
    if width != text_width(clip_model) or suffix.shape[-1] != width:
        raise ValueError(
            f"Text embeddings have width {width} / {suffix.shape[-1]}, but the model's text width "
            f"is {text_width(clip_model)}."
        )
    if eot_index.shape not in ((n_cls,), (n_groups, n_cls)):
        raise ValueError(
            f"eot_index must have shape [{n_cls}] or [{n_groups}, {n_cls}] "
            f"(got {tuple(eot_index.shape)})."
        )
    if n_cls and int(eot_index.min()) < n_prefix:
        raise ValueError(f"Every EOT must lie after the {n_prefix} prefix tokens.")
    length = n_prefix + suffix.shape[-2]
    if n_cls and int(eot_index.max()) >= length:
        raise ValueError(
            f"eot_index {int(eot_index.max())} is beyond the sequence length {length}."
        )
    layers: list[Tensor] = []
    if deep_prompts is not None:
        layers = _prompt_layers(deep_prompts, n_groups, width, "Deep text prompts", "group")
        if len(layers) + 1 > text_layers(clip_model):
            raise ValueError(
                f"Deep text prompts give prompt depth {len(layers) + 1}, more than the model's "
                f"{text_layers(clip_model)} text layers."
            )
        if layers and not (0 <= prompt_start and prompt_start + layers[0].shape[-2] <= n_prefix):
            raise ValueError(
                f"Deep text prompts of {layers[0].shape[-2]} tokens at prompt_start "
                f"{prompt_start} must lie inside the {n_prefix}-token shared prefix."
            )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None (got {chunk_size}).")

    dtype = _model_dtype(clip_model)
    pos = clip_model.positional_embedding.type(dtype)
    # causal: tokens after the last EOT never reach an EOT feature
    keep = int(eot_index.max()) + 1 - n_prefix if n_cls else 1
    suffix, suffix_pos = suffix[..., :keep, :], pos[n_prefix : n_prefix + keep]
    prefix = prefix.type(dtype) + pos[:n_prefix]
    cache = _prefix_kv(clip_model, prefix, layers, prompt_start)

    device = prefix.device
    total = n_groups * n_cls
    eot = (eot_index.to(device) - n_prefix).expand(n_groups, n_cls).reshape(-1)
    step = total if chunk_size is None else chunk_size
    grad = torch.is_grad_enabled() and (
        prefix.requires_grad or suffix.requires_grad or any(p.requires_grad for p in layers)
    )
    outputs = []
    for start in range(0, total, max(step, 1)):
        pairs = torch.arange(start, min(start + step, total), device=device)
        groups, classes = pairs // n_cls, pairs % n_cls
        # gathered per chunk, so nothing of size pairs x tokens exists beyond one chunk
        chunk = suffix[classes] if suffix.dim() == 3 else suffix[groups, classes]
        chunk = chunk.type(dtype) + suffix_pos
        args = (clip_model, chunk, eot[pairs], groups, cache)
        if grad and step < total:
            outputs.append(checkpoint(_suffix_features, *args, use_reentrant=False))
        else:
            outputs.append(_suffix_features(*args))
    out = torch.cat(outputs) if outputs else prefix.new_zeros(0, embed_dim(clip_model))
    return out.view(n_groups, n_cls, -1)
