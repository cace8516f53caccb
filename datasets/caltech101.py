import os

from datasets.common import CoOpDataset, read_and_split_data, read_split, require_dir, save_split
from promptdiff.host import DATASET_REGISTRY

IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CNAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}


@DATASET_REGISTRY.register()
class Caltech101(CoOpDataset):
    """caltech-101/101_ObjectCategories/<class>/*.jpg with split_zhou_Caltech101.json."""

    dataset_dir = "caltech-101"

    def __init__(self, cfg):
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = require_dir(os.path.join(root, self.dataset_dir))
        self.image_dir = require_dir(os.path.join(self.dataset_dir, "101_ObjectCategories"))
        self.split_path = os.path.join(self.dataset_dir, "split_zhou_Caltech101.json")
        if os.path.exists(self.split_path):
            train, val, test = read_split(self.split_path, self.image_dir)
        else:
            train, val, test = read_and_split_data(
                self.image_dir, ignored=IGNORED, new_cnames=NEW_CNAMES
            )
            save_split(train, val, test, self.split_path, self.image_dir)
        self.finalize(cfg, train, val, test)
