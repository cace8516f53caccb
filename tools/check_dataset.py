"""Check that datasets are laid out under DATASET.ROOT as each dataset class declares (`layout()`).

    python tools/check_dataset.py --root DATA oxford_pets StanfordCars
    python tools/check_dataset.py --root DATA all

NAME is a registered dataset name (OxfordPets) or a config name (oxford_pets, the file name in
configs/datasets/); `all` checks every dataset. For each dataset this prints READY or MISSING
followed by every missing folder or file. It only stats paths (no image is opened): the required
folders and files, and, when a split file exists (split_zhou_<Name>.json; FGVCAircraft's official
lists), that the images it lists exist (all of them, or --sample N spread over the list).
Exit code 0 only when every requested dataset is READY. See DATASETS.md for the layouts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

import promptdiff.datasets  # noqa: F401  (registers every dataset)
from promptdiff.datasets.common import Layout
from promptdiff.host import DATASET_REGISTRY
from promptdiff.imagefiles import is_image_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG_DIR = os.path.join(REPO_ROOT, "configs", "datasets")


def layouts() -> dict[str, Layout]:
    """Every registered dataset that declares its files (`layout()`), by name.

    Under --host dassl the registry also holds Dassl's own datasets, which declare nothing."""
    out = {}
    for name in DATASET_REGISTRY.registered_names():
        layout = getattr(DATASET_REGISTRY.get(name), "layout", None)
        if layout is not None:
            out[name] = layout()
    return out


def config_names() -> dict[str, str]:
    """configs/datasets/<config>.yaml -> the DATASET.NAME it sets."""
    names = {}
    if not os.path.isdir(CONFIG_DIR):
        return names
    for fname in sorted(os.listdir(CONFIG_DIR)):
        if fname.endswith(".yaml"):
            with open(os.path.join(CONFIG_DIR, fname)) as f:
                cfg = yaml.safe_load(f) or {}
            name = (cfg.get("DATASET") or {}).get("NAME")
            if name:
                names[fname[: -len(".yaml")]] = str(name)
    return names


def resolve(names: list[str]) -> list[str]:
    """Registered names in the order asked (duplicates dropped); unknown names raise ValueError."""
    known = layouts()
    by_lower = {n.lower(): n for n in known}
    by_config = {k.lower(): v for k, v in config_names().items()}
    out = []
    for name in names:
        key = name.lower()
        if key == "all":
            found = list(known)
        elif key in by_lower:
            found = [by_lower[key]]
        elif key in by_config and by_config[key] in known:
            found = [by_config[key]]
        else:
            raise ValueError(
                f"Unknown dataset {name!r}; use a registered name ({', '.join(known)}), a config "
                f"name from configs/datasets/ or 'all'."
            )
        out += [n for n in found if n not in out]
    return out


def _exists(root: str, entry, isfn) -> tuple[bool, str]:
    """Whether the path (or any alternative) exists, and how to name it in the report."""
    alternatives = entry if isinstance(entry, tuple) else (entry,)
    paths = [os.path.join(root, p) for p in alternatives]
    shown = paths[0] + "".join(f" (or {p})" for p in paths[1:])
    return any(isfn(p) for p in paths), shown


def _class_dir_problem(path: str) -> str:
    if not os.path.isdir(path):
        return ""  # reported as a missing folder already
    entries = [e for e in os.listdir(path) if not e.startswith(".")]
    if any(os.path.isdir(os.path.join(path, e)) for e in entries):
        return ""
    loose = sum(os.path.isfile(os.path.join(path, e)) for e in entries)
    if loose:
        return (
            f"class folders in {path} (it holds {loose} loose files): arrange the images into "
            f"one folder per class (ImageNet val: see DATASETS.md)"
        )
    return f"class folders in {path} (it is empty)"


def _examples(paths: list[str], n: int = 3) -> str:
    more = f" and {len(paths) - n:,} more" if len(paths) > n else ""
    return ", ".join(paths[:n]) + more


def _image_problems(paths: list[str]) -> tuple[list[str], list[str]]:
    """(missing, zero-byte) among paths, one stat each."""
    missing, empty = [], []
    for path in paths:
        try:
            if os.stat(path).st_size == 0:
                empty.append(path)
        except OSError:
            missing.append(path)
    return missing, empty


def _class_folder_contents(path: str) -> list[str]:
    """Problems inside the class folders of path: folders without images, zero-byte images."""
    if not os.path.isdir(path):
        return []
    no_images, empty = [], []
    for entry in sorted(e for e in os.listdir(path) if not e.startswith(".")):
        folder = os.path.join(path, entry)
        if not os.path.isdir(folder):
            continue
        images = [
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if not f.startswith(".") and is_image_file(f)
        ]
        if not images:
            no_images.append(folder)
        empty += _image_problems(images)[1]
    problems = []
    if no_images:
        problems.append(f"images in {len(no_images):,} class folders, e.g. {_examples(no_images)}")
    if empty:
        problems.append(f"{len(empty):,} zero-byte images, e.g. {_examples(empty)}")
    return problems


def _missing_classes(root: str, layout: Layout) -> list[str]:
    """Classes of classnames.txt without their folder (labels follow the class list)."""
    found = [os.path.join(root, p) for p in layout.classnames]
    found = [p for p in found if os.path.isfile(p)]
    if not found:
        return []  # reported as a missing file already
    with open(found[0]) as f:
        wnids = [line.split(" ", 1)[0].strip() for line in f if line.strip()]
    names = [str(i) for i in range(len(wnids))] if layout.numbered else wnids
    problems = []
    for rel in layout.all_class_dirs:
        folder = os.path.join(root, rel)
        if not os.path.isdir(folder):
            continue
        absent = [n for n in names if not os.path.isdir(os.path.join(folder, n))]
        if absent:
            problems.append(
                f"class folders in {folder} for {len(absent):,} of the {len(names):,} classes in "
                f"{found[0]}, e.g. {_examples(absent)}"
            )
    return problems


def listed_images(root: str, layout: Layout) -> tuple[str, list[str]] | None:
    """(source, image paths) from the split file or official lists, or None when there is none."""
    split = os.path.join(root, layout.split) if layout.split else ""
    if split and os.path.isfile(split):
        with open(split) as f:
            data = json.load(f)
        prefix = os.path.join(root, layout.split_prefix)
        paths = [
            os.path.join(prefix, item[0]) for key in ("train", "val", "test") for item in data[key]
        ]
        return split, paths
    if layout.lists:
        paths = []
        for rel in layout.lists:
            path = os.path.join(root, rel)
            if os.path.isfile(path):
                with open(path) as f:
                    ids = [line.split(" ", 1)[0] for line in f if line.strip()]
                paths += [os.path.join(root, layout.split_prefix, i + ".jpg") for i in ids]
        return "the images_variant_*.txt lists", paths
    return None


def check(root: str, name: str, sample: int = 0) -> tuple[list[str], list[str]]:
    """(missing, notes) for one dataset; ready when `missing` is empty."""
    layout = DATASET_REGISTRY.get(name).layout()
    folder = os.path.join(root, layout.folder)
    if not os.path.isdir(folder):
        return [f"folder {folder} (the whole dataset)"], []
    missing, notes = [], []
    has_split = bool(layout.split) and os.path.isfile(os.path.join(root, layout.split))
    dirs = layout.dirs + (() if has_split else layout.build_dirs)
    for entry in dirs:
        ok, shown = _exists(root, entry, os.path.isdir)
        if not ok:
            missing.append(f"folder {shown}")
    for entry in layout.files:
        ok, shown = _exists(root, entry, os.path.isfile)
        if not ok:
            missing.append(f"file {shown}")
    if layout.split and not has_split:
        why = f"(needed while {os.path.basename(layout.split)} is absent)"
        for entry in layout.build_files:
            ok, shown = _exists(root, entry, os.path.isfile)
            if not ok:
                missing.append(f"file {shown} {why}")
        notes.append(
            f"no {os.path.join(root, layout.split)}: the first run generates and saves one; get "
            f"the CoOp authors' file to use the published split (DATASETS.md)"
        )
    class_dirs = layout.class_dirs + (() if has_split else layout.build_class_dirs)
    for rel in class_dirs:
        problem = _class_dir_problem(os.path.join(root, rel))
        if problem:
            missing.append(problem)
        else:
            missing += _class_folder_contents(os.path.join(root, rel))
    missing += _missing_classes(root, layout)
    try:
        listed = listed_images(root, layout)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        return missing + [
            f"a readable split file ({os.path.join(root, layout.split)}: {exc})"
        ], notes
    if listed:
        source, paths = listed
        if sample and len(paths) > sample:
            step = len(paths) / sample
            paths = [paths[int(i * step)] for i in range(sample)]
        absent, empty = _image_problems(paths)
        checked = f"{len(paths):,} {'sampled ' if sample else ''}images listed in {source}"
        if absent:
            missing.append(f"{len(absent):,} of {checked}, e.g. {_examples(absent)}")
        if empty:
            missing.append(
                f"non-empty files for {len(empty):,} of {checked} (zero bytes), "
                f"e.g. {_examples(empty)}"
            )
        if not absent and not empty:
            notes.append(f"all {checked} exist")
    return missing, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", required=True, help="DATASET.ROOT, the folder holding the datasets"
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="dataset or config name, or all")
    parser.add_argument(
        "--sample", type=int, default=0, help="check at most N listed images per dataset (0: all)"
    )
    args = parser.parse_args(argv)
    try:
        names = resolve(args.names)
    except ValueError as exc:
        parser.error(str(exc))
    root = os.path.abspath(os.path.expanduser(args.root))
    all_ready = True
    for name in names:
        missing, notes = check(root, name, args.sample)
        all_ready &= not missing
        print(f"{name}: {'MISSING' if missing else 'READY'}")
        for line in missing:
            print(f"  missing: {line}")
        for line in notes:
            print(f"  note: {line}")
    return 0 if all_ready else 1


if __name__ == "__main__":
    sys.exit(main())
