from promptdiff.datasets.imagenet import ImageNetTestOnly
from promptdiff.host import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetTestOnly):
    """imagenet-adversarial/imagenet-a/<wnid>/* (200 classes, labelled by sorted folder) with classnames.txt; test-only."""

    dataset_dir = "imagenet-adversarial"
    ALL_CLASSES = False
    image_subdir = "imagenet-a"
