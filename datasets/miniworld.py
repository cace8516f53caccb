"""The miniature world (promptdiff/miniworld.py) as CoOp-style datasets: MiniWorld is the source
domain (train / val / test, base-to-new like any CoOp dataset); MiniWorld<Domain> are its shifted
domains, test-only like ImageNet's variants (the model trained on MiniWorld is evaluated on them).
The world's builder writes every split file, so a split never depends on which experiment ran
first: `python tools/miniworld.py build --root DATA`."""

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
from promptdiff.miniworld import DATASET_DIR, DOMAINS, SOURCE, domain_dataset_name

BUILD_HINT = "write the world with `python tools/miniworld.py build --root DATA`"


@DATASET_REGISTRY.register()
class MiniWorld(CoOpDataset):
    """miniworld/images/photo/<colour>_<shape>/*.png with split_zhou_MiniWorld.json."""

    dataset_dir = DATASET_DIR
    image_subdir = "images"

    def build_split(self):
        raise FileNotFoundError(f"The split file {self.split_path} does not exist; {BUILD_HINT}.")


class MiniWorldDomain(DatasetBase):
    """A shifted domain of the world: its test images only (train_x = test, no val).
    DATASET.SUBSAMPLE_CLASSES applies (base / new halves of the same classes); NUM_SHOTS does not."""

    dataset_dir = DATASET_DIR
    image_subdir = "images"

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
        require_file(split, f"split file ({BUILD_HINT})")
        _, _, test = read_split(split, os.path.join(folder, self.image_subdir))
        (test,) = subsample_classes(test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=test, test=test)


for _domain in DOMAINS:
    if _domain != SOURCE:
        _name = domain_dataset_name(_domain)
        globals()[_name] = DATASET_REGISTRY.register()(
            type(
                _name, (MiniWorldDomain,), {"__doc__": f"The world's {_domain} domain (test only)."}
            )
        )
