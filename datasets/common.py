"""Split files, generated splits, few-shot caching and base/new subsampling shared by all datasets.

Upstream CoOp repeats the few-shot/cache/subsample block in every dataset class; here it is
`CoOpDataset.finalize`, called once by each dataset after it has its train / val / test lists.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
from dataclasses import dataclass

from promptdiff.engine.data import split_problem
from promptdiff.engine.utils import logger
from promptdiff.fileio import WriteError
from promptdiff.host import DatasetBase, Datum, log, mkdir_if_missing, read_json, write_json
from promptdiff.imagefiles import IMAGE_EXTENSIONS, is_image_file  # noqa: F401


def _permission_problem(path: str, is_dir: bool) -> str:
    """'' when path can be read (and listed), else why not: an unreadable path or parent."""
    try:
        os.stat(path)
    except PermissionError:
        return "a parent folder does not let you in"
    except OSError:
        return ""
    need = os.R_OK | os.X_OK if is_dir else os.R_OK
    return "" if os.access(path, need) else "you may not read it"


def _deny(path: str, what: str, why: str) -> PermissionError:
    return PermissionError(
        f"Permission denied on the {what} {path} ({why}); ask its owner for read access or "
        f"copy the data somewhere you can read."
    )


def require_dir(path: str, what: str = "dataset folder") -> str:
    """Return path if it is a readable directory, else raise one sentence naming it and the fix."""
    why = _permission_problem(path, is_dir=True)
    if why:
        raise _deny(path, what, why)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"The {what} {path} does not exist; set DATASET.ROOT (--root) to the folder that "
            f"contains it (layouts in DATASETS.md, check with tools/check_dataset.py)."
        )
    return path


def require_file(path: str, what: str = "file") -> str:
    why = _permission_problem(path, is_dir=False)
    if why:
        raise _deny(path, what, why)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The {what} {path} does not exist; see DATASETS.md for where it comes from "
            f"(tools/check_dataset.py lists everything missing)."
        )
    return path


LIST_ORDERS = ("listdir", "sorted")


def listdir_nohidden(path: str, sort: bool = False) -> list[str]:
    """Entries of a folder without hidden files, in raw os.listdir order (as upstream) or sorted."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


def list_images(folder: str, sort: bool = False) -> list[str]:
    """Image file names in a class folder (by extension); notes, archives etc. are ignored.
    Raw listing order (upstream's) unless `sort`."""
    return [f for f in listdir_nohidden(folder, sort) if is_image_file(f)]


def check_images(paths: list[str], source: str, fix: str = "") -> None:
    """Stat every image once: missing, unreadable or zero-byte files are one error naming the
    count and the first few paths, so a bad test image is found before training, not after."""
    bad = []
    for path in paths:
        try:
            size = os.stat(path).st_size
        except PermissionError:
            bad.append(f"{path} (permission denied)")
            continue
        except OSError:
            bad.append(f"{path} (missing)")
            continue
        if size == 0:
            bad.append(f"{path} (empty)")
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise FileNotFoundError(
            f"{len(bad)} of the {len(paths)} images {source} are missing, unreadable or empty: "
            f"{shown}; {fix or 'restore or replace them'}."
        )


SPLITS = ("train", "val", "test")


def _bad_split(filepath: str, what: str) -> ValueError:
    return ValueError(
        f"The split file {filepath} {what}; fix it, or delete it to regenerate it "
        f'(format: {{"train"|"val"|"test": [[relative image path, label, class name], ...]}}).'
    )


def read_split_file(filepath: str, keys: tuple[str, ...]) -> dict[str, list]:
    """A split JSON checked for shape ({key: [[path, label, classname]]}) and label range
    (0..the number of training classes - 1), so a bad entry is an error naming the file."""
    try:
        split = read_json(filepath)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_split(filepath, f"is not valid JSON ({exc})") from exc
    if not isinstance(split, dict) or any(not isinstance(split.get(k), list) for k in keys):
        raise _bad_split(filepath, f"must be an object with the lists {', '.join(keys)}")
    for key in keys:
        for n, item in enumerate(split[key]):
            ok = isinstance(item, list) and len(item) == 3
            if not ok or not isinstance(item[0], str) or not isinstance(item[2], str):
                raise _bad_split(filepath, f"has a malformed entry {key}[{n}]: {item!r}")
            if isinstance(item[1], bool) or not isinstance(item[1], int) or item[1] < 0:
                raise _bad_split(filepath, f"has a non-integer or negative label in {key}[{n}]")
    # the classes are those of the first non-empty list (train; test for a test-only split)
    ref = next((k for k in keys if split[k]), keys[0])
    num_classes = max((item[1] for item in split[ref]), default=-1) + 1
    for key in keys:
        for n, (path, label, _) in enumerate(split[key]):
            if label >= num_classes:
                raise _bad_split(
                    filepath,
                    f"gives {path} ({key}[{n}]) the label {label}, outside the {num_classes} "
                    f"classes of its {ref} list (0..{num_classes - 1})",
                )
    problem = split_problem({k: [(item[1], item[2]) for item in split[k]] for k in keys}, ref)
    if problem:
        raise _bad_split(filepath, problem)
    return split


def sorted_listing(cfg) -> bool:
    """Whether DATASET.LIST_ORDER asks for sorted image lists ("sorted") or upstream's raw order."""
    order = cfg.DATASET.LIST_ORDER
    if order not in LIST_ORDERS:
        raise ValueError(
            f"DATASET.LIST_ORDER {order!r} is unknown; use listdir (upstream's order) or sorted."
        )
    return order == "sorted"


def make_datum(
    impath: str, label: int, classname: str, source: str = "", regenerable: bool = True
) -> Datum:
    """A Datum whose missing image names the split file it came from.

    regenerable=False is for official annotation lists (e.g. FGVCAircraft's images_variant_*.txt),
    which cannot be regenerated by deleting them: the message then only asks for the image.
    """
    try:
        return Datum(impath=impath, label=int(label), classname=classname)
    except FileNotFoundError as exc:
        where = f" listed in {source}" if source else ""
        fix = (
            f"restore the image or delete {source or 'the split'} to regenerate it"
            if regenerable
            else "restore the image (see DATASETS.md for the expected layout)"
        )
        raise FileNotFoundError(f"Image {impath}{where} does not exist; {fix}.") from exc


def read_split(filepath: str, path_prefix: str) -> tuple[list, list, list]:
    """Read a split_zhou_*.json file: {"train"|"val"|"test": [[relative path, label, classname]]}."""
    require_file(filepath, "split file")
    split = read_split_file(filepath, SPLITS)
    check_images(
        [os.path.join(path_prefix, item[0]) for key in SPLITS for item in split[key]],
        f"listed in {filepath}",
        f"restore them or delete {filepath} to regenerate it",
    )

    def _convert(items):
        return [
            make_datum(os.path.join(path_prefix, impath), label, classname, filepath)
            for impath, label, classname in items
        ]

    log(f"Reading split from {filepath}")
    return _convert(split["train"]), _convert(split["val"]), _convert(split["test"])


def _relative(items, path_prefix: str) -> list:
    out = []
    for item in items:
        rel = os.path.relpath(item.impath, path_prefix)
        out.append([rel.replace(os.sep, "/"), item.label, item.classname])
    return out


def save_split(train, val, test, filepath: str, path_prefix: str) -> None:
    """Write a split file with paths relative to path_prefix (atomically)."""
    split = {
        "train": _relative(train, path_prefix),
        "val": _relative(val, path_prefix),
        "test": _relative(test, path_prefix),
    }
    if try_write_json(split, filepath, "split"):
        log(f"Saved split to {filepath}")


def try_write_json(obj, filepath: str, what: str) -> bool:
    """Write a cache file; a read-only dataset folder only costs the cache (a warning), since
    the same seed regenerates the same content on the next run."""
    try:
        mkdir_if_missing(os.path.dirname(filepath))
        write_json(obj, filepath)
    except (OSError, WriteError) as exc:
        # the atomic writer reports a failed write as a WriteError carrying the OSError
        cause = exc.cause if isinstance(exc, WriteError) and exc.cause is not None else exc
        reason = getattr(cause, "strerror", None) or cause
        # a warning, so that --quiet still prints it
        logger.warning(
            f"Warning: cannot write the {what} file {filepath} ({reason}); "
            f"continuing without saving it (make the folder writable to cache it)."
        )
        return False
    return True


def read_and_split_data(
    image_dir: str,
    p_trn: float = 0.5,
    p_val: float = 0.2,
    ignored: tuple = (),
    new_cnames: dict | None = None,
    sort: bool = False,
) -> tuple[list, list, list]:
    """Folder-per-class split: per class `random.shuffle`, then 50/20/30 (upstream RNG order);
    class folders are sorted, their images listed in raw order unless `sort`."""
    require_dir(image_dir, "image folder")
    categories = sorted(c for c in listdir_nohidden(image_dir) if c not in ignored)
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        images = [os.path.join(category_dir, im) for im in list_images(category_dir, sort)]
        random.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        if min(n_train, n_val, n_test) <= 0:
            raise ValueError(
                f"Class folder {category_dir} has {n_total} images, too few for a "
                f"{p_trn:.0%}/{p_val:.0%}/rest split; add images or provide a split file."
            )
        cname = (new_cnames or {}).get(category, category)

        def _collate(ims, label=label, cname=cname):
            return [Datum(impath=im, label=label, classname=cname) for im in ims]

        train += _collate(images[:n_train])
        val += _collate(images[n_train : n_train + n_val])
        test += _collate(images[n_train + n_val :])
    return train, val, test


def split_trainval(trainval: list, p_val: float = 0.2) -> tuple[list, list]:
    """Split an official train+val list: per label (in order of appearance) shuffle, first p_val to val."""
    tracker: dict[int, list[int]] = {}
    for idx, item in enumerate(trainval):
        tracker.setdefault(item.label, []).append(idx)
    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise ValueError(
                f"Label {label} has too few images ({len(idxs)}) to hold out a val set."
            )
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


class _UpstreamDatum:
    """What an upstream cache's pickled dassl Datum unpickles to: its attributes, nothing run."""

    def __setstate__(self, state: dict) -> None:
        self.state = dict(state)


class _UpstreamCacheUnpickler(pickle.Unpickler):
    """Reads upstream's split_fewshot/*.pkl ({"train": [Datum], "val": [Datum]}) and refuses any
    other class, so a cache file cannot run code."""

    def find_class(self, module: str, name: str):
        module = {"copy_reg": "copyreg", "__builtin__": "builtins"}.get(module, module)
        allowed = {
            ("dassl.data.datasets.base_dataset", "Datum"): _UpstreamDatum,
            ("copyreg", "_reconstructor"): _reconstruct,  # pickle protocols 0 and 1
            ("builtins", "object"): object,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not a Dassl Datum")
        return allowed[(module, name)]


def _reconstruct(cls, base, state):
    if cls is not _UpstreamDatum:
        raise pickle.UnpicklingError(f"{cls} is not a Dassl Datum")
    return _UpstreamDatum()


def read_upstream_fewshot(path: str) -> tuple[list, list]:
    """Upstream CoOp's few-shot cache as (train, val) lists of this project's Datum."""
    try:
        with open(path, "rb") as f:
            data = _UpstreamCacheUnpickler(f).load()
        pairs = [(key, item.state) for key in ("train", "val") for item in data[key]]
        fields = [(key, s["_impath"], int(s["_label"]), s["_classname"]) for key, s in pairs]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"Few-shot cache {path} is not upstream's {{'train': [Datum], 'val': [Datum]}} "
            f"({exc}); delete it to draw the subset again."
        ) from exc
    out = {"train": [], "val": []}
    for key, impath, label, classname in fields:
        out[key].append(make_datum(impath, label, classname, path))
    return out["train"], out["val"]


def subsample_classes(*args, subsample: str = "all"):
    """Keep the first half of the sorted labels (base) or the rest (new), relabelled from 0."""
    if subsample not in ("all", "base", "new"):
        raise ValueError(
            f"DATASET.SUBSAMPLE_CLASSES {subsample!r} is unknown; use all, base or new."
        )
    if subsample == "all":
        return args
    labels = sorted({item.label for item in args[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    log(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    output = []
    for dataset in args:
        output.append(
            [
                Datum(impath=item.impath, label=relabeler[item.label], classname=item.classname)
                for item in dataset
                if item.label in relabeler
            ]
        )
    return output


@dataclass(frozen=True)
class Layout:
    """What a dataset needs under DATASET.ROOT (paths relative to it), as its class declares it
    (`layout()`); tools/check_dataset.py checks it. A file entry may be a tuple of alternatives."""

    folder: str  # the dataset folder
    dirs: tuple = ()  # folders always required
    files: tuple = ()  # files always required
    split: str = ""  # split_zhou_*.json (optional when the dataset can generate it)
    split_prefix: str = ""  # the folder the split's paths are relative to
    build_files: tuple = ()  # needed only while the split file is absent
    build_dirs: tuple = ()
    class_dirs: tuple = ()  # folders that must hold one sub-folder per class
    build_class_dirs: tuple = ()  # the same, only while the split file is absent
    lists: tuple = ()  # official lists "<id> ..." naming images/<id>.jpg (FGVCAircraft)
    classnames: tuple = ()  # classnames.txt alternatives whose every class needs a folder in
    all_class_dirs: tuple = ()  # these (<wnid>/, or <0..N-1>/ when numbered)
    numbered: bool = False


def split_file_name(cls: type) -> str:
    """split_zhou_<Name>.json, the split file of the dataset class cls."""
    return f"split_zhou_{cls.__name__}.json"


def dataset_folder(cfg, name: str) -> str:
    """DATASET.ROOT/<name>, which must exist."""
    root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
    return require_dir(os.path.join(root, name))


class CoOpDataset(DatasetBase):
    """DatasetBase plus what every CoOp dataset does: read split_zhou_<Name>.json (or build the
    split once and save it), then the shared few-shot + cache + subsample step.

    A dataset names `dataset_dir` and `image_subdir` (split paths are relative to it; None = the
    dataset folder). Folder-per-class datasets need nothing else (IGNORED / NEW_CNAMES tune the
    generated 50/20/30 split); others override `build_split`.
    """

    image_subdir: str | None = None
    IGNORED: tuple = ()
    NEW_CNAMES: dict | None = None
    # what `build_split` reads, relative to the dataset folder (needed while the split file is
    # absent); a tuple entry lists alternatives
    BUILD_FILES: tuple = ()
    BUILD_DIRS: tuple = ()

    @classmethod
    def layout(cls) -> Layout:
        """The split file, its image folder and what `build_split` reads without it."""
        folder = cls.dataset_dir
        prefix = os.path.join(folder, cls.image_subdir) if cls.image_subdir else folder

        def under(entry):
            if isinstance(entry, tuple):
                return tuple(os.path.join(folder, e) for e in entry)
            return os.path.join(folder, entry)

        per_class_folders = cls.build_split is CoOpDataset.build_split
        return Layout(
            folder=folder,
            dirs=(prefix,) if cls.image_subdir else (),
            split=os.path.join(folder, split_file_name(cls)),
            split_prefix=prefix,
            build_files=tuple(under(e) for e in cls.BUILD_FILES),
            build_dirs=tuple(under(e) for e in cls.BUILD_DIRS),
            build_class_dirs=(prefix,) if per_class_folders else (),
        )

    def __init__(self, cfg):
        self.sort_listing = sorted_listing(cfg)
        self.dataset_dir = dataset_folder(cfg, type(self).dataset_dir)
        self.image_dir = self.dataset_dir
        if self.image_subdir:
            self.image_dir = require_dir(os.path.join(self.dataset_dir, self.image_subdir))
        self.split_path = os.path.join(self.dataset_dir, split_file_name(type(self)))
        if os.path.exists(self.split_path):
            train, val, test = read_split(self.split_path, self.image_dir)
        else:
            train, val, test = self.build_split()
            check_images(
                [item.impath for item in train + val + test],
                f"found for {type(self).__name__}",
                "replace or remove them",
            )
            save_split(train, val, test, self.split_path, self.image_dir)
        self.finalize(cfg, train, val, test)

    def build_split(self) -> tuple[list, list, list]:
        """The split when no split file exists: by default 50/20/30 per class folder."""
        return read_and_split_data(
            self.image_dir, ignored=self.IGNORED, new_cnames=self.NEW_CNAMES, sort=self.sort_listing
        )

    def finalize(self, cfg, train: list, val: list, test: list) -> None:
        """Apply DATASET.NUM_SHOTS (cached per shots and seed) and SUBSAMPLE_CLASSES, then init."""
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1 and train:
            train, val = self.fewshot(cfg, train, val, num_shots)
        train, val, test = subsample_classes(
            train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES
        )
        super().__init__(train_x=train, val=val, test=test)

    def fewshot_cache_path(self, cfg, num_shots: int, ext: str = ".json") -> str:
        """Where the few-shot subset for (shots, seed) is cached: <dataset folder>/split_fewshot/
        (ext ".pkl": where upstream CoOp caches it)."""
        return os.path.join(
            self.dataset_dir, "split_fewshot", f"shot_{num_shots}-seed_{cfg.SEED}{ext}"
        )

    def has_fewshot_cache(self, cfg, num_shots: int) -> bool:
        return any(
            os.path.isfile(self.fewshot_cache_path(cfg, num_shots, ext))
            for ext in (".json", ".pkl")
        )

    def fewshot(
        self, cfg, train: list, val: list, num_shots: int, classes: list[str] | None = None
    ) -> tuple[list, list]:
        """Load the cached subset for (shots, seed) (this project's .json, else upstream's .pkl) or
        draw it (train first, then val with min(K, 4)).

        A cache records what it was drawn from (the class names by label, a digest of the split's
        train and val lists); one drawn from another split (a class folder added, the split file
        regenerated or edited) is drawn again, with a warning. `classes` (default: train's) is
        for a caller that passes train=[] to avoid listing a large dataset (ImageNet): its cache
        is then checked by the classes only, and a stale one is refused.
        """
        cache = self.fewshot_cache_path(cfg, num_shots)
        prefix = self.dataset_dir
        upstream = self.fewshot_cache_path(cfg, num_shots, ".pkl")
        source = fewshot_source(train, val, prefix, classes)
        found = cache if os.path.isfile(cache) else upstream if os.path.isfile(upstream) else ""
        if found:
            log(f"Loading preprocessed few-shot data from {found}")
            if found == cache:
                data = read_split_file(cache, ("train", "val"))
                entries = {key: [tuple(item) for item in data[key]] for key in ("train", "val")}
                recorded = data.get("source") if isinstance(data.get("source"), dict) else None
            else:
                picked = read_upstream_fewshot(upstream)
                entries = {k: _entries(v, prefix) for k, v in zip(("train", "val"), picked)}
                recorded = None
            stale = stale_fewshot(entries, recorded, source, train, val, prefix)
            if not stale:
                if found == upstream:
                    return picked
                check_images(
                    [
                        os.path.join(prefix, p)
                        for key in ("train", "val")
                        for p, _, _ in entries[key]
                    ],
                    f"listed in {cache}",
                    f"restore them or delete {cache} to draw the subset again",
                )
                return tuple(
                    [make_datum(os.path.join(prefix, p), y, c, cache) for p, y, c in entries[key]]
                    for key in ("train", "val")
                )
            if not train:
                raise ValueError(
                    f"The few-shot cache {found} was drawn from another split ({stale}); delete it "
                    f"to draw the subset again."
                )
            logger.warning(
                f"Warning: the few-shot cache {found} was drawn from another split ({stale}); "
                f"drawing the subset again and replacing {cache}."
            )
        train = self.generate_fewshot_dataset(train, num_shots=num_shots)
        val = self.generate_fewshot_dataset(val, num_shots=min(num_shots, 4)) if val else val
        data = {"train": _relative(train, prefix), "val": _relative(val, prefix), "source": source}
        log(f"Saving preprocessed few-shot data to {cache}")
        try_write_json(data, cache, "few-shot cache")
        return train, val


def _entries(items: list, prefix: str) -> list[tuple]:
    """(relative path, label, class name) of each Datum, as split files and caches list them."""
    return [tuple(item) for item in _relative(items, prefix)]


def class_names_by_label(pairs) -> list[str]:
    """The class names of (label, class name) pairs, ordered by label."""
    mapping = dict(pairs)
    return [mapping[label] for label in sorted(mapping)]


def fewshot_source(train: list, val: list, prefix: str, classes: list[str] | None = None) -> dict:
    """What a few-shot subset is drawn from: the class names by label and a digest of the
    split's train and val lists (None when train is not listed)."""
    if classes is None:
        classes = class_names_by_label((item.label, item.classname) for item in train)
    digest = None
    if train:
        text = json.dumps([_relative(train, prefix), _relative(val, prefix)])
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return {"classes": list(classes), "split": digest}


def stale_fewshot(
    entries: dict, recorded: dict | None, source: dict, train: list, val: list, prefix: str
) -> str:
    """Why a cached subset no longer fits the split it would be used with ('' if it fits).

    A cache that records its source is compared by it; an older one (or upstream's .pkl) by its
    classes and by every cached image being in the split with the same label."""
    classes = class_names_by_label((y, c) for _, y, c in entries["train"])
    if recorded is not None:
        classes = recorded.get("classes", classes)
    now = source["classes"]
    if len(classes) != len(now):
        return f"it holds {len(classes)} classes, the split {len(now)}"
    if list(classes) != now:
        return "its classes have other names or labels than the split's"
    if recorded is not None:
        digest = recorded.get("split")
        if digest and source["split"] and digest != source["split"]:
            return "the split file's train or val list changed"
        return ""
    if train:
        listed = set(_entries(train, prefix)) | set(_entries(val, prefix))
        outside = [e for key in ("train", "val") for e in entries[key] if tuple(e) not in listed]
        if outside:
            return (
                f"{len(outside)} cached images are not in the split with these labels, e.g. "
                f"{outside[0][0]}"
            )
    return ""
