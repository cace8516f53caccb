from promptdiff.datasets.common import CoOpDataset
from promptdiff.host import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class Food101(CoOpDataset):
    """food-101/images/<class>/*.jpg with split_zhou_Food101.json, or a 50/20/30 split per class folder."""

    dataset_dir = "food-101"
    image_subdir = "images"
