import os

from promptdiff.datasets.common import (
    CoOpDataset,
    make_datum,
    require_file,
    split_trainval,
)
from promptdiff.host import DATASET_REGISTRY

WHY = "(needed while split_zhou_SUN397.json is absent)"


@DATASET_REGISTRY.register()
class SUN397(CoOpDataset):
    """sun397/SUN397/<letter>/<class>[/<sub>]/*.jpg with split_zhou_SUN397.json, or built from
    ClassName.txt, Training_01.txt (split 80/20 into train/val) and Testing_01.txt in sun397/."""

    dataset_dir = "sun397"
    image_subdir = "SUN397"
    BUILD_FILES = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")

    def build_split(self) -> tuple[list, list, list]:
        class_file, train_file, test_file = self.BUILD_FILES
        # lines "/a/abbey": the class is the path without its leading "/"
        classnames = [line[1:] for line in self.read_lines(class_file)]
        cname2lab = {c: i for i, c in enumerate(classnames)}
        trainval = self.read_data(cname2lab, train_file)
        test = self.read_data(cname2lab, test_file)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_lines(self, name: str) -> list[str]:
        path = require_file(os.path.join(self.dataset_dir, name), f"partition file {WHY}")
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]

    def read_data(self, cname2lab: dict, text_file: str) -> list:
        """Lines "/a/apartment_building/outdoor/sun_x.jpg"; the class name drops the letter and
        reverses the rest, as upstream: "outdoor apartment_building"."""
        source = os.path.join(self.dataset_dir, text_file)
        items = []
        for line in self.read_lines(text_file):
            imname = line[1:]
            folder = os.path.dirname(imname)
            classname = " ".join(folder.split("/")[1:][::-1])
            impath = os.path.join(self.image_dir, imname)
            items.append(
                make_datum(impath, cname2lab[folder], classname, source, regenerable=False)
            )
        return items
