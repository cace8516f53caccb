"""The named rows of tools/benchmark.py: each exact fast path against the plain computation it
replaces, measured side by side in one process with torch.utils.benchmark.Timer.

Row fields: plain_ms, fast_ms (medians; the better of `rounds` alternating measurements, which is
what survives other processes on shared cores), ratio = plain / fast, max_abs_diff between the two
results (features, logits or gradients), a note, and floor_ms: the physical floor of the fast path
on the reference GPU (tokens x 2 x parameters per token at --peak-tflops), where one applies.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils import benchmark
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from promptdiff.backbone import tiny_clip
from promptdiff.backbone.encoders import encode_image, encode_text, encode_text_tokens
from promptdiff.backbone.prompts import ClassPrompts, tokenize
from promptdiff.diffusion import overfit_per_sample
from promptdiff.trainers.coop import CoOpCLIP, CoOpPromptLearner
from promptdiff.trainers.overfit_classes import overfit_loss_classes

# CLIP sizes for the rows (save_tiny_clip / tiny_clip keyword arguments). "vit_b16" is ViT-B/16's
# shape; "quick" keeps its text/vision proportions (vision 1.5x the text width, 197 image tokens)
# at a width and depth that fit in --quick's two minutes: the ratios are what it measures.
ROW_SIZES = {
    "vit_b16": dict(
        embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
        patch_size=16, text_width=512, text_layers=12,
    ),
    # ViT-B/16's widths at 2 layers: the same ratios (every layer costs alike), 6x cheaper on CPU
    "b16_2layer": dict(
        embed_dim=512, image_resolution=224, vision_layers=2, vision_width=768,
        patch_size=16, text_width=512, text_layers=2,
    ),
    "quick": dict(
        embed_dim=64, image_resolution=224, vision_layers=2, vision_width=96,
        patch_size=16, text_width=64, text_layers=2,
    ),
}  # fmt: skip
TARGETS = {  # name -> (comparison, bound): the targets, printed next to each row
    "truncation_ctx16": (">=", 2.5),
    "truncation_ctx4": (">=", 4.0),
    "prefix_ctx16": (">=", 2.5),
    "prefix_ctx4": (">=", 1.3),
    "prefix_train_ctx16": (">=", 2.0),
    "eval_cache_1000": (">=", 3.0),
    "chunk_memory_1000_vs_100": ("<=", 1.5),
    "topk_overfit_1000": (">=", 10.0),
}
EXACT_TOL = 1e-4  # max_abs_diff bound of the exact fast paths (fp32)


@dataclass
class FastRow:
    name: str
    plain_ms: float
    fast_ms: float
    ratio: float
    max_abs_diff: float
    note: str = ""
    floor_ms: float | None = None

    def target(self) -> str:
        """'met' / 'MISSED' against the issue's target (and the exactness bound), or ''."""
        if self.name not in TARGETS:
            return ""
        op, bound = TARGETS[self.name]
        ok = self.ratio >= bound if op == ">=" else self.ratio <= bound
        exact = self.max_abs_diff <= EXACT_TOL or self.name.startswith("topk")
        return f"{op} {bound:g}: " + ("met" if ok and exact else "MISSED")

    def as_json(self) -> dict:
        row = asdict(self)
        return {k: row[k] for k in ("name", "plain_ms", "fast_ms", "ratio", "max_abs_diff", "note")}


def class_names(n: int) -> list[str]:
    """n distinct ImageNet-like names of one to three words (about 6 suffix tokens with '.')."""
    adjectives = ("red", "spotted", "giant", "common", "northern", "wild", "golden", "little")
    nouns = ("fox", "heron", "water ouzel", "tree frog", "sports car", "coffee mug", "sea lion")
    base = [f"{a} {n}" for n in nouns for a in adjectives]
    return [
        base[i % len(base)] + (f" {i // len(base)}" if i >= len(base) else "") for i in range(n)
    ]


def timed_ms(fn: Callable[[], object], min_run_time: float) -> float:
    """Median ms per call with torch.utils.benchmark.Timer (warm-up, threads, CUDA sync)."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1000.0


def side_by_side(plain, fast, min_run_time: float, rounds: int) -> tuple[float, float, list]:
    """(plain ms, fast ms, [plain result, fast result]): alternating measurements, the best
    median of each; the results are those of the last timed calls."""
    p, f, last = [], [], [None, None]

    def keep(i, fn):
        def call():
            last[i] = fn()

        return call

    for _ in range(rounds):
        p.append(timed_ms(keep(0, plain), min_run_time))
        f.append(timed_ms(keep(1, fast), min_run_time))
    return min(p), min(f), last


def _max_diff(a, b) -> float:
    pairs = zip(a, b, strict=True) if isinstance(a, (list, tuple)) else [(a, b)]
    return max(float((x.float() - y.float()).abs().max()) for x, y in pairs)


def text_params_per_token(clip_model) -> int:
    """Parameters a text token meets (the blocks' matrices; embeddings are a lookup)."""
    blocks = clip_model.transformer.resblocks
    return sum(p.numel() for p in blocks.parameters() if p.dim() == 2)


def image_params_per_token(clip_model) -> int:
    blocks = clip_model.visual.transformer.resblocks
    return sum(p.numel() for p in blocks.parameters() if p.dim() == 2)


class Bench:
    """One CLIP of the chosen size and the settings every row shares."""

    def __init__(self, size: str, images: int, min_run_time: float, rounds: int,
                 peak_tflops: float, device: str = "cpu", seed: int = 0):  # fmt: skip
        self.size = size
        self.model = tiny_clip(seed=seed, **ROW_SIZES[size]).to(device).eval()
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.images = images
        self.min_run_time = min_run_time
        self.rounds = rounds
        self.peak = peak_tflops * 1e12
        self.text_ppt = text_params_per_token(self.model)
        self.image_ppt = image_params_per_token(self.model)
        self._prompts: dict[tuple[int, int], ClassPrompts] = {}

    def floor_ms(self, text_tokens: float = 0, image_tokens: float = 0, passes: float = 1) -> float:
        """tokens x 2 x parameters per token at the GPU peak (passes 2: forward + backward through
        frozen weights, which computes input gradients only)."""
        flops = 2 * passes * (text_tokens * self.text_ppt + image_tokens * self.image_ppt)
        return 1000.0 * flops / self.peak

    def prompts(self, n_cls: int, n_ctx: int) -> ClassPrompts:
        key = (n_cls, n_ctx)
        if key not in self._prompts:
            text = " ".join(["X"] * n_ctx)
            self._prompts[key] = ClassPrompts(self.model, class_names(n_cls), text, n_ctx)
        return self._prompts[key]

    def contexts(self, n_ctx: int, batch: int | None = None, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        width = self.model.ln_final.weight.shape[0]
        ctx = 0.02 * torch.randn(batch or self.images, n_ctx, width, generator=g)
        return ctx.to(self.device)

    def suffix_tokens(self, prompts: ClassPrompts) -> float:
        return float((prompts.eot_index + 1).float().mean()) - 1 - prompts.n_ctx

    # ---- rows --------------------------------------------------------------------------------
    def truncation(self, n_ctx: int, n_cls: int = 100) -> FastRow:
        prompts, ctx = self.prompts(n_cls, n_ctx), self.contexts(n_ctx)
        emb = prompts.embed(ctx, per_sample=True).flatten(0, 1)
        eot = prompts.eot_index.repeat(ctx.shape[0])

        def run(truncate: bool):
            return lambda: encode_text(self.model, emb, eot, truncate=truncate)

        with torch.no_grad():
            plain_ms, fast_ms, out = side_by_side(
                run(False), run(True), self.min_run_time, self.rounds
            )
        diff = _max_diff(*out)
        tokens = float((prompts.eot_index + 1).float().sum()) * ctx.shape[0]
        return FastRow(
            f"truncation_ctx{n_ctx}", plain_ms, fast_ms, plain_ms / fast_ms, diff,
            f"{self.images} images x {n_cls} classes, 77 tokens vs through the last EOT "
            f"(mean {tokens / emb.shape[0]:.1f})",
            self.floor_ms(text_tokens=tokens),
        )  # fmt: skip

    def prefix(self, n_ctx: int, n_cls: int = 100) -> FastRow:
        prompts, ctx = self.prompts(n_cls, n_ctx), self.contexts(n_ctx)

        def run(share: bool):
            return lambda: prompts.features(self.model, ctx, per_sample=True, share_prefix=share)

        with torch.no_grad():
            plain_ms, fast_ms, out = side_by_side(
                run(False), run(True), self.min_run_time, self.rounds
            )
        diff = _max_diff(*out)
        b, suffix = ctx.shape[0], self.suffix_tokens(prompts)
        tokens = b * (1 + n_ctx + prompts.n_common) + b * n_cls * suffix
        return FastRow(
            f"prefix_ctx{n_ctx}", plain_ms, fast_ms, plain_ms / fast_ms, diff,
            f"{b} images x {n_cls} classes, truncated vs prefix-shared (suffix {suffix:.1f} tokens)",
            self.floor_ms(text_tokens=tokens),
        )  # fmt: skip

    def prefix_train(self, n_ctx: int = 16, n_cls: int = 100) -> FastRow:
        prompts, ctx = self.prompts(n_cls, n_ctx), self.contexts(n_ctx)
        cond = torch.randn(ctx.shape[0], self.model.text_projection.shape[1], device=self.device)
        cond = F.normalize(cond, dim=-1)
        label = torch.arange(ctx.shape[0], device=self.device) % n_cls

        def step(share: bool):
            delta = torch.zeros_like(ctx, requires_grad=True)
            text = prompts.features(self.model, ctx + delta, per_sample=True, share_prefix=share)
            logits = torch.einsum("be,bce->bc", cond, F.normalize(text, dim=-1)) * 100
            (g,) = torch.autograd.grad(F.cross_entropy(logits, label), delta)
            return [text.detach(), g]

        plain_ms, fast_ms, out = side_by_side(
            lambda: step(False), lambda: step(True), self.min_run_time, self.rounds
        )
        diff = _max_diff(*out)
        b, suffix = ctx.shape[0], self.suffix_tokens(prompts)
        tokens = b * (1 + n_ctx) + b * n_cls * suffix
        return FastRow(
            f"prefix_train_ctx{n_ctx}", plain_ms, fast_ms, plain_ms / fast_ms, diff,
            f"one over-fitting step (forward + backward to the per-image context), {b} images x "
            f"{n_cls} classes; diff over features and gradients",
            self.floor_ms(text_tokens=tokens, passes=2),
        )  # fmt: skip

    def eval_cache(self, n_cls: int = 1000, n_images: int = 100) -> FastRow:
        res = self.model.visual.input_resolution
        images = torch.randn(n_images, 3, res, res, generator=torch.Generator().manual_seed(3))
        images = images.to(self.device)
        tokens = tokenize([f"a photo of a {n}." for n in class_names(n_cls)]).to(self.device)
        scale = self.model.logit_scale.exp()

        def logits(feats, text):
            return scale * F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t()

        def per_batch():  # upstream CoOp: the class prompts, 77 tokens, re-encoded every batch
            return logits(
                encode_image(self.model, images), encode_text_tokens(self.model, tokens, False)
            )

        def cached():
            return logits(encode_image(self.model, images), cache)

        with torch.no_grad():
            cache = encode_text_tokens(self.model, tokens)  # once per evaluation, truncated
            plain_ms, fast_ms, out = side_by_side(per_batch, cached, self.min_run_time, self.rounds)
        diff = _max_diff(*out)
        grid = (res // self.model.visual.conv1.weight.shape[-1]) ** 2 + 1
        return FastRow(
            f"eval_cache_{n_cls}", plain_ms, fast_ms, plain_ms / fast_ms, diff,
            f"CoOp test batch of {n_images} images, {n_cls} class prompts re-encoded (77 tokens) "
            f"per batch vs once per evaluation; diff of logits",
            self.floor_ms(image_tokens=n_images * grid),
        )  # fmt: skip

    def chunked(self, n_cls: int, chunk: int, n_ctx: int = 16) -> tuple[float, torch.Tensor]:
        """(peak MB, features) of chunked per-image encoding at n_cls classes."""
        prompts, ctx = self.prompts(n_cls, n_ctx), self.contexts(n_ctx)
        with torch.no_grad():
            return peak_mb(
                lambda: prompts.features(self.model, ctx, True, chunk_size=chunk), self.device
            )

    def chunk_memory(self, chunk: int = 100, n_ctx: int = 16) -> FastRow:
        peaks, outs = {}, {}
        for n_cls in (100, 1000):
            peaks[n_cls], outs[n_cls] = self.chunked(n_cls, chunk, n_ctx)
        chunked = outs[100]
        with torch.no_grad():
            whole = self.prompts(100, n_ctx).features(self.model, self.contexts(n_ctx), True)
        diff = _max_diff(chunked, whole)
        return FastRow(
            "chunk_memory_1000_vs_100", peaks[1000], peaks[100], peaks[1000] / peaks[100], diff,
            f"peak MB of per-image encoding ({self.images} images, chunks of {chunk} pairs, "
            f"prefix-shared) at 1000 / 100 classes ({memory_method(self.device)}); diff: chunked "
            f"vs whole at 100 classes",
        )  # fmt: skip

    def topk_overfit(self, n_cls: int = 1000, keep: int = 64, steps: int = 10) -> FastRow:
        """CoOpDiff's per-sample over-fitting of one batch (K steps, Adam), all classes vs top-k
        (its selection pass included); diff column: 1 - mean cosine of the targets."""
        from yacs.config import CfgNode as CN

        opts = CN({"N_CTX": 16, "CSC": False, "CTX_INIT": "", "CLASS_TOKEN_POSITION": "end"})
        torch.manual_seed(0)
        learner = CoOpPromptLearner(opts, class_names(n_cls), self.model).to(self.device)
        model = CoOpCLIP(learner, self.model)
        b = self.images
        res = self.model.visual.input_resolution
        images = torch.randn(b, 3, res, res, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            cond = model.condition(images.to(self.device))
        base = learner.ctx.detach().unsqueeze(0).expand(b, *learner.ctx.shape)
        label = torch.arange(b, device=self.device) * (n_cls // b)

        def overfit(n: int):
            logits_fn, of_label = overfit_loss_classes(model, None, cond, base, label, n_cls, n)

            def loss(delta):
                return F.cross_entropy(logits_fn(base + delta).float(), of_label, reduction="none")

            return overfit_per_sample(loss, torch.zeros_like(base[0]), b, steps, 1e-3, "adam")

        plain_ms, fast_ms, (exact, approx) = side_by_side(
            lambda: overfit(0), lambda: overfit(keep), self.min_run_time, self.rounds
        )
        cos = F.cosine_similarity(exact.targets.flatten(1), approx.targets.flatten(1)).mean()
        with torch.no_grad():
            acc = [
                (model.logits_for(None, cond, base + t.targets).argmax(1) == label).float().mean()
                for t in (exact, approx)
            ]
        suffix = self.suffix_tokens(learner.prompts)
        tokens = steps * b * keep * suffix + n_cls * suffix
        return FastRow(
            f"topk_overfit_{n_cls}", plain_ms, fast_ms, plain_ms / fast_ms, float(1 - cos),
            f"CoOpDiff over-fitting, {b} images, K={steps}, all {n_cls} classes vs true + "
            f"{keep - 1} hardest (selection included); targets' cosine to all-class targets "
            f"{float(cos):.4f}; per-sample accuracy all-class {100 * float(acc[0]):.0f} % vs "
            f"top-k {100 * float(acc[1]):.0f} %",
            self.floor_ms(text_tokens=tokens, passes=2),
        )  # fmt: skip


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "peak of the bytes held by tensors the call creates, counted by a dispatch mode"


class TensorMemory(TorchDispatchMode):
    """Peak bytes of the storages that tensors created inside the mode hold (CPU has no
    allocator statistics; the process RSS is blurred by what the allocator kept from before)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage -> [tracked tensors alive, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        known = {
            t.untyped_storage()._cdata
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage()._cdata
            if key in known and key not in self._refs:
                continue  # an input's storage (in-place op or view of a tensor from outside)
            entry = self._refs.get(key)
            if entry is None:
                entry = self._refs[key] = [0, t.untyped_storage().nbytes()]
                self.live += entry[1]
                self.peak = max(self.peak, self.live)
            entry[0] += 1
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]


def peak_mb(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    """(peak memory in MB that fn adds above what is live when it starts, fn's result)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20, out
    with TensorMemory() as counter:
        out = fn()
    return counter.peak / 2**20, out


def run_rows(bench: Bench, overfit_steps: int = 10, say=print) -> list[FastRow]:
    """Every named row, in the issue's order."""
    rows = []
    for make in (
        lambda: bench.truncation(16),
        lambda: bench.truncation(4),
        lambda: bench.prefix(16),
        lambda: bench.prefix(4),
        lambda: bench.prefix_train(16),
        bench.eval_cache,
        bench.chunk_memory,
        lambda: bench.topk_overfit(steps=overfit_steps),
    ):
        rows.append(make())
        say(f"  {rows[-1].name}: {rows[-1].ratio:.2f}x")
    return rows
