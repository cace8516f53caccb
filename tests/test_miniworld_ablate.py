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


# ---- the verdict's per-seed scores (figures) -----------------------------------------------------


def _evaluated(output: str, tree: str, dataset: str, trainer: str, seed: int, acc: float) -> None:
    run = run_dir(output, tree, dataset, tmw.SHOTS, trainer, CFG, seed)
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, RESULTS_FILE), "w") as f:
        f.write(f'{{"accuracy": {acc}}}')


def test_dg_score_is_the_mean_over_shifted_domains_and_missing_parts_give_none(tmp_path):
    out = str(tmp_path)
    shifted = [d for name, d in tmw.domain_configs("percam").items() if name != mw.SOURCE]
    accs = [10.0, 20.0, 40.0, 50.0]
    for dataset, acc in zip(shifted, accs):
        _evaluated(out, "xd/test", dataset, "CoOpDiff", 1, acc)
    assert tmw.seed_score(out, "CoOpDiff", CFG, 1, "percam", "dg") == sum(accs) / 4
    os.remove(os.path.join(run_dir(out, "xd/test", shifted[-1], tmw.SHOTS, "CoOpDiff", CFG, 1),
                           RESULTS_FILE))  # fmt: skip
    assert tmw.seed_score(out, "CoOpDiff", CFG, 1, "percam", "dg") is None
    _evaluated(out, "base2new/train_base", tmw.source_dataset(), "CoOpDiff", 1, 80.0)
    _evaluated(out, "base2new/test_new", tmw.source_dataset(), "CoOpDiff", 1, 60.0)
    assert tmw.seed_score(out, "CoOpDiff", CFG, 1, "default") == pytest.approx(2 * 80 * 60 / 140)
    with pytest.raises(ValueError, match="protocol 'b2n'"):
        tmw.seed_score(out, "CoOpDiff", CFG, 1, "default", "b2n")


def test_dg_gaps_pair_each_seed_with_its_own_base_prompt(tmp_path):
    """Generated minus base prompt per seed, read from the main runs and the ablations' roots
    (which hold only evaluations), for the dg protocol."""
    out = str(tmp_path)
    shifted = [d for name, d in tmw.domain_configs().items() if name != mw.SOURCE]
    base_root = os.path.join(out, "ablations", tmw.BASE_PROMPT)
    shipped_root = os.path.join(out, "ablations", "steps_1")
    for seed, (paper, shipped, base) in {1: (50, 55, 52), 3: (40, 47, 41)}.items():
        for dataset in shifted:
            _evaluated(out, "xd/test", dataset, "GenPTDiff", seed, paper)
            _evaluated(shipped_root, "xd/test", dataset, "GenPTDiff", seed, shipped)
            _evaluated(base_root, "xd/test", dataset, "GenPTDiff", seed, base)
    gaps = tmw.generated_minus_base({"default": out}, ["GenPTDiff"], [1, 2, 3], "dg")
    assert gaps[("default", "paper, 5 steps")]["GenPTDiff"] == [-2, -1]
    assert gaps[("default", "shipped, 1 step")]["GenPTDiff"] == [3, 6]
    assert tmw.generated_minus_base({"default": out}, ["GenPTDiff"], [1, 2, 3]) == {}
    row = tmw.verdict_table(out, "default", [("GenPT", "GenPTDiff")], [1, 2, 3], "dg")
    assert (
        "| GenPTDiff | – | 45.00 ± 5.00 (2) | 51.00 ± 4.00 (2) | 46.50 ± 5.50 (2) | 4.50 ± 1.50 (2) | – |"
        in row
    )


def test_verdict_compares_shipped_and_baseline_over_the_seeds_both_have(tmp_path):
    out = str(tmp_path)
    shipped_root = os.path.join(out, "ablations", "steps_1")
    shifted = [d for name, d in tmw.domain_configs().items() if name != mw.SOURCE]
    for dataset in shifted:
        for seed, acc in {1: 30.0, 2: 50.0}.items():  # seed 2: baseline only
            _evaluated(out, "xd/test", dataset, "GenPT", seed, acc)
        _evaluated(shipped_root, "xd/test", dataset, "GenPTDiff", 1, 33.0)
    row = tmw.verdict_table(out, "default", [("GenPT", "GenPTDiff")], [1, 2], "dg")
    assert row.splitlines()[-1] == (
        "| GenPTDiff | 40.00 ± 10.00 (2) | – | 33.00 ± 0.00 (1) | – | – | +3.00 |"
    )


def test_figures_reads_both_worlds_dg_runs_under_one_output(tmp_path, monkeypatch, capsys):
    """`figures` plots and tabulates DG gaps for each world whose runs are under --output, as it
    does for base2new."""
    out = str(tmp_path)
    base_root = os.path.join(out, "ablations", tmw.BASE_PROMPT)
    for kind, gen in (("default", 60.0), ("percam", 30.0)):
        source = tmw.source_dataset(kind)
        for tree in ("base2new/train_base", "base2new/test_new"):
            _evaluated(out, tree, source, "CoOpDiff", 1, 90.0)
            _evaluated(base_root, tree, source, "CoOpDiff", 1, 80.0)
        for dataset in tmw.shifted_datasets(kind):
            _evaluated(out, "xd/test", dataset, "CoOpDiff", 1, gen)
            _evaluated(base_root, "xd/test", dataset, "CoOpDiff", 1, gen - 1)
    plotted = {}
    monkeypatch.setattr(
        tmw, "plot_gaps", lambda gaps, path, score="HM": plotted.update({path: gaps})
    )
    tmw.main(["figures", "--root", "R", "--output", out, "--seeds", "1", "--trainers", "CoOpDiff",
              "--out-dir", out])  # fmt: skip
    dg = plotted[os.path.join(out, "generated_minus_base_dg.png")]
    assert dg == {(k, "paper, 5 steps"): {"CoOpDiff": [1.0]} for k in ("default", "percam")}
    printed = capsys.readouterr().out
    assert "default world, dg" in printed and "percam world, dg" in printed


def test_figures_reads_dg_alone_and_names_the_missing_ablation(tmp_path, monkeypatch, capsys):
    out = str(tmp_path)
    base_root = os.path.join(out, "ablations", tmw.BASE_PROMPT)
    for dataset in tmw.shifted_datasets():
        _evaluated(out, "xd/test", dataset, "CoOpDiff", 1, 50.0)
    args = ["figures", "--root", "R", "--output", out, "--seeds", "1", "--trainers", "CoOpDiff",
            "--out-dir", out]  # fmt: skip
    with pytest.raises(SystemExit, match="ablate --ablations inference_base,steps_1"):
        tmw.main(args)
    for dataset in tmw.shifted_datasets():
        _evaluated(base_root, "xd/test", dataset, "CoOpDiff", 1, 48.0)
    plotted = {}
    monkeypatch.setattr(
        tmw, "plot_gaps", lambda gaps, path, score="HM": plotted.update({path: gaps})
    )
    assert tmw.main(args) == 0
    assert list(plotted) == [os.path.join(out, "generated_minus_base_dg.png")]
    assert "default world, dg" in capsys.readouterr().out
