"""The 15 CoOp-family datasets on synthetic copies of their real on-disk layouts, and the checker."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
import shutil
from collections import Counter, defaultdict

import pytest
from synthetic_layouts import LAYOUTS

import promptdiff.datasets  # noqa: F401  (registers every dataset)
from promptdiff.datasets.common import Layout, read_split, save_split
from promptdiff.engine import DATASET_REGISTRY, get_cfg_default, set_random_seed
from promptdiff.engine.registry import build_dataset
from promptdiff.tools import check_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
COOP = [n for n in LAYOUTS if n not in VARIANTS]  # go through few-shot and base/new
SPLIT_FILE = {  # datasets that read split_zhou_<Name>.json, or generate and save it
    n: f"split_zhou_{n}.json"
    for n in (
        "Caltech101",
        "OxfordPets",
        "StanfordCars",
        "OxfordFlowers",
        "Food101",
        "SUN397",
        "DescribableTextures",
        "EuroSAT",
        "UCF101",
    )
}
DATASET_DIR = {
    "Caltech101": "caltech-101",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers",
    "Food101": "food-101",
    "FGVCAircraft": "fgvc_aircraft",
    "SUN397": "sun397",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "UCF101": "ucf101",
    "ImageNet": "imagenet",
    "ImageNetV2": "imagenetv2",
    "ImageNetSketch": "imagenet-sketch",
    "ImageNetA": "imagenet-adversarial",
    "ImageNetR": "imagenet-rendition",
}
# the folder split paths are relative to (StanfordCars: the dataset folder itself)
SPLIT_PREFIX = {
    "Caltech101": "caltech-101/101_ObjectCategories",
    "OxfordPets": "oxford_pets/images",
    "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers/jpg",
    "Food101": "food-101/images",
    "SUN397": "sun397/SUN397",
    "DescribableTextures": "dtd/images",
    "EuroSAT": "eurosat/2750",
    "UCF101": "ucf101/UCF-101-midframes",
}
# class names by label with the makers' default sizes (renamings spelled out)
CLASSNAMES = {
    "Caltech101": ["face", "leopard", "motorbike", "accordion", "airplane"],
    "OxfordPets": ["abyssinian", "american_bulldog", "bengal", "boxer", "british_shorthair"],
    "StanfordCars": [
        "2000 AM General Hummer SUV",
        "2012 Acura RL Sedan",
        "2012 Aston Martin V8 Vantage Convertible",
        "2012 BMW M3 Coupe",
        "2012 Chevrolet Corvette ZR1",
    ],
    "OxfordFlowers": [
        "pink primrose",
        "hard-leaved pocket orchid",
        "canterbury bells",
        "sweet pea",
        "english marigold",
    ],
    "Food101": ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare"],
    "FGVCAircraft": ["707-320", "A300B4", "Cessna 172", "F-16A/B", "Boeing 717"],
    "SUN397": ["abbey", "outdoor apartment_building", "shop bakery", "bar", "campus"],
    "DescribableTextures": ["banded", "blotchy", "braided", "bubbly", "bumpy"],
    "EuroSAT": [
        "Annual Crop Land",
        "Forest",
        "Herbaceous Vegetation Land",
        "Highway or Road",
        "Industrial Buildings",
    ],
    "UCF101": ["Apply_Eye_Makeup", "Blow_Dry_Hair", "Handstand_Pushups", "Yo_Yo", "Playing_Daf"],
    "ImageNet": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"],
    "ImageNetV2": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"],
    "ImageNetSketch": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"],
    # the 200-class sets: only some classes of classnames.txt, labelled 0.. by sorted folder
    "ImageNetA": ["tench", "great white shark", "hammerhead shark", "stingray"],
    "ImageNetR": ["tench", "great white shark", "hammerhead shark", "stingray"],
}
# images per class in (train, val, test) with the makers' defaults (20 per class): 50/20/30 per
# class folder or list; 80/20 of the official train+val list plus 5 test images; ImageNet's val is
# its test (and val) set; the variants are test-only (train_x is the test set, no val)
PER_CLASS = {
    **dict.fromkeys(
        [
            "Caltech101",
            "OxfordFlowers",
            "Food101",
            "FGVCAircraft",
            "DescribableTextures",
            "EuroSAT",
        ],
        (10, 4, 6),
    ),
    **dict.fromkeys(["OxfordPets", "StanfordCars", "SUN397", "UCF101"], (16, 4, 5)),
    "ImageNet": (20, 5, 5),
    **dict.fromkeys(VARIANTS, (3, 0, 3)),
}
# a file or folder each dataset cannot do without (on a layout without a split file)
REQUIRED = {
    "Caltech101": "caltech-101/101_ObjectCategories",
    "OxfordPets": "oxford_pets/annotations/trainval.txt",
    "StanfordCars": "stanford_cars/devkit/cars_train_annos.mat",
    "OxfordFlowers": "oxford_flowers/imagelabels.mat",
    "Food101": "food-101/images",
    "FGVCAircraft": "fgvc_aircraft/images_variant_val.txt",
    "SUN397": "sun397/ClassName.txt",
    "DescribableTextures": "dtd/images",
    "EuroSAT": "eurosat/2750",
    "UCF101": "ucf101/ucfTrainTestlist/classInd.txt",
    "ImageNet": "imagenet/classnames.txt",
    "ImageNetV2": "imagenetv2/classnames.txt",
    "ImageNetSketch": "imagenet-sketch/classnames.txt",
    "ImageNetA": "imagenet-adversarial/classnames.txt",
    "ImageNetR": "imagenet-rendition/classnames.txt",
}


def build(root, name, shots=-1, sub="all", seed=1):
    """Seed once, then build through the registry (as train.py does)."""
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = sub
    cfg.SEED = seed
    set_random_seed(seed)
    return build_dataset(cfg)


def rows(items, root):
    """(path relative to root, label, classname) of each item, comparable across roots."""
    return [(os.path.relpath(x.impath, str(root)), x.label, x.classname) for x in items or []]


def per_label(items) -> dict[int, int]:
    return dict(Counter(x.label for x in items or []))


@pytest.fixture
def layout(tmp_path):
    """layout(name, **kw) writes a fresh synthetic layout and returns its root."""

    def _make(name, sub="data", **kw):
        return LAYOUTS[name](str(tmp_path / sub), **kw)

    return _make


def run_checker(capsys, root, *names):
    rc = check_dataset.main(["--root", str(root), *names])
    return rc, capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# registry and configs


def test_every_dataset_has_a_config_and_a_synthetic_layout():
    from promptdiff.worlds.miniature import DOMAINS, WORLDS, domain_dataset_name

    names = set(DATASET_REGISTRY.registered_names())
    miniworld = {domain_dataset_name(d, kind) for d in DOMAINS for kind in WORLDS}
    assert len(miniworld) == len(DOMAINS) * len(WORLDS) == 10
    assert set(LAYOUTS) <= names and len(LAYOUTS) == 15 and miniworld <= names
    configs = check_dataset.config_names()
    assert len(configs) == 15 + len(miniworld)
    assert set(configs.values()) == set(LAYOUTS) | miniworld
    assert configs["oxford_pets"] == "OxfordPets" and configs["dtd"] == "DescribableTextures"
    assert configs["imagenet_sketch"] == "ImageNetSketch" and configs["imagenetv2"] == "ImageNetV2"
    with open(os.path.join(REPO_ROOT, "configs", "datasets", "fgvc_aircraft.yaml")) as f:
        assert f.read() == 'DATASET:\n  NAME: "FGVCAircraft"\n'


def test_every_registered_dataset_declares_its_files():
    """The checker knows a dataset only through its class's layout(): one without it would be
    left out of `all`, so every registered dataset must declare one, in its own folder."""
    names = DATASET_REGISTRY.registered_names()
    for name in names:
        cls = DATASET_REGISTRY.get(name)
        assert callable(getattr(cls, "layout", None)), f"{name} declares no layout()"
        layout = cls.layout()
        assert isinstance(layout, Layout) and layout.folder == cls.dataset_dir, name
        paths = [*layout.dirs, *layout.files, layout.split, *layout.build_files, *layout.lists]
        flat = [p for e in paths for p in (e if isinstance(e, tuple) else (e,)) if p]
        assert flat, f"{name} declares no folder or file"
        own = [p for p in flat if p.startswith(layout.folder + os.sep)]
        assert own, f"{name} declares nothing inside {layout.folder}"
    assert list(check_dataset.layouts()) == names


# ---------------------------------------------------------------------------------------------
# full datasets: class names, labels, counts


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_classnames_labels_and_counts(layout, name):
    ds = build(layout(name), name)
    want = CLASSNAMES[name]
    assert ds.classnames == want and ds.num_classes == len(want)
    assert ds.lab2cname == dict(enumerate(want))
    n_train, n_val, n_test = PER_CLASS[name]
    assert per_label(ds.train_x) == dict.fromkeys(range(len(want)), n_train)
    assert per_label(ds.val) == (dict.fromkeys(range(len(want)), n_val) if n_val else {})
    assert per_label(ds.test) == dict.fromkeys(range(len(want)), n_test)
    for items in (ds.train_x, ds.val or [], ds.test):
        assert all(x.classname == want[x.label] for x in items)
    if name in VARIANTS:
        assert ds.train_x is ds.test and ds.val is None  # test-only, as upstream
    if name == "ImageNet":
        assert ds.val is ds.test  # val is the test set


def test_imagenet_a_ignores_readme_and_labels_present_folders_only(layout):
    root = layout("ImageNetA")
    assert os.path.isfile(os.path.join(root, "imagenet-adversarial", "imagenet-a", "README.txt"))
    ds = build(root, "ImageNetA")
    wnids = sorted({os.path.basename(os.path.dirname(x.impath)) for x in ds.test})
    assert [wnids.index(os.path.basename(os.path.dirname(x.impath))) for x in ds.test] == [
        x.label for x in ds.test
    ]


# ---------------------------------------------------------------------------------------------
# split files


@pytest.mark.parametrize("name", list(SPLIT_FILE))
def test_generated_split_is_saved_and_read_back(layout, name):
    root = layout(name)
    split_path = os.path.join(root, DATASET_DIR[name], SPLIT_FILE[name])
    assert not os.path.exists(split_path)
    first = build(root, name)  # generates the split and saves it
    assert os.path.isfile(split_path)
    second = build(root, name, seed=7)  # reads it: the seed no longer matters
    for a, b in (
        (first.train_x, second.train_x),
        (first.val, second.val),
        (first.test, second.test),
    ):
        assert rows(a, root) == rows(b, root)
    # paths in the file are relative to the image folder (StanfordCars: the dataset folder)
    prefix = os.path.join(root, SPLIT_PREFIX[name])
    train, val, test = read_split(split_path, prefix)
    assert rows(train, root) == rows(first.train_x, root)
    if name == "StanfordCars":
        assert os.path.relpath(train[0].impath, prefix).startswith("cars_train")
    # save_split -> read_split round trip
    copy = os.path.join(root, "copy.json")
    save_split(train, val, test, copy, prefix)
    for a, b in zip(read_split(copy, prefix), (train, val, test)):
        assert rows(a, root) == rows(b, root)


def test_first_run_without_split_consumes_split_rng_before_fewshot(layout):
    """Upstream RNG order: (1) split_trainval shuffles per label, (2) few-shot sampling; a later run
    that reads the saved split skips (1), so it draws other images (documented quirk)."""
    root = layout("OxfordPets")
    k, seed = 3, 5
    first = build(root, "OxfordPets", shots=k, seed=seed)
    split = os.path.join(root, "oxford_pets", SPLIT_FILE["OxfordPets"])
    train, val, _ = read_split(split, os.path.join(root, "oxford_pets", "images"))

    def expected(consume_split_rng: bool):
        random.seed(seed)
        if consume_split_rng:
            for _ in range(5):  # 5 breeds, 20 trainval images each, in order of appearance
                random.shuffle(list(range(20)))
        out = []
        for items, shots in ((train, k), (val, min(k, 4))):
            groups = defaultdict(list)
            for x in items:
                groups[x.label].append(x)
            out.append([x.impath for g in groups.values() for x in random.sample(g, shots)])
        return out

    assert expected(True) != expected(False)  # the test can tell the two orders apart
    assert [[x.impath for x in first.train_x], [x.impath for x in first.val]] == expected(True)
    shutil.rmtree(os.path.join(root, "oxford_pets", "split_fewshot"))
    later = build(root, "OxfordPets", shots=k, seed=seed)
    assert [[x.impath for x in later.train_x], [x.impath for x in later.val]] == expected(False)


# ---------------------------------------------------------------------------------------------
# few-shot subsets and their cache


@pytest.mark.parametrize("name", COOP)
def test_fewshot_counts_and_cache_reuse(layout, name):
    root = layout(name)
    n = len(CLASSNAMES[name])
    for k in (2, 5):
        ds = build(root, name, shots=k, seed=1)
        assert per_label(ds.train_x) == dict.fromkeys(range(n), k)
        if name == "ImageNet":  # val is the whole test set, never few-shot
            assert ds.val is ds.test and per_label(ds.val) == dict.fromkeys(range(n), 5)
        else:
            assert per_label(ds.val) == dict.fromkeys(range(n), min(k, 4))
        assert per_label(ds.test) == dict.fromkeys(range(n), PER_CLASS[name][2])
        cache = os.path.join(root, DATASET_DIR[name], "split_fewshot", f"shot_{k}-seed_1.json")
        assert os.path.isfile(cache)
        with open(cache) as f:
            assert f.read().lstrip().startswith("{")  # JSON, not a pickle
        random.seed(12345)
        again = build(root, name, shots=k, seed=1)  # set_random_seed(1) again: the cache decides
        assert [x.impath for x in again.train_x] == [x.impath for x in ds.train_x]
        assert [x.impath for x in again.val] == [x.impath for x in ds.val]


@pytest.mark.parametrize("name", COOP)
def test_same_seed_same_subset_other_seed_other_subset(layout, name):
    a, b = layout(name, sub="a"), layout(name, sub="b")
    first = build(a, name, shots=2, seed=1)
    same = build(b, name, shots=2, seed=1)  # an identical fresh copy, same seed
    assert rows(first.train_x, a) == rows(same.train_x, b)
    assert rows(first.val, a) == rows(same.val, b)
    assert per_label(first.train_x) == dict.fromkeys(range(len(CLASSNAMES[name])), 2)
    other = build(a, name, shots=2, seed=2)
    assert rows(other.train_x, a) != rows(first.train_x, a)
    assert per_label(other.train_x) == per_label(first.train_x)


def test_imagenet_fewshot_cache_skips_listing_train(layout):
    root = layout("ImageNet")
    ds = build(root, "ImageNet", shots=2)
    kept = {x.impath for x in ds.train_x}
    train_dir = os.path.join(root, "imagenet", "images", "train")
    for folder in os.listdir(train_dir):  # drop every training image the subset does not use
        for im in os.listdir(os.path.join(train_dir, folder)):
            if os.path.join(train_dir, folder, im) not in kept:
                os.remove(os.path.join(train_dir, folder, im))
    again = build(root, "ImageNet", shots=2)
    assert [x.impath for x in again.train_x] == [x.impath for x in ds.train_x]


# ---------------------------------------------------------------------------------------------
# base / new classes


@pytest.mark.parametrize("name", COOP)
def test_base_and_new_halves(layout, name):
    root = layout(name)
    want = CLASSNAMES[name]
    m = math.ceil(len(want) / 2)
    base = build(root, name, sub="base")
    new = build(root, name, sub="new")
    assert base.classnames == want[:m] and new.classnames == want[m:]
    n_train, n_val, n_test = PER_CLASS[name]
    for ds, n in ((base, m), (new, len(want) - m)):
        assert per_label(ds.train_x) == dict.fromkeys(range(n), n_train)
        assert per_label(ds.val) == dict.fromkeys(range(n), n_val)
        assert per_label(ds.test) == dict.fromkeys(range(n), n_test)
    assert all(x.classname == want[m + x.label] for x in new.test)
    # with few shots too (base-to-new training uses 16 shots then the base half)
    fs = build(root, name, shots=2, sub="base")
    assert per_label(fs.train_x) == dict.fromkeys(range(m), 2)


@pytest.mark.parametrize("name", VARIANTS)
def test_variants_ignore_shots_and_subsample(layout, name):
    root = layout(name)
    ds = build(root, name, shots=2, sub="base")
    assert ds.classnames == CLASSNAMES[name]
    assert len(ds.test) == len(CLASSNAMES[name]) * PER_CLASS[name][2]
    assert not os.path.exists(os.path.join(root, DATASET_DIR[name], "split_fewshot"))


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_classnames_fall_back_to_imagenet_folder(layout, name):
    root = layout(name, classnames_at_imagenet=True)
    assert not os.path.exists(os.path.join(root, DATASET_DIR[name], "classnames.txt"))
    assert build(root, name).classnames == CLASSNAMES[name]
    os.remove(os.path.join(root, "imagenet", "classnames.txt"))
    own = os.path.join(root, DATASET_DIR[name], "classnames.txt")
    with pytest.raises(FileNotFoundError, match=re.escape(own)):
        build(root, name)


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_missing_dataset_folder_names_it(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / DATASET_DIR[name]))):
        build(tmp_path, name)


def _remove(path):
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_missing_required_file_names_it(layout, name):
    root = layout(name)
    path = os.path.join(root, REQUIRED[name])
    _remove(path)
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        build(root, name)


@pytest.mark.parametrize("name", [*SPLIT_FILE, "FGVCAircraft"])
def test_split_naming_a_missing_image_names_image_and_split(layout, name):
    root = layout(name)
    ds = build(root, name)  # writes the split file (FGVCAircraft: reads the official lists)
    # a train image, and for split files a test image too (FGVCAircraft stops at its train list)
    victims = [ds.train_x[0].impath] + ([] if name == "FGVCAircraft" else [ds.test[-1].impath])
    for victim in victims:
        os.remove(victim)
    if name == "FGVCAircraft":
        source = os.path.join(root, "fgvc_aircraft", "images_variant_train.txt")
    else:
        source = os.path.join(root, DATASET_DIR[name], SPLIT_FILE[name])
    with pytest.raises(FileNotFoundError, match=re.escape(victims[0])) as err:
        build(root, name)
    assert source in str(err.value) and all(v in str(err.value) for v in victims)


def test_fewshot_cache_naming_a_missing_image_names_both(layout):
    root = layout("ImageNet")
    ds = build(root, "ImageNet", shots=2)
    os.remove(ds.train_x[0].impath)
    cache = os.path.join(root, "imagenet", "split_fewshot", "shot_2-seed_1.json")
    with pytest.raises(FileNotFoundError, match=re.escape(ds.train_x[0].impath)) as err:
        build(root, "ImageNet", shots=2)
    assert cache in str(err.value)


def test_imagenet_flat_val_folder_is_explained(layout):
    root = layout("ImageNet")
    val = os.path.join(root, "imagenet", "images", "val")
    for folder in os.listdir(val):
        for im in os.listdir(os.path.join(val, folder)):
            shutil.move(os.path.join(val, folder, im), os.path.join(val, im))
        os.rmdir(os.path.join(val, folder))
    with pytest.raises(FileNotFoundError, match=re.escape(val) + ".*class folder"):
        build(root, "ImageNet")


# ---------------------------------------------------------------------------------------------
# tools/check_dataset.py


def test_checker_ready_on_every_layout(tmp_path, capsys):
    from promptdiff.worlds import miniature as miniworld

    root = str(tmp_path / "data")
    for maker in LAYOUTS.values():
        maker(root)
    for spec in miniworld.WORLDS.values():  # both worlds' datasets are registered
        tiny = dataclasses.replace(spec, n_train=1, n_val=1, n_test=1)
        miniworld.write_world(root, tiny, progress=False)
    rc, out = run_checker(capsys, root, "all")
    assert rc == 0
    for name in LAYOUTS:
        assert f"{name}: READY" in out
    assert "MISSING" not in out
    # config names and any case work too
    rc, out = run_checker(capsys, root, "oxford_pets", "imagenet_r", "eurosat")
    assert rc == 0 and out.count("READY") == 3 and "ImageNetR: READY" in out


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_checker_names_what_is_missing(layout, capsys, name):
    root = layout(name)
    path = os.path.join(root, REQUIRED[name])
    _remove(path)
    rc, out = run_checker(capsys, root, name)
    assert rc == 1
    assert f"{name}: MISSING" in out and path in out


def test_checker_missing_dataset_folder_and_mixed_exit_code(layout, capsys):
    root = layout("EuroSAT")
    rc, out = run_checker(capsys, root, "EuroSAT", "dtd")
    assert rc == 1
    assert "EuroSAT: READY" in out
    assert "DescribableTextures: MISSING" in out and os.path.join(root, "dtd") in out


def test_checker_counts_images_missing_from_split_file(layout, capsys):
    root = layout("StanfordCars")
    ds = build(root, "StanfordCars")  # saves split_zhou_StanfordCars.json
    shutil.rmtree(os.path.join(root, "stanford_cars", "devkit"))  # not needed with a split file
    rc, out = run_checker(capsys, root, "stanford_cars")
    total = len(ds.train_x) + len(ds.val) + len(ds.test)
    assert rc == 0 and f"all {total} images listed in" in out
    for x in ds.test[:2]:
        os.remove(x.impath)
    rc, out = run_checker(capsys, root, "stanford_cars")
    split = os.path.join(root, "stanford_cars", "split_zhou_StanfordCars.json")
    assert rc == 1 and f"2 of {total} images listed in {split}" in out
    rc, out = run_checker(capsys, root, "--sample", "5", "StanfordCars")
    assert "of 5 sampled images listed in" in out or "all 5 sampled images" in out


def test_checker_explains_flat_imagenet_val(layout, capsys):
    root = layout("ImageNet")
    val = os.path.join(root, "imagenet", "images", "val")
    for folder in os.listdir(val):
        shutil.rmtree(os.path.join(val, folder))
    with open(os.path.join(val, "ILSVRC2012_val_00000001.JPEG"), "wb") as f:
        f.write(b"x")
    rc, out = run_checker(capsys, root, "ImageNet")
    assert rc == 1 and "class folders in " + val in out


def test_checker_rejects_unknown_names(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        check_dataset.main(["--root", str(tmp_path), "NoSuchSet"])
    assert err.value.code == 2
    assert "NoSuchSet" in capsys.readouterr().err


def test_checker_runs_as_a_script_from_the_repo_root(layout):
    import subprocess
    import sys

    root = layout("Food101")
    script = os.path.join(REPO_ROOT, "tools", "check_dataset.py")
    ok = subprocess.run([sys.executable, script, "--root", root, "food101"], capture_output=True)
    assert ok.returncode == 0 and b"Food101: READY" in ok.stdout
    bad = subprocess.run([sys.executable, script, "--root", root, "dtd"], capture_output=True)
    assert bad.returncode == 1 and b"DescribableTextures: MISSING" in bad.stdout
