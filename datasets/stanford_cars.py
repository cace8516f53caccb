import os

from scipy.io import loadmat

from promptdiff.datasets.common import (
    CoOpDataset,
    make_datum,
    require_dir,
    require_file,
    split_trainval,
)
from promptdiff.host import DATASET_REGISTRY

WHY = "(needed while split_zhou_StanfordCars.json is absent)"


@DATASET_REGISTRY.register()
class StanfordCars(CoOpDataset):
    """stanford_cars/{cars_train,cars_test}/*.jpg with split_zhou_StanfordCars.json (paths relative
    to stanford_cars/), or built from devkit/cars_train_annos.mat (split 80/20 into train/val),
    cars_test_annos_withlabels.mat and devkit/cars_meta.mat."""

    dataset_dir = "stanford_cars"
    BUILD_DIRS = ("cars_train", "cars_test")
    BUILD_FILES = (
        os.path.join("devkit", "cars_train_annos.mat"),
        # the test labels came separately: beside devkit/ or inside it
        (
            "cars_test_annos_withlabels.mat",
            os.path.join("devkit", "cars_test_annos_withlabels.mat"),
        ),
        os.path.join("devkit", "cars_meta.mat"),
    )

    def build_split(self) -> tuple[list, list, list]:
        train_anno, test_annos, meta = self.BUILD_FILES
        train_dir, test_dir = self.BUILD_DIRS
        meta = require_file(os.path.join(self.dataset_dir, meta), f"class-name file {WHY}")
        test_annos = [os.path.join(self.dataset_dir, f) for f in test_annos]
        test_anno = next((f for f in test_annos if os.path.isfile(f)), test_annos[0])
        trainval = self.read_data(train_dir, os.path.join(self.dataset_dir, train_anno), meta)
        test = self.read_data(test_dir, test_anno, meta)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, image_dir: str, anno_file: str, meta_file: str) -> list:
        """Label = class - 1; the class name is cars_meta's with its last word (the year) moved to
        the front, as upstream: "AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV"."""
        image_dir = require_dir(os.path.join(self.dataset_dir, image_dir), "image folder")
        annos = loadmat(require_file(anno_file, f"annotation file {WHY}"))["annotations"][0]
        names = loadmat(meta_file)["class_names"][0]
        items = []
        for anno in annos:
            label = int(anno["class"][0, 0]) - 1
            words = str(names[label][0]).split(" ")
            classname = " ".join([words[-1], *words[:-1]])
            impath = os.path.join(image_dir, str(anno["fname"][0]))
            items.append(make_datum(impath, label, classname, anno_file, regenerable=False))
        return items
