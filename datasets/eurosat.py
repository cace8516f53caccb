from promptdiff.datasets.common import CoOpDataset
from promptdiff.host import DATASET_REGISTRY

# upstream CoOp's readable names for the class folders (used by the prompts)
NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(CoOpDataset):
    """eurosat/2750/<class>/*.jpg with split_zhou_EuroSAT.json, or a 50/20/30 split per class
    folder; folder names are mapped to NEW_CNAMES."""

    dataset_dir = "eurosat"
    image_subdir = "2750"
    NEW_CNAMES = NEW_CNAMES
