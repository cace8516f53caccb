"""tools/interpret_prompt.py: nearest vocabulary words of learned and generated contexts."""

from __future__ import annotations

import csv
import glob
import io
import os

import pytest
import torch
from conftest import train_args

from promptdiff.backbone.prompts import tokenize
from promptdiff.tools import interpret_prompt
from train import cli

WORDS = ["dog", "house", "blue", "car"]
FAST = ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(capsys, *args: str) -> list[dict]:
    from promptdiff.engine.utils import setup_logger

    # the in-process training sent the log to stdout; a fresh process of the tool logs nothing there
    setup_logger(None, quiet=True)
    capsys.readouterr()
    assert interpret_prompt.main([*args, "--format", "csv"]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def _images(root: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(root, "**", "*.*"), recursive=True)
                  if p.endswith((".jpg", ".png")))  # fmt: skip


def test_context_set_to_word_embeddings_reads_back_as_those_words(
    shapes_root, tiny_weights, tmp_path, capsys
):
    out = str(tmp_path / "coop")
    assert cli(train_args(shapes_root, out, "CoOp", "CoOp/vit_b16_ep50_ctxv1", tiny_weights,
                          *FAST)) == 0  # fmt: skip
    # replace the learned context [4, D] by the token embeddings of four known words
    ids = tokenize([" ".join(WORDS)])[0, 1 : 1 + len(WORDS)]
    embedding = torch.load(tiny_weights, weights_only=True)["token_embedding.weight"]
    path = os.path.join(out, "prompt_learner", "model.pth.tar-1")
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["state_dict"]["ctx"].shape == (len(WORDS), embedding.shape[1])
    ckpt["state_dict"]["ctx"] = embedding[ids].clone()
    torch.save(ckpt, path)

    rows = _rows(capsys, "--model-dir", out, "--topk", "3")
    assert len(rows) == len(WORDS) * 3
    first = [r for r in rows if r["rank"] == "1"]
    assert [r["word"] for r in first] == WORDS
    assert all(float(r["distance"]) == 0 for r in first)
    assert all(r["prompt"] == "learned" and r["layer"] == "0" for r in rows)
    # the ranks are by growing distance
    for token in range(1, len(WORDS) + 1):
        dist = [float(r["distance"]) for r in rows if r["token"] == str(token)]
        assert dist == sorted(dist) and dist[1] > 0

    capsys.readouterr()
    assert interpret_prompt.main(["--model-dir", out, "--images", _images(shapes_root)[0]]) == 1
    assert "needs a *Diff run" in capsys.readouterr().err


def test_diff_run_lists_each_images_generated_context(shapes_root, tiny_weights, tmp_path, capsys):
    out = str(tmp_path / "diff")
    pd = ["OPTIM.MAX_EPOCH", "2", "TRAINER.PD.STAGE1_EPOCHS", "1", "TRAINER.PD.WIDTH", "32",
          "TRAINER.PD.DEPTH", "1", "TRAINER.PD.HEADS", "2", "TRAINER.PD.OVERFIT_STEPS", "1",
          "DATASET.NUM_SHOTS", "1"]  # fmt: skip
    assert cli(train_args(shapes_root, out, "CoOpDiff", "CoOpDiff/vit_b16_ep50_ctxv1",
                          tiny_weights, *pd)) == 0  # fmt: skip
    images = _images(shapes_root)[:2]
    assert len(images) == 2
    rows = _rows(capsys, "--model-dir", out, "--topk", "1", "--images", *images)
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r)
    assert list(by_prompt) == ["learned", *images]
    assert all(len(v) == 4 for v in by_prompt.values())  # 4 context tokens, top 1 each

    # the same generated contexts as an evaluation of these images in this order
    import promptdiff
    from promptdiff.engine.data import build_transform
    from promptdiff.predict import open_image

    trainer = promptdiff.load(out).trainer_for(["object"])
    trainer.set_model_mode("eval")
    trainer.before_test("test")
    transform = build_transform(trainer.cfg, is_train=False)
    batch = torch.stack([transform(open_image(p)) for p in images])
    with torch.no_grad():
        generated = trainer.sample_prompts(batch, trainer.model.condition(batch))
    embedding = trainer.model.clip.token_embedding.weight
    for image, prompts in zip(images, generated):
        distances, _ = interpret_prompt.nearest_words(prompts, embedding, 1)
        listed = [float(r["distance"]) for r in by_prompt[image]]
        assert listed == pytest.approx(distances[:, 0].tolist(), abs=1e-4)
    learned = [float(r["distance"]) for r in by_prompt["learned"]]
    assert [float(r["distance"]) for r in by_prompt[images[0]]] != learned
