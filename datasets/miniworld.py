"""The miniature worlds (promptdiff/worlds/miniature.py) as CoOp-style datasets: MiniWorld is the default
world's source domain (train / val / test, base-to-new like any CoOp dataset); MiniWorld<Domain>
are its shifted domains, test-only like ImageNet's variants (the model trained on MiniWorld is
evaluated on them). The per-image-camera world registers the same set as MiniWorldPercam and
MiniWorldPercam<Domain>. The world's builder writes every split file, so a split never depends on
which experiment ran first: `python tools/miniworld.py build [--world percam] --root DATA`."""

import os

from promptdiff.datasets.common import (
    CoOpDataset,
    Layout,
    dataset_folder,
    read_split,
    require_file,
    split_file_name,
    subsample_classes,
)
from promptdiff.host import DATASET_REGISTRY, DatasetBase
from promptdiff.worlds.miniature import DOMAINS, SOURCE, WORLDS, dataset_dir, domain_dataset_name

BUILD_HINT = "write the world with `python tools/miniworld.py build --root DATA`"


@DATASET_REGISTRY.register()
class MiniWorld(CoOpDataset):
    """miniworld/images/photo/<colour>_<shape>/*.png with split_zhou_MiniWorld.json."""

    dataset_dir = dataset_dir("default")
    image_subdir = "images"
    build_hint = BUILD_HINT

    def build_split(self):
        raise FileNotFoundError(
            f"The split file {self.split_path} does not exist; {self.build_hint}."
        )


class MiniWorldDomain(DatasetBase):
    """A shifted domain of the world: its test images only (train_x = test, no val).
    DATASET.SUBSAMPLE_CLASSES applies (base / new halves of the same classes); NUM_SHOTS does not."""

    dataset_dir = dataset_dir("default")
    image_subdir = "images"
    build_hint = BUILD_HINT

    @classmethod
    def layout(cls) -> Layout:
        """The world's images folder and this domain's split file (the builder writes both)."""
        image_dir = os.path.join(cls.dataset_dir, cls.image_subdir)
        return Layout(
            folder=cls.dataset_dir,
            dirs=(image_dir,),
            split=os.path.join(cls.dataset_dir, split_file_name(cls)),
            split_prefix=image_dir,
        )

    def __init__(self, cfg):
        folder = dataset_folder(cfg, self.dataset_dir)
        split = os.path.join(folder, split_file_name(type(self)))
        require_file(split, f"split file ({self.build_hint})")
        _, _, test = read_split(split, os.path.join(folder, self.image_subdir))
        (test,) = subsample_classes(test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=test, test=test)


def _register(kind: str, domain: str, base: type) -> None:
    """Register the dataset class of one domain of one world (MiniWorld is written out above)."""
    name = domain_dataset_name(domain, kind)
    hint = BUILD_HINT if kind == "default" else BUILD_HINT.replace("build", f"build --world {kind}")
    attrs = {
        "__doc__": f"The {kind} world's {domain} domain"
        + (" (test only)." if base is MiniWorldDomain else "."),
        "dataset_dir": dataset_dir(kind),
        "build_hint": hint,
    }
    globals()[name] = DATASET_REGISTRY.register()(type(name, (base,), attrs))


for _kind in WORLDS:
    for _domain in DOMAINS:
        if _kind != "default" or _domain != SOURCE:
            _register(_kind, _domain, MiniWorld if _domain == SOURCE else MiniWorldDomain)
