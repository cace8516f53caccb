"""The prediction API and CLI, --quiet and the log lines, the inference sweep, the configs.

Two runs on the shapes dataset with the tiny CLIP are shared by the module: CoOp on all classes
(trained with --quiet) and CoOpDiff on the base classes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_results, train_args

import promptdiff
from train import cli

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import predict as predict_tool  # noqa: E402
import sweep_inference  # noqa: E402

DIFF_OPTS = (
    "TRAINER.PD.STAGE1_EPOCHS 1 TRAINER.PD.WIDTH 32 TRAINER.PD.DEPTH 1 TRAINER.PD.HEADS 2 "
    "TRAINER.PD.OVERFIT_STEPS 2".split()
)


def _coop_args(root, weights, out, *opts):
    return train_args(root, str(out), "CoOp", "CoOp/vit_b16_ep50_ctxv1", weights,
                      "OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "4", *opts)  # fmt: skip


def _diff_args(root, weights, out, *opts):
    return train_args(root, str(out), "CoOpDiff", "CoOpDiff/vit_b16_ep50_ctxv1", weights,
                      "OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "4", *DIFF_OPTS,
                      *opts)  # fmt: skip


def _run_cli(args: list[str]) -> str:
    """train.py in process; returns what it printed on stdout."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli(args) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def coop(shapes_root, tiny_weights, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("coop")
    stdout = _run_cli(["--quiet", *_coop_args(shapes_root, tiny_weights, out)])
    return {"out": str(out), "stdout": stdout}


@pytest.fixture(scope="module")
def diff(shapes_root, tiny_weights, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("coopdiff")
    args = _diff_args(shapes_root, tiny_weights, out, "DATASET.SUBSAMPLE_CLASSES", "base")
    return {"out": str(out), "stdout": _run_cli(args)}


def _eval_only(args: list[str], run: str, monkeypatch) -> tuple[list[str], list[str], torch.Tensor]:
    """--eval-only in process: the image paths in order, the class names and the logits."""
    from promptdiff.engine.evaluator import Classification
    from promptdiff.engine.trainer import SimpleTrainer

    paths, logits, names = [], [], []
    parse, process = SimpleTrainer.parse_batch_test, Classification.process

    def spy_parse(self, batch):
        paths.extend(batch["impath"])
        names[:] = self.dm.dataset.classnames
        return parse(self, batch)

    def spy_process(self, mo, gt):
        logits.append(mo.detach().clone())
        return process(self, mo, gt)

    monkeypatch.setattr(SimpleTrainer, "parse_batch_test", spy_parse)
    monkeypatch.setattr(Classification, "process", spy_process)
    _run_cli(["--eval-only", "--model-dir", run, "--load-epoch", "2", *args])
    monkeypatch.undo()
    return paths, names, torch.cat(logits)


# ---- item 8: prediction -----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["coop", "diff"])
def test_predict_equals_eval_only(which, request, shapes_root, tiny_weights, tmp_path, monkeypatch):
    run = request.getfixturevalue(which)["out"]
    if which == "coop":
        args = _coop_args(shapes_root, tiny_weights, tmp_path)
    else:  # trained on the base classes, asked about the new ones: any class names work
        args = _diff_args(shapes_root, tiny_weights, tmp_path, "DATASET.SUBSAMPLE_CLASSES", "new")
    paths, names, logits = _eval_only(args, run, monkeypatch)
    assert len(paths) == len(logits) == read_results(str(tmp_path))["total"]

    probs = promptdiff.load(run).predict(paths, names)
    assert probs.shape == (len(paths), len(names))
    torch.testing.assert_close(probs, logits.softmax(dim=-1), rtol=1e-5, atol=1e-6)
    assert torch.equal(probs.argmax(1), logits.argmax(1))
    torch.testing.assert_close(probs.sum(1), torch.ones(len(paths)))


def test_predict_cli_top_k_csv_and_json(coop, shapes_root, tmp_path, capsys):
    images = sorted((Path(shapes_root) / "caltech-101" / "101_ObjectCategories").rglob("*.png"))[:5]
    names = ["circle", "square", "triangle"]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n\n")
    probs = promptdiff.load(coop["out"]).predict([str(p) for p in images], names)

    base = ["--model-dir", coop["out"], "--classnames", str(tmp_path / "names.txt")]
    assert predict_tool.main([*base, "--images", *map(str, images), "--topk", "2"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 * len(images)
    for i, path in enumerate(images):
        mine = [r for r in rows if r["image"] == str(path)]
        order = probs[i].argsort(descending=True)[:2].tolist()
        assert [r["class"] for r in mine] == [names[j] for j in order]
        assert [float(r["probability"]) for r in mine] == pytest.approx(
            probs[i, order].tolist(), abs=1e-6
        )

    # a folder expands to its images, sorted by name; JSON goes to --output
    folder = images[0].parent
    out = tmp_path / "pred.json"
    args = [*base, "--images", str(folder), "--format", "json", "--output", str(out)]
    assert predict_tool.main(args) == 0
    records = json.loads(out.read_text())
    assert [r["image"] for r in records] == sorted(str(p) for p in folder.glob("*.png"))
    assert all(len(r["top"]) == len(names) for r in records)  # topk 5 capped at 3 classes


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_predict_cli_bad_inputs_are_one_sentence(coop, shapes_root, tmp_path, capsys):
    image = next((Path(shapes_root) / "caltech-101" / "101_ObjectCategories").rglob("*.png"))
    names = tmp_path / "names.txt"
    names.write_text("circle\nsquare\n")

    def run(model_dir, images, classnames=names) -> str:
        argv = ["--model-dir", str(model_dir), "--images", *map(str, images)]
        assert predict_tool.main([*argv, "--classnames", str(classnames)]) == 1
        return _one_error(capsys)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(os.path.join(coop["out"], "config.yaml"), no_weights)
    assert f"No trained weights in {no_weights}" in run(no_weights, [image])
    assert f"{tmp_path / 'config.yaml'} does not exist" in run(tmp_path, [image])

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert f"Image {broken} cannot be opened" in run(coop["out"], [image, broken])

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert f"Class-name file {empty} is empty" in run(coop["out"], [image], empty)
    with pytest.raises(ValueError, match="class-name list is empty"):
        promptdiff.load(coop["out"]).predict([str(image)], [])


# ---- item 7: log lines and --quiet ----------------------------------------------------------
def test_quiet_prints_one_summary_line_and_log_keeps_everything(coop, diff):
    res = read_results(coop["out"])
    lines = coop["stdout"].splitlines()
    assert len(lines) == 1
    assert lines[0] == (
        f"CoOp Caltech101 all shots 4 seed 1 train: test accuracy {res['accuracy']:.2f}% "
        f"({res['correct']}/{res['total']}) -> {coop['out']}"
    )
    with open(os.path.join(coop["out"], "log.txt")) as f:
        log = f.read()
    expected = [
        "** Config **",
        "Loading trainer: CoOp",
        "Loading dataset: Caltech101",
        "Building transform_train\n+ random resized crop (size=(32, 32), scale=(0.08, 1.0))\n"
        "+ random flip\n+ to torch tensor of range [0, 1]\n+ normalization (mean=",
        "Building transform_test\n+ resize the smaller edge to 32\n+ 32x32 center crop\n"
        "+ to torch tensor of range [0, 1]\n+ normalization (mean=",
        "Turning off gradients in both the image and the text encoder",
        "Loading evaluator: Classification",
    ]
    positions = [log.index(text) for text in expected]  # each is there ...
    assert positions == sorted(positions)  # ... in the order the run does them
    # without --quiet the same lines reach stdout
    for text in ("** Config **", "Loading trainer: CoOpDiff", "Building transform_test"):
        assert text in diff["stdout"]


def test_progress_bar_only_on_a_terminal_and_not_quiet(monkeypatch):
    from promptdiff.engine.utils import progress, setup_logger

    setup_logger(None)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress(range(3)).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress(range(3))
    assert not bar.disable and list(bar) == [0, 1, 2]
    bar.close()
    setup_logger(None, quiet=True)
    assert progress(range(3)).disable
    setup_logger(None)


# ---- item 9: the inference sweep --------------------------------------------------------------
def test_sweep_at_five_steps_equals_eval_only(diff, shapes_root, tiny_weights, tmp_path, capsys):
    new = ["DATASET.SUBSAMPLE_CLASSES", "new"]
    rows = sweep_inference.sweep(diff["out"], [1, 5], ["ddim", "euler"], new)
    assert [(r["sampler"], r["steps"]) for r in rows] == [
        ("ddim", 1),
        ("ddim", 5),
        ("euler", 1),
        ("euler", 5),
    ]
    for sampler in ("ddim", "euler"):
        out = tmp_path / sampler
        args = _diff_args(shapes_root, tiny_weights, out, *new, "TRAINER.PD.SAMPLER", sampler,
                          "TRAINER.PD.STEPS", "5")  # fmt: skip
        _run_cli(["--eval-only", "--model-dir", diff["out"], "--load-epoch", "2", *args])
        plain = read_results(str(out))
        [swept] = [r for r in rows if r["sampler"] == sampler and r["steps"] == 5]
        for key in ("accuracy", "macro_f1", "correct", "total"):
            assert swept[key] == plain[key], (sampler, key)

    csv_path = tmp_path / "sweep.csv"
    argv = ["--model-dir", diff["out"], "--steps", "5", "--samplers", "ddim", "--csv",
            str(csv_path), *new]  # fmt: skip
    assert sweep_inference.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    ddim5 = rows[1]["accuracy"]
    assert printed[1].split() == ["5", f"{ddim5:.2f}%"]
    assert float(next(csv.DictReader(csv_path.open()))["accuracy"]) == pytest.approx(ddim5)


def test_sweep_rejects_a_baseline_run(coop, capsys):
    assert sweep_inference.main(["--model-dir", coop["out"], "--steps", "5"]) == 1
    assert "samples no prompts; give a *Diff run" in _one_error(capsys)


# ---- item 6: configs --------------------------------------------------------------------------
def test_every_trainer_config_merges_onto_the_defaults():
    from promptdiff.config_keys import extend_cfg
    from promptdiff.engine.config import merge_file
    from promptdiff.host import get_cfg_default

    files = sorted((REPO / "configs" / "trainers").glob("*/*.yaml"))
    loaded = {}
    for path in files:
        cfg = extend_cfg(get_cfg_default())
        merge_file(cfg, str(path))  # an unknown or mistyped key is an error naming the file
        loaded[f"{path.parent.name}/{path.stem}"] = cfg
    # the upstream names users look for, with what makes them differ
    assert loaded["CoOp/vit_b16_ctxv1"].OPTIM.MAX_EPOCH == 200
    assert loaded["CoOp/vit_b16_ctxv1"].TRAINER.COOP.CTX_INIT == "a photo of a"
    assert loaded["CoOp/rn50_ep50_ctxv1"].MODEL.BACKBONE.NAME == "RN50"
    assert loaded["CoOp/rn101_ep50"].MODEL.BACKBONE.NAME == "RN101"
    assert loaded["CoOp/vit_b32_ep50"].OPTIM.MAX_EPOCH == 50
    assert loaded["CoOp/rn50_val"].DATALOADER.TEST.BATCH_SIZE == 200
    for n in (4, 8, 16):
        assert loaded[f"CoCoOp/vit_b16_c{n}_ep10_batch1"].TRAINER.COCOOP.N_CTX == n
    assert loaded["VPT/vit_b16_c2_ep5_batch4_4"] == loaded["VPT/vit_b16_c2_ep5_batch4_8ctx"]
    ivlp = loaded["IVLP/vit_b16_c2_ep5_batch4_2+2ctx"].TRAINER.IVLP
    assert (ivlp.N_CTX_TEXT, ivlp.N_CTX_VISION, ivlp.PROMPT_DEPTH_TEXT) == (2, 2, 12)


# ---- item 9: paper outputs ----------------------------------------------------------------------
def _b2n(root: Path):
    from test_results_tools import base2new_tree

    from promptdiff.results import plots, tables

    base2new_tree(root)
    [res] = tables.base2new_results(root)
    return res, plots


def test_results_table_latex(tmp_path, capsys):
    import numpy as np
    from test_results_tools import base2new_tree

    from promptdiff.results import tables
    from promptdiff.tools import results_table

    base2new_tree(tmp_path)
    tex = tables.render(tables.build_tables(tmp_path, "base2new"), "latex", True)
    lines = tex.splitlines()
    sd = np.std([80, 82, 84])  # seeds of CoOp's caltech101 Base (New: 70, 72, 74, same std)
    hm = 2 * 82 * 72 / (82 + 72)
    row = next(line for line in lines if line.startswith("caltech101 &"))
    assert row.startswith(
        f"caltech101 & 82.00 $\\pm$ {sd:.2f} & 72.00 $\\pm$ {sd:.2f} & {hm:.2f} & 92.00"
    )
    assert row.endswith(" \\\\")
    assert (
        lines[lines.index(next(x for x in lines if x.startswith("Average &"))) - 1] == "\\midrule"
    )
    assert "\\begin{tabular}{lrrrrrr}" in lines and "(\\%)}" in tex  # '%' escaped in the caption
    assert tables.latex_escape("oxford_pets & 50%") == "oxford\\_pets \\& 50\\%"
    assert results_table.main(["--root", str(tmp_path), "--protocol", "base2new", "--format",
                               "latex"]) == 0  # fmt: skip
    assert capsys.readouterr().out == tables.render(
        tables.build_tables(tmp_path, "base2new"), "latex"
    )


def test_plot_base2new_error_bars_labels_axes_and_dpi(tmp_path):
    import numpy as np
    from PIL import Image as PILImage

    res, plot = _b2n(tmp_path)
    panels = plot.panel_values(res)
    errors = plot.panel_errors(res)
    figs = {y: plot.draw_panels(res, panels, errors, "accuracy", ylim=y) for y in plot.YLIMS}
    axes = {y: [a for a in f.axes if a.get_visible()] for y, f in figs.items()}
    from matplotlib.container import BarContainer

    def bars(ax) -> list:
        return [c for c in ax.containers if isinstance(c, BarContainer)]

    cal = axes["shared"][0]
    assert cal.get_title() == "caltech101"
    base_bars = bars(cal)[0]  # Base bars: CoOp, CoOpDiff
    segments = base_bars.errorbar.lines[2][0].get_segments()
    half = [abs(s[1][1] - s[0][1]) / 2 for s in segments]
    assert half == pytest.approx([np.std([80, 82, 84]), np.std([90, 92, 94])])
    assert [t.get_text() for t in cal.texts][:2] == ["82.0", "92.0"]  # a value on each bar
    assert base_bars.patches[0].get_height() == pytest.approx(82)
    # the Average panel and HM bars carry no error bars
    assert all(c.errorbar is None for c in bars(axes["shared"][-1]))
    assert bars(cal)[2].errorbar is None
    limits = {y: [a.get_ylim() for a in axes[y]] for y in axes}
    assert len(set(limits["shared"])) == 1  # one range for every panel ...
    assert len(set(limits["auto"])) > 1  # ... unlike each panel's own
    assert set(limits["zero"]) == {(0.0, 100.0)}
    for fig in figs.values():
        plot.plt.close(fig)

    out = tmp_path / "b2n.png"
    assert plot.plot_base2new(tmp_path, out) == 3
    width, height = PILImage.open(out).size
    assert (width, height) == (round(3 * 3.2 * 300), round(3.0 * 300))  # 3 panels at 300 dpi


def test_plot_few_shot_curves(tmp_path, capsys):
    from test_results_tools import cfg_dir, fill_seeds

    from promptdiff.results import plots
    from promptdiff.tools import plot_few_shot

    for shots, values in ((1, [50.0, 54.0]), (4, [60.0, 60.0]), (16, [80.0, 82.0])):
        fill_seeds(cfg_dir(tmp_path, "few_shot", "dtd", "CoOp", shots=shots), values)
        fill_seeds(
            cfg_dir(tmp_path, "few_shot", "eurosat", "CoOp", shots=shots), [v + 10 for v in values]
        )
    fill_seeds(cfg_dir(tmp_path, "few_shot", "dtd", "CoOpDiff", shots=16), [90.0])
    curves = plots.few_shot_curves(tmp_path)
    assert curves["dtd"]["CoOp"] == [(1, 52.0, 2.0), (4, 60.0, 0.0), (16, 81.0, 1.0)]
    assert curves["dtd"]["CoOpDiff"] == [(16, 90.0, 0.0)]
    assert [p[:2] for p in curves["Average"]["CoOp"]] == [(1, 57.0), (4, 65.0), (16, 86.0)]

    out = tmp_path / "fs.png"
    assert plot_few_shot.main(["--root", str(tmp_path), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(3 panels)" in capsys.readouterr().err  # dtd, eurosat, Average
    assert plot_few_shot.main(["--root", str(tmp_path / "none"), "--out", str(out)]) == 1
    assert str(tmp_path / "none") in _one_error(capsys)
