"""CLIP run block by block with prompts: exact against CLIP itself and against hand-written loops."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from promptdiff.backbone.encoders import (
    embed_dim,
    encode_image,
    encode_text,
    encode_text_tokens,
    is_vit,
    text_layers,
    text_width,
    vision_layers,
    vision_width,
)
from promptdiff.backbone.loader import tiny_clip

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip-anytorch imports pkg_resources
    import clip

# runs between CLIP's own forward and ours differ only by op order (batch size changes CPU GEMM
# blocking), so "same computation" comparisons use a float32 rounding-level tolerance
TOL = {"rtol": 0.0, "atol": 1e-5}

CAPTIONS = ["a photo of a cat.", "a dog", "a very small photo of a big orange truck", "x"]


@pytest.fixture(scope="module")
def model():
    m = tiny_clip(seed=0, vision_layers=3, text_layers=3).eval()
    m.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def tokens():
    return clip.tokenize(CAPTIONS)


def _randn(*shape, seed=2):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _reference_image(m, imgs, layers):
    """Deep VPT/MaPLe written out by hand with shared per-layer prompts [n, D]."""
    v = m.visual
    batch = imgs.shape[0]
    x = v.conv1(imgs).flatten(2).transpose(1, 2)
    cls = v.class_embedding.expand(batch, 1, -1)
    x = torch.cat([cls, x], dim=1) + v.positional_embedding
    x = torch.cat([x, layers[0].expand(batch, -1, -1)], dim=1)
    x = v.ln_pre(x).permute(1, 0, 2)
    n = layers[0].shape[0]
    for i, block in enumerate(v.transformer.resblocks):
        if 0 < i < len(layers):
            x = torch.cat([x[:-n], layers[i].unsqueeze(1).expand(-1, batch, -1)], dim=0)
        x = block(x)
    return v.ln_post(x[0]) @ v.proj


def _reference_text(m, emb, eot, deep, start):
    """MaPLe deep text prompts written out by hand (in-place slot assignment, full length)."""
    x = (emb + m.positional_embedding[: emb.shape[1]]).permute(1, 0, 2)
    for i, block in enumerate(m.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = x.clone()
            x[start : start + deep[i - 1].shape[-2]] = deep[i - 1].unsqueeze(1)
        x = block(x)
    x = m.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), eot] @ m.text_projection


def test_size_helpers_read_the_model():
    m = tiny_clip(
        seed=0, embed_dim=16, vision_layers=3, vision_width=128, text_width=64, text_layers=2
    )
    assert (vision_width(m), vision_layers(m), text_width(m), text_layers(m), embed_dim(m)) == (
        128,
        3,
        64,
        2,
        16,
    )
    assert is_vit(m)


def test_no_prompts_image_equals_clip_exactly(model, images):
    assert torch.equal(encode_image(model, images), model.encode_image(images))


def test_no_prompts_text_equals_clip_exactly_and_truncation_shortens(model, tokens):
    ours = encode_text_tokens(model, tokens, truncate=False)
    assert torch.equal(ours, model.encode_text(tokens))

    lengths = []
    hook = model.transformer.resblocks[0].register_forward_hook(
        lambda mod, inp, out: lengths.append(inp[0].shape[0])
    )
    try:
        cut = encode_text_tokens(model, tokens, truncate=True)
    finally:
        hook.remove()
    assert lengths == [int(tokens.argmax(-1).max()) + 1]
    assert lengths[0] < tokens.shape[1]
    torch.testing.assert_close(cut, model.encode_text(tokens), **TOL)


def test_depth_one_vision_prompts_equal_input_concat(model, images):
    prompts = _randn(1, 5, vision_width(model))
    v = model.visual
    x = v.conv1(images).reshape(images.shape[0], v.conv1.out_channels, -1).permute(0, 2, 1)
    cls = v.class_embedding.expand(images.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + v.positional_embedding
    x = torch.cat([x, prompts[0].expand(images.shape[0], -1, -1)], dim=1)
    x = v.transformer(v.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
    expected = v.ln_post(x[:, 0]) @ v.proj

    got = encode_image(model, images, prompts)
    torch.testing.assert_close(got, expected, **TOL)
    assert not torch.allclose(got, model.encode_image(images), atol=1e-3)


@pytest.mark.parametrize("depth", [2, 3])
def test_deep_vision_prompts_equal_handwritten_loop(model, images, depth):
    prompts = _randn(depth, 4, vision_width(model), seed=depth)
    expected = _reference_image(model, images, list(prompts))
    torch.testing.assert_close(encode_image(model, images, prompts), expected, **TOL)
    # a list of per-layer tensors is the same prompt stack
    assert torch.equal(
        encode_image(model, images, list(prompts)), encode_image(model, images, prompts)
    )


def test_deep_vision_prompt_at_layer_k_changes_nothing_before_k(model, images):
    k = 2
    a = _randn(3, 4, vision_width(model), seed=3)
    b = a.clone()
    b[k] = _randn(4, vision_width(model), seed=4)
    outputs = {"a": [], "b": []}
    current = []
    hooks = [
        block.register_forward_hook(lambda mod, inp, out: current.append(out.clone()))
        for block in model.visual.transformer.resblocks
    ]
    try:
        for name, prompts in (("a", a), ("b", b)):
            current.clear()
            feats = encode_image(model, images, prompts)
            outputs[name] = [*current, feats]
    finally:
        for h in hooks:
            h.remove()
    for i in range(k):
        assert torch.equal(outputs["a"][i], outputs["b"][i]), f"block {i} saw the layer-{k} prompt"
    assert not torch.allclose(outputs["a"][k], outputs["b"][k])
    assert not torch.allclose(outputs["a"][-1], outputs["b"][-1])


def test_per_image_vision_prompts_equal_one_image_at_a_time(model, images):
    prompts = _randn(images.shape[0], 2, 3, vision_width(model), seed=5)
    batched = encode_image(model, images, prompts)
    alone = torch.cat(
        [encode_image(model, images[i : i + 1], prompts[i]) for i in range(images.shape[0])]
    )
    torch.testing.assert_close(batched, alone, **TOL)
    # each image really got its own prompt: image 0's prompt on every image gives other features
    shared = encode_image(model, images, prompts[0])
    assert not torch.allclose(batched[1:], shared[1:], atol=1e-3)


@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("start", [1, 3])
def test_text_deep_prompts_equal_handwritten_loop(model, tokens, truncate, start):
    emb = model.token_embedding(tokens)
    eot = tokens.argmax(-1)
    deep = _randn(2, 2, text_width(model), seed=6)
    expected = _reference_text(model, emb, eot, list(deep), start)
    got = encode_text(model, emb, eot, deep, prompt_start=start, truncate=truncate)
    torch.testing.assert_close(got, expected, **TOL)
    plain = encode_text(model, emb, eot, truncate=truncate)
    assert not torch.allclose(got, plain, atol=1e-3)


def test_truncation_keeps_deep_prompt_slots_past_the_last_eot(model):
    tokens = clip.tokenize(["a", "b c"])  # last EOT at position 3
    emb = model.token_embedding(tokens)
    eot = tokens.argmax(-1)
    deep = _randn(2, 6, text_width(model), seed=7)
    full = encode_text(model, emb, eot, deep, prompt_start=1, truncate=False)
    cut = encode_text(model, emb, eot, deep, prompt_start=1, truncate=True)
    torch.testing.assert_close(cut, full, **TOL)


def test_per_sequence_text_deep_prompts_equal_one_sequence_at_a_time(model, tokens):
    emb = model.token_embedding(tokens)
    eot = tokens.argmax(-1)
    deep = _randn(len(CAPTIONS), 2, 2, text_width(model), seed=8)
    batched = encode_text(model, emb, eot, deep)
    alone = torch.cat(
        [encode_text(model, emb[i : i + 1], eot[i : i + 1], deep[i]) for i in range(len(CAPTIONS))]
    )
    torch.testing.assert_close(batched, alone, **TOL)
    shared = encode_text(model, emb, eot, deep[0])
    assert not torch.allclose(batched[1:], shared[1:], atol=1e-3)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
@pytest.mark.parametrize("truncate", [False, True])
def test_chunked_text_equals_unchunked(model, tokens, chunk_size, truncate):
    emb = model.token_embedding(tokens)
    eot = tokens.argmax(-1)
    deep = _randn(len(CAPTIONS), 2, 2, text_width(model), seed=9)
    whole = encode_text(model, emb, eot, deep, truncate=truncate)
    chunked = encode_text(model, emb, eot, deep, truncate=truncate, chunk_size=chunk_size)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, **TOL)


def test_gradients_reach_prompts_but_not_frozen_clip(model, images, tokens):
    vision = _randn(2, 3, vision_width(model), seed=10).requires_grad_(True)
    deep = _randn(2, 2, text_width(model), seed=11).requires_grad_(True)
    ctx = _randn(2, text_width(model), seed=12).requires_grad_(True)
    emb = model.token_embedding(tokens)
    emb = torch.cat([emb[:, :1], ctx.expand(len(CAPTIONS), -1, -1), emb[:, 3:]], dim=1)
    loss = encode_image(model, images, vision).square().sum()
    loss = loss + encode_text(model, emb, tokens.argmax(-1), deep).square().sum()
    loss.backward()
    for p in (vision, deep, ctx):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the last vision layer's prompt does reach the class token through block 1
    assert vision.grad[1].abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_fp16_model_casts_inputs_and_prompts(model, images, tokens):
    half = copy.deepcopy(model)
    clip.model.convert_weights(half)
    assert half.dtype == torch.float16
    assert torch.equal(encode_image(half, images), half.encode_image(images))
    assert torch.equal(encode_text_tokens(half, tokens, truncate=False), half.encode_text(tokens))

    prompts = _randn(2, 3, vision_width(model), seed=13)  # fp32 prompts into an fp16 model
    feats = encode_image(half, images, prompts)
    assert feats.dtype == torch.float16
    torch.testing.assert_close(
        feats.float(), encode_image(model, images, prompts), rtol=0, atol=5e-2
    )
    deep = _randn(2, 2, text_width(model), seed=14)
    emb = half.token_embedding(tokens)
    text = encode_text(half, emb, tokens.argmax(-1), deep)
    assert text.dtype == torch.float16
    torch.testing.assert_close(
        text.float(),
        encode_text(model, model.token_embedding(tokens), tokens.argmax(-1), deep),
        rtol=0,
        atol=5e-2,
    )


def test_fp32_model_under_autocast(model, images, tokens):
    vision = _randn(2, 3, vision_width(model), seed=15).requires_grad_(True)
    deep = _randn(2, 2, text_width(model), seed=16).requires_grad_(True)
    emb = model.token_embedding(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = encode_image(model, images, vision)
        txt = encode_text(model, emb, tokens.argmax(-1), deep)
    ref_img = encode_image(model, images, vision)
    ref_txt = encode_text(model, emb, tokens.argmax(-1), deep)
    cos = torch.nn.functional.cosine_similarity
    assert cos(img.float(), ref_img).min() > 0.99
    assert cos(txt.float(), ref_txt).min() > 0.99
    (img.float().sum() + txt.float().sum()).backward()
    assert vision.grad.abs().sum() > 0 and deep.grad.abs().sum() > 0


def _resnet_clip():
    torch.manual_seed(0)
    # build_model's ResNet layout; width 16 keeps it tiny (heads = width * 32 // 64)
    return clip.model.CLIP(32, 32, (1, 1, 1, 1), 16, None, 77, 49408, 64, 1, 1).float().eval()


def test_resnet_clip_falls_back_without_prompts_and_rejects_prompts(images):
    m = _resnet_clip()
    assert not is_vit(m)
    assert torch.equal(encode_image(m, images), m.encode_image(images))
    with pytest.raises(ValueError, match="ViT backbone"):
        encode_image(m, images, torch.zeros(1, 2, 64))
    with pytest.raises(ValueError, match="ViT backbone"):
        vision_width(m)


@pytest.mark.parametrize(
    ("kind", "shape", "match"),
    [
        ("vision", (4, 2, 64), "depth 4 .*3 vision layers"),
        ("vision", (0, 2, 64), "depth 0 "),
        ("vision", (2, 2, 32), "width 32 .*width is 64"),
        ("vision", (3, 2, 2, 64), "per image for 3 items .*batch holds 4"),
        ("vision", (2, 64), r"\[L, n, D\]"),
        ("vision", (2, 0, 64), "at least one token"),
        ("text", (3, 2, 64), "depth 4 .*3 text layers"),
        ("text", (2, 2, 48), "width 48 .*width is 64"),
        ("text", (2, 80, 64), "do not fit"),
    ],
)
def test_bad_prompts_raise_clear_errors(model, images, tokens, kind, shape, match):
    prompts = torch.zeros(shape)
    with pytest.raises(ValueError, match=match):
        if kind == "vision":
            encode_image(model, images, prompts)
        else:
            encode_text(model, model.token_embedding(tokens), tokens.argmax(-1), prompts)


def test_mismatched_layer_token_counts_and_bad_chunk_size_raise(model, images, tokens):
    with pytest.raises(ValueError, match="same number of tokens"):
        encode_image(model, images, [torch.zeros(2, 64), torch.zeros(3, 64)])
    with pytest.raises(ValueError, match="chunk_size"):
        encode_text_tokens(model, tokens, chunk_size=0)
