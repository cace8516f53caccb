"""tools/miniworld.py ablate: which trained runs it re-evaluates, into which folders, with which
options, for both protocols (train.py itself is replaced by a recorder: the evaluations it would
run are tested elsewhere)."""

from __future__ import annotations

import os

import pytest

from promptdiff.results.layout import RESULTS_FILE, run_dir
from promptdiff.tools import miniworld as tmw
from promptdiff.worlds import miniature as mw

CFG = "vit_b16_ep50_ctxv1"


def _trained(output: str, tree: str, trainer: str, seed: int) -> str:
    run = run_dir(output, tree, tmw.source_dataset(), tmw.SHOTS, trainer, CFG, seed)
    os.makedirs(run)
    with open(os.path.join(run, RESULTS_FILE), "w") as f:
        f.write("{}")
    return run


@pytest.fixture
def recorder(monkeypatch):
    calls = []
    monkeypatch.setattr(tmw, "train_py", lambda args: calls.append(args))
    monkeypatch.setattr(tmw, "read_spec", lambda root, kind="default": mw.WorldSpec())
    monkeypatch.setattr(tmw, "world_opts", lambda root, kind="default": ["WORLD.OPT", "1"])
    monkeypatch.setattr(tmw, "_last_epoch", lambda run: 7)
    return calls


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_dg_ablation_evaluates_each_shifted_domain_of_each_dg_model(tmp_path, recorder):
    out = str(tmp_path)
    train = _trained(out, "xd/train", "CoOpDiff", 2)
    _trained(out, "base2new/train_base", "CoOpDiff", 2)  # not a DG model: never evaluated here
    tmw.ablate("ROOT", out, ["CoOpDiff"], [2], names=["inference_base"], protocols=["dg"])
    configs = tmw.domain_configs()
    shifted = [configs[d] for d in mw.WorldSpec().domains if d != mw.SOURCE]
    assert len(recorder) == len(shifted) == 4
    for args, dataset in zip(recorder, shifted):
        assert _flag(args, "--model-dir") == train
        assert _flag(args, "--load-epoch") == "7"
        assert _flag(args, "--output-dir") == run_dir(
            os.path.join(out, "ablations", "inference_base"), "xd/test", dataset, tmw.SHOTS,
            "CoOpDiff", CFG, 2,
        )  # fmt: skip
        assert _flag(args, "--dataset-config-file").endswith(f"configs/datasets/{dataset}.yaml")
        assert _flag(args, "DATASET.SUBSAMPLE_CLASSES") == "all"
        assert args[-2:] == tmw.ABLATIONS["inference_base"]
        assert _flag(args, "WORLD.OPT") == "1"


def test_base2new_ablation_keeps_its_folders_and_skips_finished_evaluations(tmp_path, recorder):
    out = str(tmp_path)
    train = _trained(out, "base2new/train_base", "CoOpDiff", 1)
    done = run_dir(os.path.join(out, "ablations", "steps_1"), "base2new/test_new",
                   tmw.source_dataset(), tmw.SHOTS, "CoOpDiff", CFG, 1)  # fmt: skip
    os.makedirs(done)
    open(os.path.join(done, RESULTS_FILE), "w").close()
    tmw.ablate("ROOT", out, ["CoOpDiff"], [1], names=["steps_1"])
    (args,) = recorder  # only the base half is left to run
    assert _flag(args, "--model-dir") == train
    assert _flag(args, "DATASET.SUBSAMPLE_CLASSES") == "base"
    assert "/ablations/steps_1/base2new/train_base/" in _flag(args, "--output-dir")


def test_ablate_cli_refuses_an_unknown_protocol(tmp_path):
    with pytest.raises(SystemExit, match="--protocols"):
        tmw.main(["ablate", "--root", str(tmp_path), "--output", str(tmp_path),
                  "--protocols", "fewshot"])  # fmt: skip
