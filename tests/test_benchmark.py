"""tools/benchmark.py on a tiny CLIP: the right rows, sane numbers, S really taking effect, the
named fast-path rows exact and written as JSON.

Structure and exactness only: nothing here asserts a speed (targets live in the benchmark output).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from promptdiff.tools.bench_fastpaths import EXACT_TOL, TARGETS, Bench, TensorMemory, peak_mb
from promptdiff.tools.benchmark import (
    REFERENCE,
    Options,
    Probe,
    Workspace,
    available,
    batch,
    build,
    main,
    pd_keys,
    plan,
    run_benchmark,
    table,
    time_inference,
    write_json,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    opts = Options(
        size="tiny",
        classes=[3],
        steps=[1, 10],
        other_steps=[2],
        images=2,
        min_time=0.0,
        trainers=["CoOp", REFERENCE, "CoOpDiff"],
        train_k=[2],
        train_images=2,
        train_min_time=0.0,
        workdir=str(tmp_path_factory.mktemp("bench")),
        verbose=False,
    )
    rows, notes = run_benchmark(opts)
    return opts, rows, notes


def test_one_row_per_requested_trainer_classes_steps(tiny_run):
    opts, rows, notes = tiny_run
    keys = [r.key for r in rows]
    assert keys == plan(opts)
    assert sorted(keys, key=str) == sorted(
        [
            ("infer", "CoOp", 3, None, None),
            ("infer", REFERENCE, 3, None, None),
            ("infer", "CoOpDiff", 3, 1, None),
            ("infer", "CoOpDiff", 3, 10, None),
            ("train stage 1", "CoOp", 3, None, None),
            ("train stage 2", "CoOpDiff", 3, None, 2),
        ],
        key=str,
    )
    assert notes == []
    text = table(rows)
    assert len(text.splitlines()) == 2 + len(rows)  # header, rule, one line per row


def test_times_positive_finite_and_ratios_against_coop(tiny_run):
    opts, rows, _ = tiny_run
    for row in rows:
        assert len(row.samples) >= 1  # Timer.blocked_autorange: a warm-up, then >= 1 timed call
        assert all(math.isfinite(t) and t > 0 for t in row.samples), row
        assert math.isfinite(row.ms_per_image) and row.ms_per_image > 0
        assert row.ratio is not None and math.isfinite(row.ratio) and row.ratio > 0
        if row.trainer == "CoOp":
            assert row.ratio == 1.0
        if row.phase == "infer":
            assert row.once_ms is not None and row.once_ms >= 0


def test_sampler_share_and_denoiser_calls_scale_with_steps(tiny_run):
    _, rows, _ = tiny_run
    by_key = {r.key: r for r in rows}
    diff = [r for r in rows if r.phase == "infer" and r.trainer == "CoOpDiff"]
    assert len(diff) == 2
    for row in diff:
        assert 0.0 < row.sampler_share < 1.0
    for row in rows:
        if row not in diff:
            assert row.sampler_share is None and row.denoiser_calls is None
    s1 = by_key[("infer", "CoOpDiff", 3, 1, None)].denoiser_calls
    s10 = by_key[("infer", "CoOpDiff", 3, 10, None)].denoiser_calls
    assert s1 >= 1 and s10 == 10 * s1  # DDIM: one denoiser call per step for the whole batch


def test_probe_and_cfg_override_leave_the_trainer_as_built(tmp_path):
    opts = Options(size="tiny", verbose=False)
    ws = Workspace(str(tmp_path), "tiny")
    trainer = build("CoOpDiff", 2, ws, opts)
    images, _ = batch(trainer, 3, "test")
    steps = trainer.cfg.TRAINER.PD.STEPS
    with pd_keys(trainer, STEPS=3):
        assert trainer.cfg.TRAINER.PD.STEPS == 3
        res = time_inference(trainer, images, min_time=0.0)
    assert trainer.cfg.TRAINER.PD.STEPS == steps and trainer.cfg.is_frozen()
    assert res["denoiser_calls"] == 3
    # the probe removed its hooks and its wrapper of diffusion.sample
    nets = [trainer.diffusion.denoiser, trainer.diffusion.ema]
    assert all(not net._forward_hooks for net in nets if net is not None)
    assert "sample" not in vars(trainer.diffusion)
    with Probe(trainer) as probe, torch.no_grad():
        trainer.model_inference(images)
    assert probe.calls == steps and probe.sample_s > 0


def test_unregistered_trainers_are_skipped_not_fatal():
    ok, skipped = available(["CoOp", "NoSuchTrainer", REFERENCE])
    assert ok == ["CoOp", REFERENCE] and skipped == ["NoSuchTrainer"]
    opts = Options(size="tiny", classes=[2], trainers=["NoSuchTrainer", "CoOp"], train_k=[2])
    assert [k[1] for k in plan(opts)] == ["CoOp", "CoOp"]


def test_cli_writes_the_markdown_table(tmp_path, capsys):
    out = tmp_path / "bench.md"
    argv = ["--size", "tiny", "--classes", "2", "--trainers", "CoOp", "NoSuchTrainer",
            "--images", "2", "--min-time", "0", "--train-classes", "--quiet", "--no-rows",
            "--workdir", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    written = out.read_text()
    assert "| infer" in printed and "| CoOp" in written
    assert "NoSuchTrainer: not registered" in written
    assert sum(line.startswith("| infer") for line in written.splitlines()) == 1


# ---- the named rows (plain vs fast), at small sizes ----------------------------------------------
@pytest.fixture(scope="module")
def fast_rows():
    bench = Bench("quick", images=2, min_run_time=0.0, rounds=1, peak_tflops=1.0)
    return [
        bench.truncation(16, n_cls=6),
        bench.truncation(4, n_cls=6),
        bench.prefix(16, n_cls=6),
        bench.prefix(4, n_cls=6),
        bench.prefix_train(16, n_cls=6),
        bench.eval_cache(n_cls=8, n_images=2),
        bench.chunk_memory(chunk=50),
        bench.topk_overfit(n_cls=12, keep=4, steps=2),
    ]


def test_named_rows_are_exact_and_consistent(fast_rows):
    names = [r.name for r in fast_rows]
    assert names[:5] == [
        "truncation_ctx16", "truncation_ctx4", "prefix_ctx16", "prefix_ctx4", "prefix_train_ctx16"
    ]  # fmt: skip
    assert names[5:] == ["eval_cache_8", "chunk_memory_1000_vs_100", "topk_overfit_12"]
    for row in fast_rows:
        assert row.plain_ms > 0 and row.fast_ms > 0, row
        assert row.ratio == pytest.approx(row.plain_ms / row.fast_ms)
        if not row.name.startswith("topk"):  # the exact fast paths
            assert row.max_abs_diff <= EXACT_TOL, row
        if row.name in TARGETS:
            assert row.target().endswith(("met", "MISSED"))
    topk = fast_rows[-1]
    assert 0.0 <= topk.max_abs_diff <= 2.0 and "cosine" in topk.note  # 1 - mean cosine


def test_json_has_the_issues_fields(fast_rows, tmp_path):
    path = tmp_path / "rows.json"
    write_json(str(path), fast_rows)
    rows = json.loads(path.read_text())["rows"]
    assert [r["name"] for r in rows] == [r.name for r in fast_rows]
    assert all(
        set(r) == {"name", "plain_ms", "fast_ms", "ratio", "max_abs_diff", "note"} for r in rows
    )


def test_tensor_memory_counts_what_a_call_holds_at_its_peak():
    x = torch.randn(256, 1024)  # 1 MiB, created outside: not counted
    mb, out = peak_mb(lambda: (x + 1) * 2, torch.device("cpu"))
    assert mb == pytest.approx(2.0)  # x + 1 is alive while (x + 1) * 2 is computed
    torch.testing.assert_close(out, (x + 1) * 2)
    with TensorMemory() as counter:
        y = x.view(-1)  # a view of an outside tensor allocates nothing
        y.add_(1)
    assert counter.peak == 0


def test_synthetic_class_names_stay_distinct_past_the_colour_shape_pairs():
    from promptdiff.worlds.shapes_caltech import class_names

    names = class_names(60)
    assert len(set(names)) == 60 and names[:24] == class_names(24)
    assert names[24] == names[0] + "_2" and names[48] == names[0] + "_3"
    with pytest.raises(ValueError, match="n_classes must be >= 1"):
        class_names(0)
