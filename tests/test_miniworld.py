"""The miniature world: deterministic, every domain renders every class, readable as datasets."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from promptdiff.worlds import miniature as mw

TINY = mw.WorldSpec(n_train=3, n_val=1, n_test=2)


def test_rendering_is_deterministic_per_seed():
    a, scene_a = mw.render_example(TINY, 7, "photo", "train", 2)
    b, scene_b = mw.render_example(TINY, 7, "photo", "train", 2)
    assert scene_a == scene_b and np.array_equal(np.asarray(a), np.asarray(b))
    other = mw.WorldSpec(seed=1, n_train=3, n_val=1, n_test=2)
    c, _ = mw.render_example(other, 7, "photo", "train", 2)
    d, _ = mw.render_example(TINY, 7, "photo", "train", 3)
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a), np.asarray(d))


def test_classes_checkerboard_halves_share_every_attribute():
    names = mw.classes()
    assert len(names) == 40 == len(set(names))
    base, new = names[:20], names[20:]
    for half in (base, new):
        assert {c for c, _ in half} == set(mw.COLOURS) and {s for _, s in half} == set(mw.SHAPES)


def test_written_world_is_deterministic_and_every_domain_has_every_class(tmp_path):
    one = mw.write_world(str(tmp_path / "a"), TINY, progress=False)
    two = mw.write_world(str(tmp_path / "b"), TINY, progress=False)
    n_classes = len(mw.classes(TINY))
    for domain in TINY.domains:
        name = f"split_zhou_{mw.domain_dataset_name(domain)}.json"
        with open(os.path.join(one, name)) as f:
            split = json.load(f)
        with open(os.path.join(two, name)) as f:
            assert json.load(f) == split
        sizes = {"train": TINY.n_train, "val": TINY.n_val, "test": TINY.n_test}
        for key, items in split.items():
            want = sizes[key] if domain == mw.SOURCE or key == "test" else 0
            assert len(items) == want * n_classes
            if want:
                assert sorted({label for _, label, _ in items}) == list(range(n_classes))
        for rel, _, _ in split["test"][:5]:
            with open(os.path.join(one, "images", rel), "rb") as f1:
                with open(os.path.join(two, "images", rel), "rb") as f2:
                    assert f1.read() == f2.read()
    # a second write of the same spec is a no-op; another spec rewrites
    stamp = os.path.join(one, "world.json")
    mtime = os.path.getmtime(stamp)
    mw.write_world(str(tmp_path / "a"), TINY, progress=False)
    assert os.path.getmtime(stamp) == mtime


def test_world_reads_as_registered_datasets(tmp_path):
    import promptdiff.datasets  # noqa: F401
    from promptdiff.engine.config import get_cfg_default
    from promptdiff.host import DATASET_REGISTRY

    mw.write_world(str(tmp_path), TINY, progress=False)
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(tmp_path)
    cfg.DATASET.SUBSAMPLE_CLASSES = "new"
    src = DATASET_REGISTRY.get("MiniWorld")(cfg)
    assert src.num_classes == 20 and len(src.test) == 20 * TINY.n_test
    assert src.classnames[0] == mw.class_name(*mw.classes()[20])
    for domain in TINY.domains[1:]:
        ds = DATASET_REGISTRY.get(mw.domain_dataset_name(domain))(cfg)
        assert ds.classnames == src.classnames and len(ds.test) == 20 * TINY.n_test
        assert all(f"/{domain}/" in d.impath for d in ds.test)


def test_missing_world_is_one_sentence(tmp_path):
    import promptdiff.datasets  # noqa: F401
    from promptdiff.engine.config import get_cfg_default
    from promptdiff.host import DATASET_REGISTRY

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(tmp_path)
    os.makedirs(tmp_path / "miniworld" / "images")
    with pytest.raises(FileNotFoundError, match="tools/miniworld.py build"):
        DATASET_REGISTRY.get("MiniWorld")(cfg)


def test_clip_loss_is_the_mean_of_each_contrast_sets_symmetric_loss():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits = torch.randn(7, 7)
    by_hand = []
    for start, n in ((0, 4), (4, 3)):
        sub = logits[start : start + n, start : start + n]
        t = torch.arange(n)
        by_hand.append((F.cross_entropy(sub, t) + F.cross_entropy(sub.t(), t)) / 2)
    assert torch.allclose(mw.clip_loss(logits, [4, 3]), torch.stack(by_hand).mean())
    # entries outside the sets play no part
    masked = logits.clone()
    masked[:4, 4:] = 1e3
    assert torch.equal(mw.clip_loss(masked, [4, 3]), mw.clip_loss(logits, [4, 3]))


def test_captions_name_what_their_mode_says():
    rng = np.random.default_rng(0)
    scene = mw.Scene("red", "ring", "sketch", 1, "small")
    for _ in range(20):
        full, shape, colour = (mw.caption(scene, rng, m) for m in mw.CAPTION_MODES)
        assert "red" in full and "ring" in full
        assert "ring" in shape and "red" not in shape
        assert "red" in colour and "ring" not in colour


# a reduced world (2 colours x 5 shapes) and a CLIP pre-trained for ~45 s on 2 cores
REDUCED = mw.WorldSpec(colours=("red", "blue"), n_train=12, n_val=1, n_test=8, domains=("photo",))
QUICK = mw.ClipRecipe(steps=450, pool_per_class=30)


@pytest.fixture(scope="module")
def quick_clip(tmp_path_factory):
    folder = mw.write_world(str(tmp_path_factory.mktemp("mw")), REDUCED, progress=False)
    return folder, mw.pretrain_clip(REDUCED, QUICK, progress=False)


def test_quick_clip_learns_shape_not_only_colour(quick_clip):
    folder, model = quick_clip
    names = [mw.class_name(c, s) for c, s in mw.classes(REDUCED)]
    text = mw.text_features(model, [mw.ZS_TEMPLATE.format(n) for n in names])
    same_colour = [
        (i, j)
        for i, (ci, si) in enumerate(mw.classes(REDUCED))
        for j, (cj, sj) in enumerate(mw.classes(REDUCED))
        if i < j and ci == cj
    ]
    # classes that differ only in shape get different zero-shot prompts (all 20 such pairs)
    assert len(same_colour) == 20
    assert max((text[i] @ text[j]).item() for i, j in same_colour) < 0.95
    train_x, train_y = mw.load_split_images(folder, "photo", "train")
    test_x, test_y = mw.load_split_images(folder, "photo", "test")
    probe = mw.linear_probe(
        mw.image_features(model, train_x), train_y, mw.image_features(model, test_x), test_y
    )
    # colour alone tells 2 groups of 5 classes apart: at most 20 % of the 10 classes
    assert probe >= 30.0
    with torch.no_grad():
        zs = mw.zero_shot_accuracy(model, mw.image_features(model, test_x), test_y, names)
    assert zs >= 30.0


# ---- the per-image-camera world -----------------------------------------------------------------
PERCAM_TINY = replace(mw.WORLDS["percam"], n_train=6, n_val=1, n_test=2, domains=("photo", "night"))


def test_percam_world_is_deterministic_and_keeps_the_default_world_unchanged():
    a, scene_a = mw.render_example(PERCAM_TINY, 3, "photo", "train", 4)
    b, scene_b = mw.render_example(PERCAM_TINY, 3, "photo", "train", 4)
    assert scene_a == scene_b and np.array_equal(np.asarray(a), np.asarray(b))
    other = replace(PERCAM_TINY, seed=1)
    assert not np.array_equal(
        np.asarray(a), np.asarray(mw.render_example(other, 3, "photo", "train", 4)[0])
    )
    # the camera draw has its own stream: the scene underneath is the one-camera world's scene
    plain = replace(PERCAM_TINY, cameras=())
    assert mw.render_example(plain, 3, "photo", "train", 4)[1] == scene_a
    # a world without cameras keeps its digest (and so its cached CLIP and written files)
    assert mw.WorldSpec().digest() == "9ee56b88a568d64e"
    assert PERCAM_TINY.kind == "percam" and mw.WorldSpec().kind == "default"
    with pytest.raises(ValueError, match="at most 4 cameras"):
        mw.WorldSpec(cameras=(0.0, 72.0, 144.0, 216.0, 288.0))
    # worlds that differ only in their cameras share one pre-trained CLIP
    recipe = mw.ClipRecipe()
    assert recipe.digest(PERCAM_TINY) == recipe.digest(replace(PERCAM_TINY, cameras=()))
    assert recipe.digest(mw.WORLDS["percam"]) == recipe.digest(mw.WorldSpec())


def test_percam_camera_turns_hue_and_stamps_a_band_visible_in_the_pixels(tmp_path):
    folder = mw.write_world(str(tmp_path), PERCAM_TINY, progress=False)
    assert folder.endswith("miniworld_percam")
    cameras = mw.read_cameras(folder)
    pixels, labels, rels = mw.load_split(folder, "photo", "train", "percam")
    cams = torch.tensor([cameras[r] for r in rels])
    assert len(rels) == 40 * PERCAM_TINY.n_train and set(cams.tolist()) == {0, 1}
    # the camera is in the pixels: a linear probe on the mean of each pixel row reads it on
    # held-out images far above the 50 % of chance
    rows = pixels.mean(dim=3).flatten(1)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    train, test = order[:160], order[160:]
    acc = mw.linear_probe(rows[train], cams[train], rows[test], cams[test], epochs=200)
    assert acc >= 90.0
    # and the same scene under camera k is its camera-0 rendering turned by cameras[k]
    for label, index in ((0, 0), (0, 1)):  # one image of each camera
        k = mw.camera_of(PERCAM_TINY, label, "photo", "train", index)
        img, _ = mw.render_example(PERCAM_TINY, label, "photo", "train", index)
        colour, shape = mw.classes(PERCAM_TINY)[label]
        rng = mw._rng(PERCAM_TINY.seed, "photo", "train", colour, shape, index)
        scene = mw.sample_scene(colour, shape, "photo", rng)
        raw = mw.turn_hue(mw.render(scene, PERCAM_TINY.size, rng), PERCAM_TINY.cameras[k])
        below = slice(mw.TAG_WIDTH, None)  # the second camera's band covers the top rows
        assert np.array_equal(np.asarray(img)[below], np.asarray(raw)[below])
        assert k == 0 or np.asarray(img)[: mw.TAG_WIDTH].min() >= 225


def test_percam_world_reads_as_its_own_datasets(tmp_path):
    import promptdiff.datasets  # noqa: F401
    from promptdiff.engine.config import get_cfg_default
    from promptdiff.host import DATASET_REGISTRY

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="build --world percam"):
        os.makedirs(tmp_path / "miniworld_percam" / "images")
        DATASET_REGISTRY.get("MiniWorldPercam")(cfg)
    mw.write_world(str(tmp_path), PERCAM_TINY, progress=False)
    src = DATASET_REGISTRY.get("MiniWorldPercam")(cfg)
    night = DATASET_REGISTRY.get("MiniWorldPercamNight")(cfg)
    assert src.num_classes == 40 and len(src.train_x) == 40 * PERCAM_TINY.n_train
    assert all("miniworld_percam" in d.impath for d in src.train_x + night.test)
    assert len(night.test) == 40 * PERCAM_TINY.n_test
    with pytest.raises(FileNotFoundError, match="not a per-image-camera world"):
        mw.read_cameras(str(tmp_path / "nothing"))
