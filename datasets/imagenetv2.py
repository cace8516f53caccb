import os

from promptdiff.datasets.common import check_images, list_images, require_dir
from promptdiff.datasets.imagenet import ImageNetTestOnly
from promptdiff.host import DATASET_REGISTRY, Datum


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetTestOnly):
    """imagenetv2/imagenetv2-matched-frequency-format-val/<i>/*.jpeg, i = 0..N-1 naming the i-th
    line of classnames.txt (N = its number of lines, 1000 for the real file); test-only."""

    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"
    NUMBERED = True

    def read_data(self, classnames: dict, text_file: str) -> list:
        items = []
        for label, classname in enumerate(classnames.values()):
            class_dir = require_dir(os.path.join(self.image_dir, str(label)), "class folder")
            for imname in list_images(class_dir, self.sort_listing):
                items.append(
                    Datum(impath=os.path.join(class_dir, imname), label=label, classname=classname)
                )
        check_images(
            [item.impath for item in items], f"in {self.image_dir}", "replace or remove them"
        )
        return items
