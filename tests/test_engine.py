"""Engine behaviour users rely on: few-shot sampling, base/new, schedules, config merging
(the datasets built end to end are tests/test_datasets.py's)."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import pytest
import torch

from promptdiff.datasets.common import subsample_classes
from promptdiff.engine import (
    DatasetBase,
    Datum,
    build_lr_scheduler,
    build_optimizer,
    get_cfg_default,
    merge_file,
)
from promptdiff.engine.config import ConfigError


def _items(tmp_path, n_labels=5, per_label=7):
    out = []
    for label in range(n_labels):
        for i in range(per_label):
            path = tmp_path / f"{label}_{i}.jpg"
            path.write_bytes(b"x")
            out.append(Datum(str(path), label, 0, f"class{label}"))
    random.Random(0).shuffle(out)
    return out


def test_fewshot_is_upstream_random_sample_in_label_order(tmp_path):
    items = _items(tmp_path)
    random.seed(3)
    got = DatasetBase().generate_fewshot_dataset(items, num_shots=3)
    random.seed(3)
    groups = defaultdict(list)
    for item in items:
        groups[item.label].append(item)
    expected = [x for label_items in groups.values() for x in random.sample(label_items, 3)]
    assert [x.impath for x in got] == [x.impath for x in expected]


def test_base_new_split_sizes_and_relabelling(tmp_path):
    items = _items(tmp_path, n_labels=5)
    base = subsample_classes(items, subsample="base")[0]
    new = subsample_classes(items, subsample="new")[0]
    assert sorted({x.label for x in base}) == [0, 1, 2]  # ceil(5 / 2) base classes
    assert sorted({x.label for x in new}) == [0, 1]
    assert {x.classname for x in base} == {"class0", "class1", "class2"}
    assert {x.classname for x in new} == {"class3", "class4"}
    assert all(x.classname == f"class{x.label + 3}" for x in new)
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES"):
        subsample_classes(items, subsample="half")


def test_coop_config_learning_rate_per_epoch():
    cfg = get_cfg_default()
    merge_file(cfg, "configs/trainers/CoOp/vit_b16_ep50.yaml")
    param = torch.nn.Parameter(torch.zeros(1))
    optim = build_optimizer([param], cfg.OPTIM)
    sched = build_lr_scheduler(optim, cfg.OPTIM)
    lrs = []
    for _ in range(cfg.OPTIM.MAX_EPOCH):
        lrs.append(optim.param_groups[0]["lr"])
        optim.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-5)
    for epoch in range(1, 50):  # cosine restarts after the warmup and spans MAX_EPOCH epochs
        want = 0.5 * 0.002 * (1 + math.cos(math.pi * (epoch - 1) / 50))
        assert lrs[epoch] == pytest.approx(want, rel=1e-9)


def test_unknown_config_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM:\n  LRR: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*OPTIM\.LRR"):
        merge_file(get_cfg_default(), str(bad))


def test_integer_for_float_key_on_command_line_is_accepted():
    from promptdiff.engine import merge_opts

    cfg = get_cfg_default()
    merge_opts(cfg, ["OPTIM.LR", "1", "OPTIM.MAX_EPOCH", "3"])
    assert cfg.OPTIM.LR == 1.0 and isinstance(cfg.OPTIM.LR, float)
    assert cfg.OPTIM.MAX_EPOCH == 3
    with pytest.raises(ConfigError, match="OPTIM.MAX_EPOCH"):
        merge_opts(cfg, ["OPTIM.MAX_EPOCH", "2.5"])
