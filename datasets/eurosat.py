import os

from datasets.common import CoOpDataset, read_and_split_data, read_split, require_dir, save_split
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

    def __init__(self, cfg):
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = require_dir(os.path.join(root, self.dataset_dir))
        self.image_dir = require_dir(os.path.join(self.dataset_dir, "2750"))
        self.split_path = os.path.join(self.dataset_dir, "split_zhou_EuroSAT.json")
        if os.path.exists(self.split_path):
            train, val, test = read_split(self.split_path, self.image_dir)
        else:
            train, val, test = read_and_split_data(self.image_dir, new_cnames=NEW_CNAMES)
            save_split(train, val, test, self.split_path, self.image_dir)
        self.finalize(cfg, train, val, test)
