from promptdiff.datasets.common import CoOpDataset
from promptdiff.host import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class DescribableTextures(CoOpDataset):
    """dtd/images/<class>/*.jpg with split_zhou_DescribableTextures.json, or a 50/20/30 split per class folder."""

    dataset_dir = "dtd"
    image_subdir = "images"
