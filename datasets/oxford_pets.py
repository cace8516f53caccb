import os

from datasets.common import (
    CoOpDataset,
    make_datum,
    read_split,
    require_dir,
    require_file,
    save_split,
    split_trainval,
)
from promptdiff.host import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class OxfordPets(CoOpDataset):
    """oxford_pets/images/*.jpg with split_zhou_OxfordPets.json, or built from the official
    annotations/trainval.txt (split 80/20 into train/val by split_trainval) and annotations/test.txt."""

    dataset_dir = "oxford_pets"

    def __init__(self, cfg):
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = require_dir(os.path.join(root, self.dataset_dir))
        self.image_dir = require_dir(os.path.join(self.dataset_dir, "images"))
        self.anno_dir = os.path.join(self.dataset_dir, "annotations")
        self.split_path = os.path.join(self.dataset_dir, "split_zhou_OxfordPets.json")
        if os.path.exists(self.split_path):
            train, val, test = read_split(self.split_path, self.image_dir)
        else:
            trainval = self.read_data("trainval.txt")
            test = self.read_data("test.txt")
            train, val = split_trainval(trainval)
            save_split(train, val, test, self.split_path, self.image_dir)
        self.finalize(cfg, train, val, test)

    def read_data(self, split_file: str) -> list:
        """Lines "<image name> <class id> <species> <breed id>"; the breed is the lower-cased
        image name without its trailing _<number>, the label is class id - 1."""
        filepath = require_file(
            os.path.join(self.anno_dir, split_file),
            "annotation file (needed while split_zhou_OxfordPets.json is absent)",
        )
        items = []
        with open(filepath) as f:
            for line in f:
                if not line.strip() or line.startswith("#"):
                    continue
                imname, label = line.split()[:2]
                breed = "_".join(imname.split("_")[:-1]).lower()
                impath = os.path.join(self.image_dir, imname + ".jpg")
                items.append(make_datum(impath, int(label) - 1, breed, filepath, regenerable=False))
        return items
