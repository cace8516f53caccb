"""Tests for the results library (promptdiff.results) and its CLIs tools/parse_test_res.py,
tools/results_table.py and tools/plot_base2new.py on fake output trees."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from promptdiff.results import layout, plots, record
from promptdiff.results import summary as seeds_summary
from promptdiff.results import tables as rt
from promptdiff.tools import parse_test_res, results_table

REPO = Path(__file__).resolve().parent.parent

B2N = "base2new"


def write_json(run_dir: Path, accuracy: float, **extra: object) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "accuracy": accuracy,
        "macro_f1": accuracy - 1.0,
        "error": 100.0 - accuracy,
        "total": 1000,
        "correct": round(accuracy * 10),
        "split": "test",
    }
    record.update(extra)
    (run_dir / "results.json").write_text(json.dumps(record))


def result_block(total: str, correct: str, acc: float, f1: float) -> str:
    return (
        f"=> result\n* total: {total}\n* correct: {correct}\n* accuracy: {acc:.1f}%\n"
        f"* error: {100 - acc:.1f}%\n* macro_f1: {f1:.1f}%\n"
    )


def cfg_dir(
    root: Path, tree: str, dataset: str, trainer: str, cfg: str = "vit_b16_ep50", shots: int = 16
) -> Path:
    return root / tree / dataset / f"shots_{shots}" / trainer / cfg


def fill_seeds(folder: Path, values: list[float], **extra: object) -> None:
    for seed, value in enumerate(values, start=1):
        write_json(folder / f"seed{seed}", value, seed=seed, **extra)


def checkout_env() -> dict[str, str]:
    """os.environ with this checkout first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run a tool the documented way: `python tools/<name>.py` from the repo root, with this
    checkout's promptdiff (an installed one may be another checkout's)."""
    return subprocess.run(
        [sys.executable, f"tools/{name}.py", *args],
        cwd=REPO,
        env=checkout_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


# ----------------------------------------------------------------------------- parse_test_res


def test_parse_mean_std_match_numpy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    values = [91.2, 89.7, 92.45]
    fill_seeds(tmp_path, values)
    summary = seeds_summary.summarise_directory(tmp_path)
    acc = summary.metrics[0]
    assert acc.name == "accuracy" and acc.n == 3
    assert acc.mean == pytest.approx(np.mean(values))
    assert acc.spread == pytest.approx(np.std(values))  # population std, as upstream
    assert parse_test_res.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"* accuracy: {np.mean(values):.2f}% +- {np.std(values):.2f}%" in out
    assert f"file: {tmp_path / 'seed3' / 'results.json'}. accuracy: 92.45%." in out
    assert f"* macro_f1: {np.mean(values) - 1:.2f}%" in out


def test_parse_ci95(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    values = [70.0, 74.0, 71.5, 73.25]
    fill_seeds(tmp_path, values)
    expected = 1.96 * np.std(values) / np.sqrt(len(values))
    summary = seeds_summary.summarise_directory(tmp_path, ci95=True)
    assert summary.metrics[0].spread == pytest.approx(expected)
    assert parse_test_res.main([str(tmp_path), "--ci95"]) == 0
    assert f"* accuracy: {np.mean(values):.2f}% +- {expected:.2f}%" in capsys.readouterr().out


def test_keyword_orders_and_selects_metric(tmp_path: Path) -> None:
    fill_seeds(tmp_path, [80.0, 90.0])
    summary = seeds_summary.summarise_directory(tmp_path, keyword="macro_f1")
    assert summary.metrics[0].name == "macro_f1"
    assert summary.metrics[0].mean == pytest.approx(84.0)


def test_log_fallback_reads_last_test_block_with_thousands(tmp_path: Path) -> None:
    run = tmp_path / "seed1"
    run.mkdir()
    log = (
        "epoch [1/5] batch [20/20] loss 1.2\n"
        "Evaluate on the *val* set\n"
        + result_block("1,200", "1,000", 83.3, 80.0)
        + "Finish training\n"
        "Deploy the last-epoch model\nEvaluate on the *test* set\n"
        + result_block("12,345", "11,234", 91.0, 90.2)
        + "Elapsed: 0:10:00\n"
    )
    (run / "log.txt").write_text(log)
    result = record.read_run(run)
    assert result is not None and result.source == run / "log.txt"
    assert result.metrics["total"] == 12345
    assert result.metrics["correct"] == 11234
    assert result.metrics["accuracy"] == pytest.approx(91.0)
    assert result.metrics["macro_f1"] == pytest.approx(90.2)


def test_log_ignores_validation_blocks_and_prefers_newest_log(tmp_path: Path) -> None:
    run = tmp_path / "seed1"
    run.mkdir()
    # An interrupted best_val run: only per-epoch validation blocks, no final test.
    (run / "log.txt").write_text(
        "Evaluate on the *val* set\n" + result_block("50", "40", 80.0, 79.0)
    )
    assert record.read_run(run) is None
    # The resumed run writes log.txt-<time> (Dassl keeps the old log) and finishes.
    (run / "log.txt-2024-01-02-03-04-05").write_text(
        "Finished training\nEvaluate on the *test* set\n"
        + result_block("2,000", "1,700", 85.0, 84.0)
    )
    result = record.read_run(run)
    assert result is not None and result.metrics["accuracy"] == pytest.approx(85.0)
    assert result.source.name == "log.txt-2024-01-02-03-04-05"


def test_test_log_and_json_precedence(tmp_path: Path) -> None:
    eval_only = tmp_path / "seed1"
    eval_only.mkdir()
    (eval_only / "log.txt").write_text(
        "Loading weights\n"
        + result_block("100", "60", 60.0, 59.0)
        + result_block("100", "65", 65.0, 64.0)
    )
    for flag in (False, True):
        got = record.read_run(eval_only, test_log=flag)
        assert got is not None and got.metrics["accuracy"] == pytest.approx(65.0)
    both = tmp_path / "seed2"
    write_json(both, 71.234)
    (both / "log.txt").write_text(result_block("100", "71", 71.2, 70.0))
    got = record.read_run(both)
    assert got is not None and got.source.name == "results.json"
    assert got.metrics["accuracy"] == pytest.approx(71.234)


def test_parse_mixed_json_and_log_seeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_json(tmp_path / "seed1", 80.0)
    (tmp_path / "seed2").mkdir()
    (tmp_path / "seed2" / "log.txt").write_text(
        "Finish training\n" + result_block("1,000", "840", 84.0, 83.0)
    )
    (tmp_path / "seed10").mkdir()  # an unfinished run: skipped with a warning
    assert parse_test_res.main([str(tmp_path), "--test-log"]) == 0
    captured = capsys.readouterr()
    assert f"* accuracy: 82.00% +- {np.std([80.0, 84.0]):.2f}%" in captured.out
    assert "seed10" in captured.err


def test_multi_exp(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fill_seeds(tmp_path / "exp-a", [60.0, 62.0])
    fill_seeds(tmp_path / "exp-b", [70.0, 74.0])
    assert parse_test_res.main([str(tmp_path), "--multi-exp"]) == 0
    out = capsys.readouterr().out
    assert "* accuracy: 61.00% +- 1.00%" in out and "* accuracy: 72.00% +- 2.00%" in out
    assert out.split("Average performance")[1].strip().startswith("* accuracy: 66.50%")
    (tmp_path / "exp-c").mkdir()
    assert parse_test_res.main([str(tmp_path), "--multi-exp"]) == 1
    assert "exp-c" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["missing", "empty", "no_result"])
def test_parse_errors_name_the_folder(tmp_path: Path, make: str) -> None:
    target = tmp_path / "runs"
    if make != "missing":
        (target / "seed1").mkdir(parents=True)
    if make == "no_result":
        (target / "seed1" / "log.txt").write_text("epoch [1/5] batch [1/1]\n")
    proc = run_tool("parse_test_res", str(target))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(target) in errors[0]


def test_parse_unknown_keyword(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fill_seeds(tmp_path, [50.0])
    assert parse_test_res.main([str(tmp_path), "--keyword", "top5"]) == 1
    assert "'top5'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- results_table


def base2new_tree(root: Path) -> None:
    """CoOp on two datasets; CoOpDiff only on caltech101 (dtd missing)."""
    fill_seeds(
        cfg_dir(root, f"{B2N}/train_base", "caltech101", "CoOp"),
        [80, 82, 84],
        subsample_classes="base",
    )
    fill_seeds(
        cfg_dir(root, f"{B2N}/test_new", "caltech101", "CoOp"),
        [70, 72, 74],
        subsample_classes="new",
    )
    fill_seeds(
        cfg_dir(root, f"{B2N}/train_base", "dtd", "CoOp"), [60, 61], subsample_classes="base"
    )
    fill_seeds(
        cfg_dir(root, f"{B2N}/test_new", "dtd", "CoOp"), [40, 44, 45], subsample_classes="new"
    )
    fill_seeds(cfg_dir(root, f"{B2N}/train_base", "caltech101", "CoOpDiff"), [90, 92, 94])
    fill_seeds(cfg_dir(root, f"{B2N}/test_new", "caltech101", "CoOpDiff"), [75, 77, 79])


def hm(b: float, n: float) -> float:
    return 2 * b * n / (b + n)


def test_base2new_hm_and_average(tmp_path: Path) -> None:
    base2new_tree(tmp_path)
    [res] = rt.base2new_results(tmp_path)
    assert res.columns == ["CoOp", "CoOpDiff"] and res.datasets == ["caltech101", "dtd"]
    cal = res.entries[("caltech101", "CoOp")]
    assert cal.base.mean == pytest.approx(82) and cal.new.mean == pytest.approx(72)
    assert cal.base.std == pytest.approx(np.std([80, 82, 84]))
    assert cal.hm == pytest.approx(2 * 82 * 72 / (82 + 72))
    dtd = res.entries[("dtd", "CoOp")]
    assert dtd.hm == pytest.approx(hm(60.5, 43))
    avg = res.average["CoOp"]
    # Average row: mean of seed-averaged Base and New over datasets, HM of those means
    # (not the mean of per-dataset HMs).
    assert avg.base == pytest.approx((82 + 60.5) / 2)
    assert avg.new == pytest.approx((72 + 43) / 2)
    assert avg.hm == pytest.approx(hm((82 + 60.5) / 2, (72 + 43) / 2))
    assert avg.hm != pytest.approx((hm(82, 72) + hm(60.5, 43)) / 2)
    # CoOpDiff lacks dtd: its average covers caltech101 only and a note says so.
    assert res.entries[("dtd", "CoOpDiff")].base is None
    assert res.average["CoOpDiff"].base == pytest.approx(92)
    assert res.average["CoOpDiff"].hm == pytest.approx(hm(92, 77))
    assert any("CoOpDiff" in n and "1 of 2" in n for n in res.notes)
    assert any("dtd Base (2: seeds 1, 2)" in n for n in res.notes)


def test_base2new_markdown_and_csv_contain_values(tmp_path: Path) -> None:
    base2new_tree(tmp_path)
    tables = rt.build_tables(tmp_path, "base2new")
    md = rt.render(tables, "markdown")
    row = next(line for line in md.splitlines() if line.startswith("| caltech101"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == [
        "caltech101",
        "82.00",
        "72.00",
        f"{hm(82, 72):.2f}",
        "92.00",
        "77.00",
        f"{hm(92, 77):.2f}",
    ]
    dtd = next(line for line in md.splitlines() if line.startswith("| dtd"))
    assert dtd.rstrip(" |").endswith("-")
    header = next(line for line in md.splitlines() if line.startswith("| Dataset"))
    assert [c.strip() for c in header.strip("|").split("|")][1:4] == [
        "CoOp Base",
        "CoOp New",
        "CoOp HM",
    ]
    assert "1 of 2 datasets" in md
    rows = list(csv.reader(io.StringIO(rt.render(tables, "csv", show_std=True))))
    assert rows[0][:5] == ["shots", "Dataset", "CoOp Base", "CoOp Base std", "CoOp New"]
    average = rows[-1]
    assert average[:2] == ["16", "Average"]
    assert average[2] == f"{(82 + 60.5) / 2:.2f}"
    assert average[6] == f"{hm((82 + 60.5) / 2, (72 + 43) / 2):.2f}"
    caltech = rows[1]
    assert caltech[3] == f"{np.std([80, 82, 84]):.2f}"
    assert rows[2][7:] == ["", "", "", "", ""]  # CoOpDiff on dtd: empty cells, not "-"
    terminal = rt.render(tables, "terminal", show_std=True)
    assert "82.00 ± 1.63" in terminal


def test_trainer_with_two_cfgs_gets_cfg_columns(tmp_path: Path) -> None:
    for cfg, base, new in (("ep50", 80, 60), ("ep10", 70, 65)):
        fill_seeds(cfg_dir(tmp_path, f"{B2N}/train_base", "dtd", "CoOp", cfg), [base])
        fill_seeds(cfg_dir(tmp_path, f"{B2N}/test_new", "dtd", "CoOp", cfg), [new])
    fill_seeds(cfg_dir(tmp_path, f"{B2N}/train_base", "dtd", "MaPLe", "c2"), [85])
    [res] = rt.base2new_results(tmp_path)
    assert res.columns == ["CoOp/ep10", "CoOp/ep50", "MaPLe"]
    assert res.entries[("dtd", "CoOp/ep10")].hm == pytest.approx(hm(70, 65))
    sel = rt.Selection(trainers=["CoOp/ep50"])
    [only] = rt.base2new_results(tmp_path, sel)
    assert only.columns == ["CoOp"] and only.average["CoOp"].hm == pytest.approx(hm(80, 60))


def test_subsample_mismatch_is_reported(tmp_path: Path) -> None:
    fill_seeds(
        cfg_dir(tmp_path, f"{B2N}/train_base", "dtd", "CoOp"), [80], subsample_classes="base"
    )
    fill_seeds(cfg_dir(tmp_path, f"{B2N}/test_new", "dtd", "CoOp"), [80], subsample_classes="base")
    [res] = rt.base2new_results(tmp_path)
    assert any("subsample_classes=base" in n and "test_new" in n for n in res.notes)


def xd_tree(root: Path) -> None:
    fill_seeds(cfg_dir(root, "xd/train", "imagenet", "CoOp"), [71.0, 72.0, 73.0])
    fill_seeds(cfg_dir(root, "xd/test", "caltech101", "CoOp"), [93.0, 94.0])
    fill_seeds(cfg_dir(root, "xd/test", "dtd", "CoOp"), [45.0, 46.0])
    fill_seeds(cfg_dir(root, "xd/test", "eurosat", "CoOp"), [40.0, 50.0])
    fill_seeds(cfg_dir(root, "xd/test", "imagenetv2", "CoOp"), [64.0])
    fill_seeds(cfg_dir(root, "xd/test", "imagenet_r", "CoOp"), [76.0])
    fill_seeds(cfg_dir(root, "xd/train", "imagenet", "MaPLe", "c2"), [70.0])
    fill_seeds(cfg_dir(root, "xd/test", "dtd", "MaPLe", "c2"), [48.0])


def test_xd_source_targets_average(tmp_path: Path) -> None:
    xd_tree(tmp_path)
    [table] = rt.build_tables(tmp_path, "xd")
    assert table.headers == [
        "Trainer",
        "Source (imagenet)",
        "caltech101",
        "dtd",
        "eurosat",
        "Average",
    ]
    coop = next(r for r in table.rows if r[0] == "CoOp")
    assert [c.mean for c in coop[1:]] == pytest.approx(
        [72.0, 93.5, 45.5, 45.0, (93.5 + 45.5 + 45.0) / 3]
    )
    maple = next(r for r in table.rows if r[0] == "MaPLe")
    assert maple[1].mean == pytest.approx(70.0) and maple[2].mean is None
    assert maple[-1].mean == pytest.approx(48.0)
    assert any("MaPLe" in n and "1 of 3 targets" in n for n in table.notes)
    md = rt.render([table], "markdown")
    coop_md = next(line for line in md.splitlines() if line.startswith("| CoOp"))
    assert [c.strip() for c in coop_md.strip("|").split("|")][
        -1
    ] == f"{(93.5 + 45.5 + 45.0) / 3:.2f}"


def test_dg_uses_imagenet_variants_only(tmp_path: Path) -> None:
    xd_tree(tmp_path)
    [table] = rt.build_tables(tmp_path, "dg", rt.Selection(trainers=["CoOp"]))
    assert table.headers == ["Trainer", "Source (imagenet)", "imagenetv2", "imagenet_r", "Average"]
    assert [c.mean for c in table.rows[0][1:]] == pytest.approx([72.0, 64.0, 76.0, 70.0])
    assert table.title.startswith("Domain generalisation (trained on ImageNet)")


def test_transfer_title_names_another_source(tmp_path: Path) -> None:
    fill_seeds(cfg_dir(tmp_path, "xd/train", "miniworld", "CoOp"), [90.0])
    fill_seeds(cfg_dir(tmp_path, "xd/test", "miniworld_sketch", "CoOp"), [40.0])
    sel = rt.Selection(source="miniworld", datasets=["miniworld_sketch"])
    [table] = rt.build_tables(tmp_path, "dg", sel)
    assert table.title.startswith("Domain generalisation (trained on miniworld)")
    assert [c.mean for c in table.rows[0][1:]] == pytest.approx([90.0, 40.0, 40.0])


def test_few_shot_one_table_per_shot_count(tmp_path: Path) -> None:
    for shots, values in ((1, [50.0, 54.0]), (16, [80.0, 82.0])):
        fill_seeds(cfg_dir(tmp_path, "few_shot", "dtd", "CoOp", shots=shots), values)
        fill_seeds(
            cfg_dir(tmp_path, "few_shot", "eurosat", "CoOp", shots=shots), [v + 10 for v in values]
        )
    tables = rt.build_tables(tmp_path, "few_shot")
    assert [t.shots for t in tables] == [1, 16]
    assert tables[0].rows[-1][0] == "Average" and tables[0].rows[-1][1].mean == pytest.approx(57.0)
    assert tables[1].rows[0][1].mean == pytest.approx(81.0)
    assert "1 shot," in tables[0].title
    [only16] = rt.build_tables(tmp_path, "few_shot", rt.Selection(shots=[16]))
    assert only16.shots == 16


def test_seeds_filter(tmp_path: Path) -> None:
    fill_seeds(cfg_dir(tmp_path, "few_shot", "dtd", "CoOp"), [50.0, 60.0, 90.0])
    [table] = rt.build_tables(tmp_path, "few_shot", rt.Selection(seeds={1, 2}))
    assert table.rows[0][1].mean == pytest.approx(55.0)


def test_table_cli_writes_file_atomically(tmp_path: Path) -> None:
    base2new_tree(tmp_path / "output")
    out = tmp_path / "tables" / "b2n.csv"
    proc = run_tool(
        "results_table",
        "--root",
        str(tmp_path / "output"),
        "--protocol",
        B2N,
        "--format",
        "csv",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{hm(82, 72):.2f}" in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["b2n.csv"]  # no temp file left behind
    assert "1 of 2 datasets" in proc.stderr  # notes stay visible with --out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--root", "{tmp}/nope", "--protocol", "xd"], "{tmp}/nope"),
        (["--root", "{tmp}", "--protocol", "base2new"], "{tmp}/base2new"),
        (["--root", "{tmp}", "--protocol", "nonsense"], "nonsense"),
    ],
)
def test_table_bad_input_exits_nonzero(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = run_tool("results_table", *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert needle.format(tmp=tmp_path) in proc.stderr


def test_table_unknown_trainer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    xd_tree(tmp_path)
    assert (
        results_table.main(["--root", str(tmp_path), "--protocol", "xd", "--trainers", "VPT"]) == 1
    )
    err = capsys.readouterr().err
    assert "'VPT'" in err and "CoOp/vit_b16_ep50" in err


# ----------------------------------------------------------------------------- plot_base2new


def test_plot_writes_readable_png(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    base2new_tree(tmp_path / "output")
    out = tmp_path / "figs" / "b2n.png"
    panels = plots.plot_base2new(tmp_path / "output", out)
    assert panels == 3  # caltech101, dtd, Average
    assert out.stat().st_size > 0
    image = mpimg.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in out.parent.iterdir()] == ["b2n.png"]
    values = dict(plots.panel_values(rt.base2new_results(tmp_path / "output")[0]))
    assert values["Average"]["CoOp"][2] == pytest.approx(hm((82 + 60.5) / 2, (72 + 43) / 2))
    assert values["dtd"]["CoOpDiff"] == (None, None, None)


def test_plot_cli_and_empty_root(tmp_path: Path) -> None:
    base2new_tree(tmp_path / "output")
    out = tmp_path / "b2n.png"
    ok = run_tool("plot_base2new", "--root", str(tmp_path / "output"), "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty").mkdir()
    bad = run_tool(
        "plot_base2new", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert str(tmp_path / "empty") in bad.stderr and not (tmp_path / "x.png").exists()


def test_harmonic_mean_edge_cases() -> None:
    assert rt.harmonic_mean(None, 50.0) is None
    assert rt.harmonic_mean(0.0, 0.0) == 0.0
    assert math.isclose(rt.harmonic_mean(100.0, 50.0), 200 / 3)


# ----------------------------------------------------------------------------- layout and record


def _checkpoint(run: Path, model: str, name: str) -> None:
    (run / model).mkdir(parents=True, exist_ok=True)
    (run / model / name).write_bytes(b"weights")
    (run / model / "checkpoint").write_text(f"{name}\n")


def test_run_status_from_records_manifest_results_and_logs(tmp_path: Path) -> None:
    run = tmp_path / "seed1"
    run.mkdir()
    assert layout.run_status(str(run)) == layout.RunStatus(None, False)
    _checkpoint(run, "prompt_learner", "model.pth.tar-3")
    _checkpoint(run, "diffusion", "model.pth.tar-3")
    (run / "log.txt").write_text("epoch [3/5] batch [1/1]\n")
    assert layout.run_status(str(run)) == layout.RunStatus(3, False)
    (run / "log.txt-2024-01-02-03-04-05").write_text("Finished training\n")  # older wording
    assert layout.run_status(str(run)).line() == "3 finished"
    # a record naming a file that is not there is no checkpoint; records that disagree are damage
    (run / "diffusion" / "checkpoint").write_text("model.pth.tar-9\n")
    assert layout.run_status(str(run)).epoch == 3
    _checkpoint(run, "diffusion", "model.pth.tar-4")
    with pytest.raises(layout.RunDamaged, match=f"{run}.*model.pth.tar-4"):
        layout.run_status(str(run))
    # the manifest, written after every model's file, decides over the per-model records
    (run / layout.MANIFEST).write_text(json.dumps({"last": "model-best.pth.tar", "units": {}}))
    assert layout.run_status(str(run)).epoch == "best"
    (run / layout.MANIFEST).write_text(json.dumps({"last": None, "units": {}}))
    (run / "log.txt-2024-01-02-03-04-05").unlink()
    assert layout.run_status(str(run)) == layout.RunStatus(None, False)
    write_json(run, 50.0)
    assert layout.run_status(str(run)).finished


def test_status_cli_prints_one_line_or_one_error(tmp_path: Path) -> None:
    run = tmp_path / "seed1"
    _checkpoint(run, "prompt_learner", "model.pth.tar-2")
    cmd = [sys.executable, "-m", "promptdiff.results", "status", str(run)]
    proc = subprocess.run(cmd, cwd=REPO, env=checkout_env(), capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "2 unfinished\n")
    (run / layout.MANIFEST).write_text("{not json")
    proc = subprocess.run(cmd, cwd=REPO, env=checkout_env(), capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and str(run / layout.MANIFEST) in proc.stderr


def test_record_schema_separates_metrics_from_run_fields() -> None:
    measured = {"accuracy": 81.25, "error": 18.75, "macro_f1": 80.0, "total": 16, "correct": 13}
    made = record.make_record(
        {**measured, "perclass_accuracy": 79.0}, "test", seed=2, num_shots=16, epoch=5
    )
    assert list(made)[: len(record.METRICS)] == list(record.METRICS)
    assert "perclass_accuracy" not in made  # the schema, not whatever the evaluator returned
    metrics, meta = record.split_record(json.loads(json.dumps(made)))
    assert metrics == {k: float(v) for k, v in measured.items()}
    assert meta == {"split": "test", "seed": 2, "num_shots": 16, "epoch": 5}


def test_trainer_order_pairs_each_method_with_its_diff_variant() -> None:
    import promptdiff.trainers  # noqa: F401  (registers the trainers)
    from promptdiff.host import TRAINER_REGISTRY

    names = TRAINER_REGISTRY.registered_names()
    ordered = rt.order_trainers([*names, "FooDiff", "Foo"])
    assert ordered[0] == "ZeroshotCLIP" and ordered[-2:] == ["Foo", "FooDiff"]
    for name in names:
        if name.endswith("Diff"):
            assert ordered.index(name) == ordered.index(name[: -len("Diff")]) + 1
    listed = [n for n in ordered if n in rt.METHOD_ORDER]  # the papers' order
    assert listed == [m for m in rt.METHOD_ORDER if m in names]
