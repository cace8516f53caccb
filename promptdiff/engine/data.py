"""Datum, DatasetBase, transforms and DataManager with Dassl's names, meanings and RNG order."""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict

import torch
from PIL import Image
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision import transforms as T

from promptdiff.engine import distributed
from promptdiff.engine.registry import build_dataset
from promptdiff.engine.utils import logger


class Datum:
    """One image: path, label, domain and class name; the image file must exist."""

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = ""):
        if not isinstance(impath, str):
            raise TypeError(f"Datum impath must be a str (got {type(impath).__name__}).")
        if not os.path.isfile(impath):
            raise FileNotFoundError(
                f"Image file {impath} does not exist; check DATASET.ROOT and the dataset layout "
                f"(see DATASETS.md)."
            )
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    impath = property(lambda self: self._impath)
    label = property(lambda self: self._label)
    domain = property(lambda self: self._domain)
    classname = property(lambda self: self._classname)

    def __repr__(self) -> str:
        return f"Datum({self._impath!r}, {self._label}, {self._domain}, {self._classname!r})"


def split_problem(lists: dict[str, list[tuple[int, str]]], ref: str = "train") -> str:
    """What makes a split inconsistent, or '' when nothing does. Lists are (label, class name)
    pairs; the classes are those of `ref` (its largest label + 1), which must hold every one of
    them, the other lists only those, and each label keeps one class name everywhere: the class
    names come from `ref`, so a gap or a second name would score images against another class."""
    num_classes = max((label for label, _ in lists[ref]), default=-1) + 1
    named: dict[int, tuple[str, str]] = {}  # label -> (class name, the list that named it first)
    for key in [ref, *(k for k in lists if k != ref)]:
        for label, name in lists[key]:
            if label >= num_classes:
                return (
                    f"has the label {label} in its {key} list, outside the {num_classes} "
                    f"classes of its {ref} list (0..{num_classes - 1})"
                )
            first = named.setdefault(label, (name, key))
            if first[0] != name:
                return (
                    f"calls label {label} {first[0]!r} in its {first[1]} list but {name!r} in "
                    f"its {key} list"
                )
    present = {label for label, _ in lists[ref]}
    missing = [label for label in range(num_classes) if label not in present]
    if missing:
        shown = ", ".join(
            f"{label} ({named[label][0]})" if label in named else str(label)
            for label in missing[:5]
        )
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return (
            f"has no {ref} image of the classes {shown}{more} (labels run 0..{num_classes - 1}), "
            f"so the class names would be shifted"
        )
    return ""


class DatasetBase:
    """Holds train_x / train_u / val / test lists of Datum and derives the class information."""

    dataset_dir = ""
    domains: list = []

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    train_x = property(lambda self: self._train_x)
    train_u = property(lambda self: self._train_u)
    val = property(lambda self: self._val)
    test = property(lambda self: self._test)
    lab2cname = property(lambda self: self._lab2cname)
    classnames = property(lambda self: self._classnames)
    num_classes = property(lambda self: self._num_classes)

    @staticmethod
    def get_num_classes(data_source) -> int:
        return max(item.label for item in data_source) + 1 if data_source else 0

    @staticmethod
    def get_lab2cname(data_source):
        """Label -> class name, and the class names ordered by label."""
        mapping = {item.label: item.classname for item in data_source or []}
        labels = sorted(mapping)
        return mapping, [mapping[label] for label in labels]

    @staticmethod
    def split_dataset_by_label(data_source) -> dict:
        """Group items by label, keeping the order in which labels first appear."""
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    def generate_fewshot_dataset(self, *data_sources, num_shots: int = -1, repeat: bool = False):
        """K items per label via random.sample, consuming Python's `random` in Dassl's order."""
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources
        logger.info(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            dataset = []
            for items in self.split_dataset_by_label(data_source).values():
                if len(items) >= num_shots:
                    dataset.extend(random.sample(items, num_shots))
                elif repeat:
                    dataset.extend(random.choices(items, k=num_shots))
                else:
                    dataset.extend(items)
            output.append(dataset)
        return output[0] if len(output) == 1 else output


INTERPOLATION_MODES = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}
KNOWN_TRANSFORMS = {"random_resized_crop", "random_flip", "random_crop", "center_crop", "normalize"}


def build_transform(cfg, is_train: bool = True) -> T.Compose:
    """Dassl's train / test pipelines for the subset of INPUT.TRANSFORMS the CoOp family uses."""
    choices = list(cfg.INPUT.TRANSFORMS)
    unknown = [c for c in choices if c not in KNOWN_TRANSFORMS]
    if unknown:
        raise ValueError(
            f"INPUT.TRANSFORMS has unknown entries {unknown}; use any of {sorted(KNOWN_TRANSFORMS)}."
        )
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise ValueError(
            f"INPUT.INTERPOLATION {cfg.INPUT.INTERPOLATION!r} is unknown; use one of "
            f"{sorted(INTERPOLATION_MODES)}."
        )
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    steps = []  # (transform, the line Dassl prints for it)
    if is_train:
        if "random_resized_crop" in choices:
            scale = tuple(cfg.INPUT.RRCROP_SCALE)
            steps.append(
                (
                    T.RandomResizedCrop(size, scale=scale, interpolation=interp),
                    f"random resized crop (size={size}, scale={scale})",
                )
            )
        elif "random_crop" in choices:
            steps += [
                (T.Resize(size, interpolation=interp), f"resize to {size}"),
                (
                    T.RandomCrop(size, padding=cfg.INPUT.CROP_PADDING),
                    f"random crop (padding = {cfg.INPUT.CROP_PADDING})",
                ),
            ]
        else:
            steps.append((T.Resize(size, interpolation=interp), f"resize to {size}"))
        if "random_flip" in choices:
            steps.append((T.RandomHorizontalFlip(), "random flip"))
    else:
        steps += [
            (T.Resize(max(size), interpolation=interp), f"resize the smaller edge to {max(size)}"),
            (T.CenterCrop(size), f"{size[0]}x{size[1]} center crop"),
        ]
    steps.append((T.ToTensor(), "to torch tensor of range [0, 1]"))
    if "normalize" in choices:
        mean, std = list(cfg.INPUT.PIXEL_MEAN), list(cfg.INPUT.PIXEL_STD)
        steps.append((T.Normalize(mean=mean, std=std), f"normalization (mean={mean}, std={std})"))
    # the listing users debug augmentation with (Dassl prints it too)
    logger.info(f"Building transform_{'train' if is_train else 'test'}")
    for _, line in steps:
        logger.info(f"+ {line}")
    return T.Compose([t for t, _ in steps])


class ImageReadError(ValueError):
    """An image in the data cannot be opened or decoded."""


def read_image(path: str) -> Image.Image:
    """The image as RGB; a truncated, non-image or unreadable file is one ImageReadError."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageReadError(
            f"Image {path} cannot be read ({reason}); replace it or remove it from the data "
            f"(tools/check_dataset.py finds missing and empty files)."
        ) from exc


class DatasetWrapper(Dataset):
    """Loads and transforms one Datum into Dassl's batch dict."""

    def __init__(self, data_source, transform):
        self.data_source = data_source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> dict:
        item = self.data_source[idx]
        return {
            "img": self.transform(read_image(item.impath)),
            "label": item.label,
            "domain": item.domain,
            "impath": item.impath,
            "index": idx,
        }


def build_data_loader(cfg, sampler_type: str, data_source, batch_size: int, tfm, is_train: bool):
    """A DataLoader with Dassl's rules: drop_last only for training data of at least one batch."""
    if not data_source:
        raise ValueError("Cannot build a data loader from an empty data source; check the split.")
    dataset = DatasetWrapper(data_source, tfm)
    return loader_of(cfg, dataset, sampler_type, batch_size, is_train)


def rank_batch_size(batch_size: int, key: str) -> int:
    """The images per step of one process for the training batch `batch_size` of config key
    `key`: all of them, or under torchrun this rank's share."""
    if distributed.is_distributed():
        return distributed.per_rank_batch_size(batch_size, key)
    return batch_size


def loader_of(
    cfg, dataset: Dataset, sampler_type: str, batch_size: int, is_train: bool, key: str = ""
) -> DataLoader:
    """build_data_loader's DataLoader over a ready dataset of batch dicts; `key` names the batch
    size's config key (default: DATALOADER.TRAIN_X / TEST.BATCH_SIZE)."""
    key = key or ("DATALOADER.TRAIN_X.BATCH_SIZE" if is_train else "DATALOADER.TEST.BATCH_SIZE")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{key} is {batch_size!r}; use a positive number of images per batch.")
    if sampler_type not in ("RandomSampler", "SequentialSampler"):
        raise ValueError(
            f"Sampler {sampler_type!r} is not supported; use RandomSampler or SequentialSampler."
        )
    if distributed.is_distributed():
        # evaluation shards keep dataset order, so gathered predictions line up (see distributed)
        shuffle = is_train and sampler_type == "RandomSampler"
        sampler = distributed.shard_sampler(dataset, shuffle, cfg.SEED)
        if is_train:
            batch_size = rank_batch_size(batch_size, key)
    elif sampler_type == "RandomSampler":
        sampler = RandomSampler(dataset)
    else:
        sampler = SequentialSampler(dataset)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(sampler) >= batch_size,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
    )
    if len(loader) == 0:
        raise ValueError("The data loader is empty; check the dataset and the batch size.")
    return loader


def shots_used(requested: int, train: list) -> int:
    """The training images per class a few-shot run really has: DATASET.NUM_SHOTS, or fewer
    (with a warning) when no class holds that many; -1 (all images) stays -1."""
    counts = Counter(item.label for item in train or [])
    if requested < 1 or not counts:
        return requested
    short = [n for n in counts.values() if n < requested]
    used = min(requested, max(counts.values()))
    if short:
        logger.warning(
            f"Warning: DATASET.NUM_SHOTS is {requested}, but {len(short)} of the {len(counts)} "
            f"classes have fewer training images (fewest: {min(short)}); they train on all they "
            f"have, and results.json records {used} shots."
        )
    return used


class DataManager:
    """Builds the dataset named in the config and its train / val / test loaders."""

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None):
        # rank 0 first: it may write the split and few-shot caches the other ranks then read
        dataset = distributed.main_process_first(lambda: build_dataset(cfg))
        distributed.check_same_on_all_ranks(
            repr([dataset.train_x, dataset.val, dataset.test]), "The dataset split"
        )
        lists = {"train": dataset.train_x, "val": dataset.val, "test": dataset.test}
        problem = split_problem(
            {key: [(d.label, d.classname) for d in items or []] for key, items in lists.items()}
        )
        if problem:
            raise ValueError(
                f"Dataset {cfg.DATASET.NAME} under {cfg.DATASET.ROOT} {problem}; fix its split "
                f"file or class folders (tools/check_dataset.py checks them)."
            )
        # test-only datasets (ImageNet's variants) hand their test list as train_x: no subset
        test_only = dataset.train_x is dataset.test
        self.num_shots = shots_used(cfg.DATASET.NUM_SHOTS, [] if test_only else dataset.train_x)
        tfm_train = custom_tfm_train or build_transform(cfg, is_train=True)
        tfm_test = custom_tfm_test or build_transform(cfg, is_train=False)
        self.train_loader_x = build_data_loader(
            cfg,
            cfg.DATALOADER.TRAIN_X.SAMPLER,
            dataset.train_x,
            cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
            tfm_train,
            is_train=True,
        )
        self.train_loader_u = None
        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(
                cfg,
                cfg.DATALOADER.TEST.SAMPLER,
                dataset.val,
                cfg.DATALOADER.TEST.BATCH_SIZE,
                tfm_test,
                is_train=False,
            )
        self.test_loader = build_data_loader(
            cfg,
            cfg.DATALOADER.TEST.SAMPLER,
            dataset.test,
            cfg.DATALOADER.TEST.BATCH_SIZE,
            tfm_test,
            is_train=False,
        )
        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    num_classes = property(lambda self: self._num_classes)
    num_source_domains = property(lambda self: self._num_source_domains)
    lab2cname = property(lambda self: self._lab2cname)

    def show_dataset_summary(self, cfg) -> None:
        ds = self.dataset
        rows = [["Dataset", cfg.DATASET.NAME], ["# classes", f"{self.num_classes:,}"]]
        rows.append(["# train_x", f"{len(ds.train_x):,}"])
        if ds.val:
            rows.append(["# val", f"{len(ds.val):,}"])
        rows.append(["# test", f"{len(ds.test):,}"])
        logger.info(tabulate(rows))
