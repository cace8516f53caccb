"""Multi-process training and evaluation under torchrun: gloo, 2 CPU processes, tiny CLIP."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import read_results, train_args

from promptdiff.engine.distributed import ShardNoise
from train import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# both stages (the prompt learner's gradients in stage 1, the denoiser's in stage 2)
DIFF_OPTS = ("OPTIM.MAX_EPOCH", "2", "TRAINER.PD.STAGE1_EPOCHS", "1", "DATASET.NUM_SHOTS", "2",
             "TRAINER.PD.WIDTH", "32", "TRAINER.PD.DEPTH", "1", "TRAINER.PD.HEADS", "2",
             "TRAINER.PD.OVERFIT_STEPS", "2")  # fmt: skip
CFG = "CoOpDiff/vit_b16_ep50_ctxv1"


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    env.pop("PROMPTDIFF_HOST", None)
    proc = subprocess.run(
        [*TORCHRUN, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def diff_args(root: str, out: str, weights: str, *opts: str) -> list[str]:
    return train_args(root, out, "CoOpDiff", CFG, weights, *DIFF_OPTS, *opts)


def eval_args(root: str, out: str, weights: str, model_dir: str, *opts: str) -> list[str]:
    return ["--eval-only", "--model-dir", model_dir, "--load-epoch", "2",
            *diff_args(root, out, weights, *opts)]  # fmt: skip


def rank_files(out: str) -> list[dict]:
    found = []
    for r in range(2):
        with open(os.path.join(out, f"rank{r}.json")) as f:
            found.append(json.load(f))
    return found


def single_process_predictions(args: list[str], monkeypatch) -> list[int]:
    """Run train.py in this process and return the last evaluation's per-image predictions."""
    from promptdiff.engine.trainer import SimpleTrainer

    original, preds = SimpleTrainer.test, []

    def recording_test(self, split=None):
        result = original(self, split)
        preds[:] = list(self.evaluator._y_pred)
        return result

    monkeypatch.setattr(SimpleTrainer, "test", recording_test)
    assert cli(args) == 0
    return preds


@pytest.fixture(scope="module")
def ddp_trained(shapes_root, tiny_weights, tmp_path_factory) -> tuple[str, str]:
    """(output folder, worker folder) of a 2-process CoOpDiff training through train.py."""
    base = tmp_path_factory.mktemp("ddp")
    out, work = str(base / "run"), str(base / "worker")
    os.makedirs(work)
    torchrun("tests/ddp_worker.py", work, "train.py", *diff_args(shapes_root, out, tiny_weights))
    return out, work


def test_training_writes_one_checkpoint_set_and_one_result(ddp_trained):
    out, work = ddp_trained
    files = sorted(
        os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
    )
    events = [f for f in files if f.startswith("tensorboard/")]
    assert len(events) == 1  # rank 0's writer only
    assert [f for f in files if f not in events] == [
        "checkpoints.json", "config.yaml", "denoiser/checkpoint", "denoiser/model.pth.tar-2",
        "log.txt", "prompt_learner/checkpoint", "prompt_learner/model.pth.tar-2", "results.json",
    ]  # fmt: skip
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    # both models every epoch (epoch 1's crash insurance is deleted once epoch 2 is saved)
    assert log.count("=> result") == 1 and log.count("Checkpoint saved") == 4
    # 6 classes x 2 shots = 12 images; the global batch of 4 is 2 per rank: 3 steps per epoch
    assert set(re.findall(r"epoch \[\d/2\] batch \[\d+/(\d+)\]", log)) == {"3"}
    assert "Stage 2" in log and read_results(out)["total"] == 18
    # gradients were averaged: both ranks end with the same trained tensors, bit for bit
    r0, r1 = rank_files(work)
    assert r0["exit_code"] == r1["exit_code"] == 0
    assert r0["state_digest"] == r1["state_digest"]
    assert r0["predictions"] == r1["predictions"]  # gathered: every rank has all 18


def test_process_group_helpers(ddp_trained):
    r0, r1 = rank_files(ddp_trained[1])
    for found in (r0, r1):
        assert found["world"] == 2
        assert found["grads"] == [[1.5] * 3, [1.0] * 3]  # (1 + 2) / 2; (0 + 2) / 2
        assert found["none_stays_none"]
        assert found["broadcast"] == [[7.0] * 4, [0.0]]
        assert found["gathered"] == [0, 10, 20, 30, 40]  # rank 0's padding repeat dropped
        assert found["main_first"]
        assert found["same_check"][0] == "ok"
        assert "differs between torchrun ranks 0 and [1]" in found["same_check"][1]
        assert "DATALOADER.TRAIN_X.BATCH_SIZE 3" in found["batch_error"]
        assert found["batch_share"] == 2
    # rank 0's error stops the others with one sentence instead of a broken connection
    assert r0["main_first_error"] == "bad dataset"
    assert r1["main_first_error"] == "Stopped: torchrun rank 0 failed first (its error is above)."


def test_distributed_eval_equals_single_process(
    ddp_trained, shapes_root, tiny_weights, tmp_path, monkeypatch
):
    out, work = ddp_trained
    # the training run's final, distributed test against a one-process evaluation of its checkpoint
    single = single_process_predictions(
        eval_args(shapes_root, str(tmp_path / "one"), tiny_weights, out), monkeypatch
    )
    assert rank_files(work)[0]["predictions"][-1] == single
    for key in ("accuracy", "macro_f1", "correct", "total"):
        assert read_results(out)[key] == read_results(str(tmp_path / "one"))[key]

    # torchrun train.py --eval-only from the command line, with 2 noise draws per image and test
    # batches that straddle the ranks' shards (18 images, batch 4)
    opts = ("TRAINER.PD.NUM_SAMPLES", "2", "DATALOADER.TEST.BATCH_SIZE", "4",
            "TEST.PER_CLASS_RESULT", "True")  # fmt: skip
    ddp_eval, one_eval = str(tmp_path / "ddp_eval"), str(tmp_path / "one_eval")
    torchrun("train.py", *eval_args(shapes_root, ddp_eval, tiny_weights, out, *opts))
    single_process_predictions(
        eval_args(shapes_root, one_eval, tiny_weights, out, *opts), monkeypatch
    )
    for key in ("accuracy", "macro_f1", "correct", "total"):
        assert read_results(ddp_eval)[key] == read_results(one_eval)[key]

    def result_block(folder: str) -> str:
        with open(os.path.join(folder, "log.txt")) as f:
            return f.read().split("=> result", 1)[1]

    assert result_block(ddp_eval) == result_block(one_eval)  # per-class lines included


@pytest.mark.parametrize("world, local_batch", [(2, 3), (3, 4)])
def test_shard_noise_gives_each_image_its_single_process_noise(world, local_batch):
    n, batch, draws, shape = 11, 4, 2, (3, 2)
    gen = torch.Generator().manual_seed(5)
    # one process: each test batch draws `draws` tensors [len(batch), *shape], in order
    reference = torch.empty(draws, n, *shape)
    for start in range(0, n, batch):
        for m in range(draws):
            size = min(batch, n - start)
            reference[m, start : start + size] = torch.randn((size, *shape), generator=gen)
    for r in range(world):
        noise = ShardNoise(torch.Generator().manual_seed(5), batch, n, draws, world, r)
        positions = [r + j * world for j in range(math.ceil(n / world))]  # padded shard
        for i in range(0, len(positions), local_batch):
            chunk = positions[i : i + local_batch]
            for m in range(draws):
                got = noise.next(len(chunk), shape)
                for row, g in zip(got, chunk):
                    expected = reference[m, g] if g < n else torch.zeros(shape)
                    assert torch.equal(row, expected)


def test_shard_replay_reproduces_single_process_logits(ddp_trained, shapes_root, tiny_weights):
    """A CoOpDiff shard evaluated with ShardNoise gives its images the single-process logits."""
    import promptdiff.datasets  # noqa: F401
    import promptdiff.trainers  # noqa: F401
    from promptdiff.host import build_trainer
    from train import build_parser, setup_cfg

    args = diff_args(shapes_root, "", tiny_weights, "TRAINER.PD.NUM_SAMPLES", "2")
    trainer = build_trainer(setup_cfg(build_parser().parse_args(args)))
    trainer.load_model(ddp_trained[0], epoch=2)
    trainer.set_model_mode("eval")
    images = torch.cat([batch["img"] for batch in trainer.test_loader])
    trainer.before_test("test")
    reference = torch.cat([trainer.model_inference(batch["img"]) for batch in trainer.test_loader])
    batch_size, n = trainer.test_loader.batch_size, len(images)
    for r in range(2):
        positions = list(range(r, n, 2))
        for replay in (True, False):
            trainer.before_test("test")
            if replay:
                trainer.noise_generator = ShardNoise(
                    trainer.noise_generator, batch_size, n, 2, 2, r
                )
            got = torch.cat([trainer.model_inference(images[positions[i : i + 4]])
                             for i in range(0, len(positions), 4)])  # fmt: skip
            if replay:
                torch.testing.assert_close(got, reference[positions], rtol=1e-5, atol=1e-5)
            else:  # the stream drawn in shard order would give these images other prompts
                assert not torch.allclose(got, reference[positions], rtol=1e-3, atol=1e-3)


def test_scripts_launch_ngpu_processes_with_torchrun(shapes_root, tmp_path):
    import shlex

    def dry_run(ngpu: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("CFG", "NGPU", "EXTRA_OPTS")}
        env.update(DATA=shapes_root, OUTPUT=str(tmp_path), PYTHON=sys.executable, DRY_RUN="1")
        if ngpu is not None:
            env["NGPU"] = ngpu
        script = ["bash", "scripts/CoOp/base2new_train.sh", "caltech101", "1"]
        return subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True)

    single = shlex.split(dry_run(None).stdout.splitlines()[0])
    assert single[:2] == [sys.executable, os.path.join(ROOT, "train.py")]
    assert shlex.split(dry_run("1").stdout.splitlines()[0]) == single
    multi = shlex.split(dry_run("2").stdout.splitlines()[0])
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert multi == [sys.executable, *launcher, *single[1:]]
    for bad in ("0", "two"):
        proc = dry_run(bad)
        assert proc.returncode == 1 and "NGPU" in proc.stderr and bad in proc.stderr
