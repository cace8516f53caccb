import os
import random

from scipy.io import loadmat

from promptdiff.datasets.common import (
    CoOpDataset,
    make_datum,
    require_file,
)
from promptdiff.host import DATASET_REGISTRY, read_json

WHY = "(needed while split_zhou_OxfordFlowers.json is absent)"


@DATASET_REGISTRY.register()
class OxfordFlowers(CoOpDataset):
    """oxford_flowers/jpg/image_NNNNN.jpg with split_zhou_OxfordFlowers.json, or built from
    imagelabels.mat + cat_to_name.json with a 50/20/30 split per class."""

    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    BUILD_FILES = ("imagelabels.mat", "cat_to_name.json")

    def build_split(self) -> tuple[list, list, list]:
        """Image i (1-based) has labels[i - 1]; per label in order of first appearance shuffle,
        then 50% train, 20% val, rest test (upstream's RNG order)."""
        label_file, names_file = (os.path.join(self.dataset_dir, f) for f in self.BUILD_FILES)
        labels = loadmat(require_file(label_file, f"label file {WHY}"))["labels"][0]
        lab2cname = read_json(require_file(names_file, f"class-name file {WHY}"))
        tracker: dict[int, list[str]] = {}
        for i, label in enumerate(labels):
            impath = os.path.join(self.image_dir, f"image_{i + 1:05d}.jpg")
            tracker.setdefault(int(label), []).append(impath)
        train, val, test = [], [], []
        for label, impaths in tracker.items():
            random.shuffle(impaths)
            n_train = round(len(impaths) * 0.5)
            n_val = round(len(impaths) * 0.2)
            if min(n_train, n_val, len(impaths) - n_train - n_val) <= 0:
                raise ValueError(
                    f"Label {label} in {label_file} has {len(impaths)} images, too few for a "
                    f"50/20/30 split; provide split_zhou_OxfordFlowers.json."
                )
            cname = lab2cname[str(label)]

            def _collate(ims, y=label - 1, c=cname):
                return [make_datum(im, y, c, label_file, regenerable=False) for im in ims]

            train += _collate(impaths[:n_train])
            val += _collate(impaths[n_train : n_train + n_val])
            test += _collate(impaths[n_train + n_val :])
        return train, val, test
