"""Nearest vocabulary words of a run's learned context vectors (and of a *Diff run's generated ones).

    python tools/interpret_prompt.py --model-dir output/run [--topk 5] [--format table|csv]
    python tools/interpret_prompt.py --model-dir output/diff_run --images a.jpg photos/ --topk 3

For each context token, the --topk words of CLIP's vocabulary whose token embeddings are nearest
by Euclidean distance (as CoOp's and PromptSRC's interpret_prompt.py; BPE tokens are shown without
their end-of-word mark). Deep text prompts (MaPLe, IVLP, PromptSRC) are listed per layer, layer 0
being the context after SOS; deeper layers are compared with the same token embeddings, as
upstream does, although they live in later layers' spaces. Class-specific contexts (CoOp's CSC)
are listed per class index. With --images, a *Diff run also lists each image's generated context,
sampled as --eval-only and tools/predict.py sample it (same noise for the same images in the same
order). Rows: prompt (`learned` or the image), layer, token (1-based), rank, word, distance.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

import torch

from promptdiff.tools.predict import image_paths, run_tool

HEADER = ("prompt", "layer", "token", "rank", "word", "distance")


def nearest_words(
    vectors: torch.Tensor, embedding: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances [N, k], token ids [N, k]) of the k vocabulary embeddings nearest each vector."""
    # the direct computation: the matmul shortcut leaves ~1e-3 where the distance is 0
    distance = torch.cdist(
        vectors.float(), embedding.float(), compute_mode="donot_use_mm_for_euclid_dist"
    )
    values, ids = distance.topk(min(k, embedding.shape[0]), dim=1, largest=False)
    return values, ids


def prompt_layers(model, prompts: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(layer label, [n, D] context) for one prompt: [n, D], [L, n, D] or CSC's [C, n, D]."""
    from promptdiff.trainers.maple import MultiModalPromptedCLIP

    if prompts.dim() == 2:
        return [("0", prompts)]
    kind = "" if isinstance(model, MultiModalPromptedCLIP) else "class "
    return [(f"{kind}{i}", p) for i, p in enumerate(prompts)]


def rows_for(
    name: str, model, prompts: torch.Tensor, embedding: torch.Tensor, k: int
) -> list[tuple]:
    """The table rows of one prompt (all its layers and tokens)."""
    from promptdiff.backbone.prompts import bpe_tokenizer

    decoder = bpe_tokenizer().decoder
    rows = []
    for layer, context in prompt_layers(model, prompts.detach()):
        distances, ids = nearest_words(context, embedding, k)
        for token, (dist_row, id_row) in enumerate(zip(distances.tolist(), ids.tolist()), 1):
            for rank, (dist, i) in enumerate(zip(dist_row, id_row), 1):
                word = decoder[i].replace("</w>", "")
                rows.append((name, layer, token, rank, word, f"{dist:.4f}"))
    return rows


@torch.no_grad()
def interpret(run_dir: str, k: int, images: list[str], epoch: int | None = None) -> list[tuple]:
    """Rows for the run's learned context, then for each image's generated context."""
    import promptdiff
    from promptdiff.engine.data import build_transform
    from promptdiff.predict import open_image
    from promptdiff.trainers.prompt_diffusion import PromptDiffusionMixin
    from promptdiff.trainers.vpt import VisionPromptedCLIP

    predictor = promptdiff.load(run_dir, epoch=epoch)
    # the learned context does not depend on the class names; one placeholder class builds it
    trainer = predictor.trainer_for(["object"])
    model = trainer.model
    if isinstance(model, VisionPromptedCLIP):
        raise ValueError(
            f"Run {run_dir} ({trainer.cfg.TRAINER.NAME}) learns vision prompts only; they have no "
            f"nearest words. Interpret a run with a text context."
        )
    if images and not isinstance(trainer, PromptDiffusionMixin):
        raise ValueError(
            f"Run {run_dir} ({trainer.cfg.TRAINER.NAME}) generates no per-image context; --images "
            f"needs a *Diff run."
        )
    embedding = model.clip.token_embedding.weight
    rows = rows_for("learned", model, model.shared_prompt(), embedding, k)
    if not images:
        return rows
    transform = build_transform(trainer.cfg, is_train=False)
    trainer.set_model_mode("eval")
    trainer.before_test("test")  # the noise of an evaluation of these images in this order
    size = max(int(trainer.cfg.DATALOADER.TEST.BATCH_SIZE), 1)
    for start in range(0, len(images), size):
        names = images[start : start + size]
        batch = torch.stack([transform(open_image(p)) for p in names]).to(trainer.device)
        with trainer.autocast():
            generated = trainer.sample_prompts(batch, model.condition(batch))
        for name, prompts in zip(names, generated):
            rows += rows_for(name, model, prompts, embedding, k)
    return rows


def render(rows: list[tuple], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([HEADER, *rows])
        return buf.getvalue()
    from tabulate import tabulate

    return tabulate(rows, headers=HEADER, tablefmt="simple", disable_numparse=True) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a run folder train.py trained into")
    parser.add_argument("--topk", type=int, default=5, help="words per context token (default 5)")
    parser.add_argument("--images", nargs="*", default=[], help="*Diff runs: image files/folders")
    parser.add_argument("--format", choices=("table", "csv"), default="table")
    parser.add_argument("--output", default="", help="write here instead of stdout")
    parser.add_argument("--load-epoch", type=int, default=None, help="default: the last saved")
    return parser


def main(argv: list[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> str:
        rows = interpret(args.model_dir, args.topk, image_paths(args.images), args.load_epoch)
        return render(rows, args.format)

    return run_tool(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
