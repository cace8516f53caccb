import os

from datasets.common import CoOpDataset, read_and_split_data, read_split, require_dir, save_split
from promptdiff.host import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class DescribableTextures(CoOpDataset):
    """dtd/images/<class>/*.jpg with split_zhou_DescribableTextures.json, or a 50/20/30 split per class folder."""

    dataset_dir = "dtd"

    def __init__(self, cfg):
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = require_dir(os.path.join(root, self.dataset_dir))
        self.image_dir = require_dir(os.path.join(self.dataset_dir, "images"))
        self.split_path = os.path.join(self.dataset_dir, "split_zhou_DescribableTextures.json")
        if os.path.exists(self.split_path):
            train, val, test = read_split(self.split_path, self.image_dir)
        else:
            train, val, test = read_and_split_data(self.image_dir)
            save_split(train, val, test, self.split_path, self.image_dir)
        self.finalize(cfg, train, val, test)
