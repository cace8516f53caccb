from promptdiff.datasets.imagenet import ImageNetTestOnly
from promptdiff.host import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetTestOnly):
    """imagenet-rendition/imagenet-r/<wnid>/* (200 classes, labelled by sorted folder) with classnames.txt; test-only."""

    dataset_dir = "imagenet-rendition"
    ALL_CLASSES = False
    image_subdir = "imagenet-r"
