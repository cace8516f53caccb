import os

from promptdiff.datasets.common import (
    SPLITS,
    CoOpDataset,
    Layout,
    check_images,
    dataset_folder,
    make_datum,
    require_dir,
    require_file,
)
from promptdiff.host import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class FGVCAircraft(CoOpDataset):
    """fgvc_aircraft/images/<id>.jpg with the official variants.txt (class names, label = line
    number) and images_variant_{train,val,test}.txt (lines "<id> <variant>"); no split JSON."""

    dataset_dir = "fgvc_aircraft"
    image_subdir = "images"
    CLASS_FILE = "variants.txt"
    LISTS = tuple(f"images_variant_{split}.txt" for split in SPLITS)

    @classmethod
    def layout(cls) -> Layout:
        """The images folder, variants.txt and the three official lists (no split file)."""
        lists = tuple(os.path.join(cls.dataset_dir, f) for f in cls.LISTS)
        image_dir = os.path.join(cls.dataset_dir, cls.image_subdir)
        return Layout(
            folder=cls.dataset_dir,
            dirs=(image_dir,),
            files=(os.path.join(cls.dataset_dir, cls.CLASS_FILE), *lists),
            split_prefix=image_dir,
            lists=lists,
        )

    def __init__(self, cfg):
        self.dataset_dir = dataset_folder(cfg, type(self).dataset_dir)
        self.image_dir = require_dir(os.path.join(self.dataset_dir, self.image_subdir))
        variants = require_file(os.path.join(self.dataset_dir, self.CLASS_FILE), "class-name file")
        with open(variants) as f:
            classnames = [line.strip() for line in f if line.strip()]
        cname2lab = {c: i for i, c in enumerate(classnames)}
        train, val, test = (self.read_data(cname2lab, f) for f in self.LISTS)
        self.finalize(cfg, train, val, test)

    def read_data(self, cname2lab: dict, split_file: str) -> list:
        filepath = require_file(os.path.join(self.dataset_dir, split_file), "split list")
        rows = []
        with open(filepath) as f:
            for line in f:
                if not line.strip():
                    continue
                imname, classname = line.strip().split(" ", 1)
                if classname not in cname2lab:
                    raise ValueError(
                        f"Variant {classname!r} in {filepath} is not listed in variants.txt; "
                        f"use the variants.txt that came with the same FGVC-Aircraft release."
                    )
                rows.append((os.path.join(self.image_dir, imname + ".jpg"), classname))
        check_images([p for p, _ in rows], f"listed in {filepath}", "restore them (DATASETS.md)")
        return [make_datum(p, cname2lab[c], c, filepath, regenerable=False) for p, c in rows]
