"""The host switch's error path, and the demo's table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from promptdiff.worlds import miniature as mw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import demo  # noqa: E402


def test_dassl_host_without_dassl_is_one_line_error():
    try:
        import dassl  # noqa: F401

        pytest.skip("a real Dassl is installed here; this checks the message when it is not")
    except ImportError:
        pass
    proc = subprocess.run(
        [sys.executable, "train.py", "--host", "dassl", "--trainer", "CoOp"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "PROMPTDIFF_HOST=dassl" in lines[0] and "Dassl" in lines[0]


def test_unknown_host_value_is_rejected():
    env = dict(os.environ, PROMPTDIFF_HOST="detectron")
    proc = subprocess.run(
        [sys.executable, "-c", "import promptdiff.host"], cwd=ROOT, env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "PROMPTDIFF_HOST='detectron'" in proc.stderr


def test_demo_table_has_its_rows_columns_and_image_counts(tmp_path):
    """The demo's table, from results folders as its runs write them: one row per dataset and the
    average, Base / New / HM columns for each of its three trainers, HM the harmonic mean, and a
    footnote with the test images per half, counted from the world's own split file."""
    spec = mw.WorldSpec(n_train=1, n_val=1, n_test=3, colours=("red", "green", "blue"))
    mw.write_world(str(tmp_path), spec, progress=False)
    output = tmp_path / "output"
    accuracy = {"ZeroshotCLIP": (61.0, 64.0), "CoOp": (90.0, 80.0), "CoOpDiff": (92.5, 70.0)}
    for trainer, (base, new) in accuracy.items():
        for part, acc, sub in (("train_base", base, "base"), ("test_new", new, "new")):
            run = output / "base2new" / part / "miniworld" / "shots_16" / trainer / "cfg" / "seed1"
            run.mkdir(parents=True)
            record = {"accuracy": acc, "subsample_classes": sub}
            (run / "results.json").write_text(json.dumps(record))
    table = demo.tmw.tables(str(output), demo.TRAINERS, [1], (), ("base2new",), std=False)
    rows = [r for r in table.splitlines() if r.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["Dataset"] + [
        f"{t} {c}" for t in demo.TRAINERS for c in ("Base", "New", "HM")
    ]
    body = {
        r.split("|")[1].strip(): [float(c) for c in r.strip("|").split("|")[1:]] for r in rows[2:]
    }
    assert set(body) == {"miniworld", "Average"}
    for k, (base, new) in enumerate(accuracy.values()):
        assert body["miniworld"][3 * k : 3 * k + 3] == pytest.approx(
            [base, new, 2 * base * new / (base + new)], abs=0.006
        )
    note = demo.footnote(str(tmp_path))
    # 3 colours x 5 shapes: 8 base and 7 new classes (Dassl's ceil(n / 2)), 3 test images each
    assert re.search(r"Base rests on 24 test images and New on 21", note), note
