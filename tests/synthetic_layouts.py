"""Tiny synthetic copies of the on-disk layouts of the 15 CoOp-family datasets.

Each `make_<dataset>(root, n_classes=..., n_per_class=...)` writes that dataset's folder under
`root` (the DATASET.ROOT) exactly as the real download is arranged (DATASETS.md), with 8x8 images
and the annotation files the dataset class reads (.mat files through scipy.io.savemat), and
returns `root`. No split_zhou_*.json is written: the dataset classes generate and save it on their
first build, as upstream. `LAYOUTS` maps each registered dataset name to its maker.

Class names are the first `n_classes` of a short list of real names, so renamings are visible:
Caltech101's "airplanes" -> "airplane", EuroSAT's "AnnualCrop" -> "Annual Crop Land", UCF101's
"ApplyEyeMakeup" -> "Apply_Eye_Makeup", StanfordCars' year moved to the front, SUN397's
"/a/apartment_building/outdoor" -> "outdoor apartment_building".
"""

from __future__ import annotations

import io
import json
import os
import re
from functools import cache

import numpy as np
from PIL import Image
from scipy.io import savemat

CALTECH_CLASSES = ["accordion", "airplanes", "Faces", "Leopards", "Motorbikes", "anchor", "ant"]
CALTECH_IGNORED = ["BACKGROUND_Google", "Faces_easy"]
PETS_BREEDS = ["Abyssinian", "american_bulldog", "Bengal", "boxer", "british_shorthair", "Birman"]
CARS_CLASSES = [
    "AM General Hummer SUV 2000",
    "Acura RL Sedan 2012",
    "Aston Martin V8 Vantage Convertible 2012",
    "BMW M3 Coupe 2012",
    "Chevrolet Corvette ZR1 2012",
    "Tesla Model S Sedan 2012",
]
FLOWERS_NAMES = [
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "english marigold",
    "tiger lily",
]
FOOD_CLASSES = [
    "apple_pie",
    "baby_back_ribs",
    "baklava",
    "beef_carpaccio",
    "beef_tartare",
    "bibimbap",
]
AIRCRAFT_VARIANTS = ["707-320", "A300B4", "Cessna 172", "F-16A/B", "Boeing 717", "DC-10"]
SUN_CLASSES = [
    "/a/abbey",
    "/a/apartment_building/outdoor",
    "/b/bakery/shop",
    "/b/bar",
    "/c/campus",
    "/d/dam",
]
DTD_CLASSES = ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered"]
EUROSAT_FOLDERS = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]
UCF_ACTIONS = ["ApplyEyeMakeup", "BlowDryHair", "HandstandPushups", "YoYo", "PlayingDaf", "TaiChi"]
IMAGENET_CLASSES = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
    ("n01494475", "hammerhead shark"),
    ("n01496331", "electric ray"),
    ("n01498041", "stingray"),
    ("n01514668", "rooster"),
]


@cache
def _image_bytes(fmt: str) -> bytes:
    """One 8x8 image, encoded once and written wherever an image is needed."""
    img = Image.new("RGB", (8, 8), (120, 60, 200))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fmt = "PNG" if path.lower().endswith(".png") else "JPEG"
    with open(path, "wb") as f:
        f.write(_image_bytes(fmt))
    return path


def _write_lines(path: str, lines: list[str], newline: str = "\n") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write("".join(line + newline for line in lines))


def _take(names: list, n_classes: int) -> list:
    if not 1 <= n_classes <= len(names):
        raise ValueError(f"n_classes must be in 1..{len(names)} (got {n_classes}).")
    return names[:n_classes]


def _class_folders(image_dir: str, folders: list[str], n_per_class: int, ext: str = ".jpg") -> None:
    for folder in folders:
        for k in range(n_per_class):
            write_image(os.path.join(image_dir, folder, f"{folder}_{k + 1:04d}{ext}"))


def _interleaved(n_classes: int, n_per_class: int) -> list[int]:
    """Class index of each item, classes interleaved (0, 1, ..., 0, 1, ...) as in real lists."""
    return [i % n_classes for i in range(n_classes * n_per_class)]


def _split_counts(n: int) -> tuple[int, int, int]:
    """50/20/30 counts (for the datasets whose official lists already hold train/val/test)."""
    n_train, n_val = round(n * 0.5), round(n * 0.2)
    return n_train, n_val, n - n_train - n_val


def make_caltech101(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """caltech-101/101_ObjectCategories/<class>/image_NNNN.jpg, plus the two ignored folders."""
    image_dir = os.path.join(root, "caltech-101", "101_ObjectCategories")
    _class_folders(image_dir, _take(CALTECH_CLASSES, n_classes) + CALTECH_IGNORED, n_per_class)
    return root


def make_oxford_pets(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """oxford_pets/images/<Breed>_<k>.jpg and annotations/{trainval,test}.txt; n_per_class images
    per breed in trainval and n_per_class // 4 (at least 1) in test."""
    breeds = _take(PETS_BREEDS, n_classes)
    base = os.path.join(root, "oxford_pets")
    n_test = max(1, n_per_class // 4)
    lines = {"trainval.txt": [], "test.txt": []}
    for i, c in enumerate(_interleaved(n_classes, n_per_class + n_test)):
        k = i // n_classes + 1
        imname = f"{breeds[c]}_{k}"
        species = 1 if breeds[c][0].isupper() else 2  # cats are capitalised in the real files
        write_image(os.path.join(base, "images", imname + ".jpg"))
        split = "trainval.txt" if k <= n_per_class else "test.txt"
        lines[split].append(f"{imname} {c + 1} {species} {k}")
    for name, rows in lines.items():
        _write_lines(os.path.join(base, "annotations", name), rows)
    return root


def _cars_annotations(fnames: list[str], labels: list[int]) -> np.ndarray:
    dtype = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    annos = np.zeros((1, len(fnames)), dtype=dtype)
    for i, (fname, label) in enumerate(zip(fnames, labels)):
        for f in ("bbox_x1", "bbox_y1"):
            annos[0, i][f] = np.array([[0]], dtype=np.uint8)
        for f in ("bbox_x2", "bbox_y2"):
            annos[0, i][f] = np.array([[7]], dtype=np.uint8)
        annos[0, i]["class"] = np.array([[label]], dtype=np.uint8)
        annos[0, i]["fname"] = np.array([fname])
    return annos


def make_stanford_cars(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """stanford_cars/{cars_train,cars_test}/NNNNN.jpg, devkit/cars_train_annos.mat,
    devkit/cars_meta.mat and cars_test_annos_withlabels.mat (1-based classes); n_per_class train
    images per class, n_per_class // 4 (at least 1) test images."""
    names = _take(CARS_CLASSES, n_classes)
    base = os.path.join(root, "stanford_cars")
    os.makedirs(os.path.join(base, "devkit"), exist_ok=True)
    class_names = np.empty((1, n_classes), dtype=object)
    for i, name in enumerate(names):
        class_names[0, i] = name
    savemat(os.path.join(base, "devkit", "cars_meta.mat"), {"class_names": class_names})
    for folder, anno_path, n in (
        ("cars_train", os.path.join(base, "devkit", "cars_train_annos.mat"), n_per_class),
        (
            "cars_test",
            os.path.join(base, "cars_test_annos_withlabels.mat"),
            max(1, n_per_class // 4),
        ),
    ):
        labels = [c + 1 for c in _interleaved(n_classes, n)]
        fnames = [f"{i + 1:05d}.jpg" for i in range(len(labels))]
        for fname in fnames:
            write_image(os.path.join(base, folder, fname))
        savemat(anno_path, {"annotations": _cars_annotations(fnames, labels)})
    return root


def make_oxford_flowers(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """oxford_flowers/jpg/image_NNNNN.jpg, imagelabels.mat (1-based labels) and cat_to_name.json."""
    base = os.path.join(root, "oxford_flowers")
    labels = [c + 1 for c in _interleaved(n_classes, n_per_class)]
    for i in range(len(labels)):
        write_image(os.path.join(base, "jpg", f"image_{i + 1:05d}.jpg"))
    savemat(os.path.join(base, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    names = {str(i + 1): name for i, name in enumerate(_take(FLOWERS_NAMES, n_classes))}
    with open(os.path.join(base, "cat_to_name.json"), "w") as f:
        json.dump(names, f)
    return root


def make_food101(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """food-101/images/<class>/*.jpg."""
    _class_folders(
        os.path.join(root, "food-101", "images"), _take(FOOD_CLASSES, n_classes), n_per_class
    )
    return root


def make_fgvc_aircraft(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """fgvc_aircraft/images/NNNNNNN.jpg, variants.txt and images_variant_{train,val,test}.txt with
    n_per_class images per variant split 50/20/30 over the three lists."""
    variants = _take(AIRCRAFT_VARIANTS, n_classes)
    base = os.path.join(root, "fgvc_aircraft")
    _write_lines(os.path.join(base, "variants.txt"), variants)
    counts = _split_counts(n_per_class)
    image_id = 1000000
    for split, n in zip(("train", "val", "test"), counts):
        rows = []
        for c in _interleaved(n_classes, n):
            image_id += 1
            write_image(os.path.join(base, "images", f"{image_id}.jpg"))
            rows.append(f"{image_id} {variants[c]}")
        _write_lines(os.path.join(base, f"images_variant_{split}.txt"), rows)
    return root


def make_sun397(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """sun397/SUN397/<letter>/<class>/sun_*.jpg with ClassName.txt, Training_01.txt (n_per_class
    per class) and Testing_01.txt (n_per_class // 4, at least 1) in sun397/."""
    classes = _take(SUN_CLASSES, n_classes)
    base = os.path.join(root, "sun397")
    _write_lines(os.path.join(base, "ClassName.txt"), classes)
    for name, n in (("Training_01.txt", n_per_class), ("Testing_01.txt", max(1, n_per_class // 4))):
        rows = []
        for i, c in enumerate(_interleaved(n_classes, n)):
            rel = f"{classes[c]}/sun_{name[:4].lower()}{i:05d}.jpg"
            write_image(os.path.join(base, "SUN397", rel[1:]))
            rows.append(rel)
        _write_lines(os.path.join(base, name), rows)
    return root


def make_dtd(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """dtd/images/<texture>/<texture>_NNNN.jpg."""
    _class_folders(os.path.join(root, "dtd", "images"), _take(DTD_CLASSES, n_classes), n_per_class)
    return root


def make_eurosat(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """eurosat/2750/<CamelCaseClass>/<CamelCaseClass>_N.jpg."""
    _class_folders(
        os.path.join(root, "eurosat", "2750"), _take(EUROSAT_FOLDERS, n_classes), n_per_class
    )
    return root


def make_ucf101(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """ucf101/UCF-101-midframes/<Renamed_Action>/v_<Action>_gNN_cNN.jpg (upstream's frame folders
    carry the renamed action, e.g. Apply_Eye_Makeup) and ucfTrainTestlist/ with
    classInd.txt, trainlist01.txt (n_per_class per action, "path label") and testlist01.txt
    (n_per_class // 4, at least 1, "path"); CRLF line endings as in the official files."""
    actions = _take(UCF_ACTIONS, n_classes)
    base = os.path.join(root, "ucf101")
    lists = os.path.join(base, "ucfTrainTestlist")
    _write_lines(
        os.path.join(lists, "classInd.txt"), [f"{i + 1} {a}" for i, a in enumerate(actions)], "\r\n"
    )
    for name, n, group0 in (
        ("trainlist01.txt", n_per_class, 8),
        ("testlist01.txt", max(1, n_per_class // 4), 1),
    ):
        rows = []
        for i, c in enumerate(_interleaved(n_classes, n)):
            video = f"v_{actions[c]}_g{group0 + i // n_classes:02d}_c01"
            folder = "_".join(re.findall("[A-Z][^A-Z]*", actions[c]))
            write_image(os.path.join(base, "UCF-101-midframes", folder, video + ".jpg"))
            row = f"{actions[c]}/{video}.avi"
            rows.append(f"{row} {c + 1}" if name.startswith("train") else row)
        _write_lines(os.path.join(lists, name), rows, "\r\n")
    return root


def write_classnames(path: str, n_classes: int) -> str:
    """classnames.txt lines "<wnid> <class name>" for the first n_classes synthetic classes."""
    _write_lines(path, [f"{w} {name}" for w, name in _take(IMAGENET_CLASSES, n_classes)])
    return path


def make_imagenet(root: str, n_classes: int = 5, n_per_class: int = 20) -> str:
    """imagenet/images/train/<wnid>/*.JPEG (n_per_class each), images/val/<wnid>/*.JPEG
    (n_per_class // 4, at least 1) and imagenet/classnames.txt."""
    base = os.path.join(root, "imagenet")
    write_classnames(os.path.join(base, "classnames.txt"), n_classes)
    wnids = [w for w, _ in _take(IMAGENET_CLASSES, n_classes)]
    _class_folders(os.path.join(base, "images", "train"), wnids, n_per_class, ".JPEG")
    n_val = max(1, n_per_class // 4)
    for c, wnid in enumerate(wnids):
        for k in range(n_val):
            name = f"ILSVRC2012_val_{c * n_val + k + 1:08d}.JPEG"
            write_image(os.path.join(base, "images", "val", wnid, name))
    return root


def _variant_classnames(root: str, dataset_dir: str, n_classes: int, at_imagenet: bool) -> None:
    folder = os.path.join(root, "imagenet") if at_imagenet else os.path.join(root, dataset_dir)
    write_classnames(os.path.join(folder, "classnames.txt"), n_classes)


def make_imagenetv2(
    root: str, n_classes: int = 5, n_per_class: int = 3, classnames_at_imagenet: bool = False
) -> str:
    """imagenetv2/imagenetv2-matched-frequency-format-val/<0..n-1>/*.jpeg and classnames.txt in
    imagenetv2/ (or, with classnames_at_imagenet, only in imagenet/ where the fallback finds it)."""
    image_dir = os.path.join(root, "imagenetv2", "imagenetv2-matched-frequency-format-val")
    for label in range(n_classes):
        for k in range(n_per_class):
            write_image(os.path.join(image_dir, str(label), f"{label:03d}{k:04d}.jpeg"))
    _variant_classnames(root, "imagenetv2", n_classes, classnames_at_imagenet)
    return root


def make_imagenet_sketch(
    root: str, n_classes: int = 5, n_per_class: int = 3, classnames_at_imagenet: bool = False
) -> str:
    """imagenet-sketch/images/<wnid>/*.JPEG and classnames.txt."""
    wnids = [w for w, _ in _take(IMAGENET_CLASSES, n_classes)]
    _class_folders(os.path.join(root, "imagenet-sketch", "images"), wnids, n_per_class, ".JPEG")
    _variant_classnames(root, "imagenet-sketch", n_classes, classnames_at_imagenet)
    return root


def _subset_variant(
    root: str,
    dataset_dir: str,
    image_subdir: str,
    n_classes: int,
    n_per_class: int,
    at_imagenet: bool,
) -> str:
    # like the real 200-class sets: the folders are a subset (every other class) of classnames.txt,
    # which lists 2 * n_classes classes; a README.txt sits beside the class folders
    wnids = [w for w, _ in _take(IMAGENET_CLASSES, 2 * n_classes)][::2]
    _class_folders(os.path.join(root, dataset_dir, image_subdir), wnids, n_per_class, ".jpg")
    _write_lines(os.path.join(root, dataset_dir, image_subdir, "README.txt"), ["synthetic"])
    _variant_classnames(root, dataset_dir, 2 * n_classes, at_imagenet)
    return root


def make_imagenet_a(
    root: str, n_classes: int = 4, n_per_class: int = 3, classnames_at_imagenet: bool = False
) -> str:
    """imagenet-adversarial/imagenet-a/<wnid>/*.jpg (n_classes of the 2 * n_classes classes in
    classnames.txt, plus README.txt)."""
    return _subset_variant(
        root, "imagenet-adversarial", "imagenet-a", n_classes, n_per_class, classnames_at_imagenet
    )


def make_imagenet_r(
    root: str, n_classes: int = 4, n_per_class: int = 3, classnames_at_imagenet: bool = False
) -> str:
    """imagenet-rendition/imagenet-r/<wnid>/*.jpg (n_classes of the 2 * n_classes classes in
    classnames.txt, plus README.txt)."""
    return _subset_variant(
        root, "imagenet-rendition", "imagenet-r", n_classes, n_per_class, classnames_at_imagenet
    )


LAYOUTS = {
    "Caltech101": make_caltech101,
    "OxfordPets": make_oxford_pets,
    "StanfordCars": make_stanford_cars,
    "OxfordFlowers": make_oxford_flowers,
    "Food101": make_food101,
    "FGVCAircraft": make_fgvc_aircraft,
    "SUN397": make_sun397,
    "DescribableTextures": make_dtd,
    "EuroSAT": make_eurosat,
    "UCF101": make_ucf101,
    "ImageNet": make_imagenet,
    "ImageNetV2": make_imagenetv2,
    "ImageNetSketch": make_imagenet_sketch,
    "ImageNetA": make_imagenet_a,
    "ImageNetR": make_imagenet_r,
}
