"""Engine behaviour users rely on: few-shot sampling, base/new, splits, schedules, checkpoints."""

from __future__ import annotations

import math
import os
import random
from collections import defaultdict

import pytest
import torch

import datasets  # noqa: F401
from datasets.common import read_split, save_split, subsample_classes
from promptdiff.engine import (
    DatasetBase,
    Datum,
    build_lr_scheduler,
    build_optimizer,
    get_cfg_default,
    merge_file,
)
from promptdiff.engine.config import ConfigError
from promptdiff.engine.registry import build_dataset


def _caltech_cfg(root: str, shots: int = 2, seed: int = 1, sub: str = "all"):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = root
    cfg.DATASET.NAME = "Caltech101"
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = sub
    cfg.SEED = seed
    return cfg


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


def test_fewshot_same_seed_same_subset_other_seed_other_subset(tmp_path):
    items = _items(tmp_path)

    def draw(seed):
        random.seed(seed)
        return [x.impath for x in DatasetBase().generate_fewshot_dataset(items, num_shots=2)]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert len(draw(1)) == 5 * 2


def test_fewshot_through_dataset_and_cache(shapes_root, tmp_path):
    import shutil

    root = str(tmp_path / "copy")
    shutil.copytree(shapes_root, root)
    random.seed(1)
    first = build_dataset(_caltech_cfg(root, shots=2, seed=1))
    cache = os.path.join(root, "caltech-101", "split_fewshot", "shot_2-seed_1.json")
    assert os.path.isfile(cache)
    random.seed(12345)  # the cache, not the RNG, decides now
    again = build_dataset(_caltech_cfg(root, shots=2, seed=1))
    assert [x.impath for x in first.train_x] == [x.impath for x in again.train_x]
    counts = defaultdict(int)
    for x in first.train_x:
        counts[x.label] += 1
    assert set(counts.values()) == {2} and len(counts) == 6
    assert all(c <= 2 for c in defaultdict(int, {x.label: 0 for x in first.val}).values())


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


def test_split_json_round_trip(tmp_path):
    items = _items(tmp_path, n_labels=3, per_label=3)
    path = str(tmp_path / "split.json")
    save_split(items[:4], items[4:6], items[6:], path, str(tmp_path))
    train, val, test = read_split(path, str(tmp_path))
    for got, want in ((train, items[:4]), (val, items[4:6]), (test, items[6:])):
        assert [(x.impath, x.label, x.classname) for x in got] == [
            (x.impath, x.label, x.classname) for x in want
        ]


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


def test_missing_image_in_split_names_image_and_split(shapes_root, tmp_path):
    import json
    import shutil

    root = str(tmp_path / "copy")
    shutil.copytree(shapes_root, root)
    build_dataset(_caltech_cfg(root, shots=-1))  # writes the split file
    split_file = os.path.join(root, "caltech-101", "split_zhou_Caltech101.json")
    with open(split_file) as f:
        split = json.load(f)
    missing = split["test"][0][0]
    os.remove(os.path.join(root, "caltech-101", "101_ObjectCategories", missing))
    with pytest.raises(FileNotFoundError, match="split_zhou_Caltech101.json") as err:
        build_dataset(_caltech_cfg(root, shots=-1))
    assert missing.split("/")[-1] in str(err.value)


def test_integer_for_float_key_on_command_line_is_accepted():
    from promptdiff.engine import merge_opts

    cfg = get_cfg_default()
    merge_opts(cfg, ["OPTIM.LR", "1", "OPTIM.MAX_EPOCH", "3"])
    assert cfg.OPTIM.LR == 1.0 and isinstance(cfg.OPTIM.LR, float)
    assert cfg.OPTIM.MAX_EPOCH == 3
    with pytest.raises(ConfigError, match="OPTIM.MAX_EPOCH"):
        merge_opts(cfg, ["OPTIM.MAX_EPOCH", "2.5"])
