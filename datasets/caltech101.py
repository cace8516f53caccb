from promptdiff.datasets.common import CoOpDataset
from promptdiff.host import DATASET_REGISTRY

IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CNAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}


@DATASET_REGISTRY.register()
class Caltech101(CoOpDataset):
    """caltech-101/101_ObjectCategories/<class>/*.jpg with split_zhou_Caltech101.json."""

    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    NEW_CNAMES = NEW_CNAMES
    IGNORED = IGNORED
