from promptdiff.datasets.imagenet import ImageNetTestOnly
from promptdiff.host import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetTestOnly):
    """imagenet-sketch/images/<wnid>/* (1000 classes, labelled by sorted folder) with classnames.txt; test-only."""

    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
