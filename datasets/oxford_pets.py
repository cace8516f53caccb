import os

from promptdiff.datasets.common import (
    CoOpDataset,
    make_datum,
    require_file,
    split_trainval,
)
from promptdiff.host import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class OxfordPets(CoOpDataset):
    """oxford_pets/images/*.jpg with split_zhou_OxfordPets.json, or built from the official
    annotations/trainval.txt (split 80/20 into train/val by split_trainval) and annotations/test.txt."""

    dataset_dir = "oxford_pets"
    image_subdir = "images"
    BUILD_FILES = (
        os.path.join("annotations", "trainval.txt"),
        os.path.join("annotations", "test.txt"),
    )

    def build_split(self) -> tuple[list, list, list]:
        trainval, test = (self.read_data(f) for f in self.BUILD_FILES)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, split_file: str) -> list:
        """Lines "<image name> <class id> <species> <breed id>"; the breed is the lower-cased
        image name without its trailing _<number>, the label is class id - 1."""
        filepath = require_file(
            os.path.join(self.dataset_dir, split_file),
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
