import os
import re

from promptdiff.datasets.common import (
    CoOpDataset,
    make_datum,
    require_file,
    split_trainval,
)
from promptdiff.host import DATASET_REGISTRY

WHY = "(needed while split_zhou_UCF101.json is absent)"


def action_to_classname(action: str) -> str:
    """Upstream's renaming: split the CamelCase folder name at capitals, join with "_"
    ("ApplyEyeMakeup" -> "Apply_Eye_Makeup"; prompts later replace "_" by spaces)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


@DATASET_REGISTRY.register()
class UCF101(CoOpDataset):
    """ucf101/UCF-101-midframes/<Action>/<video>.jpg (one middle frame per video) with
    split_zhou_UCF101.json, or built from ucfTrainTestlist/classInd.txt, trainlist01.txt (split
    80/20 into train/val) and testlist01.txt."""

    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    BUILD_FILES = tuple(
        os.path.join("ucfTrainTestlist", f)
        for f in ("classInd.txt", "trainlist01.txt", "testlist01.txt")
    )

    def build_split(self) -> tuple[list, list, list]:
        class_file, train_file, test_file = self.BUILD_FILES
        cname2lab = {}
        for line in self.read_lines(class_file):  # "1 ApplyEyeMakeup", 1-based
            label, action = line.split(" ")
            cname2lab[action] = int(label) - 1
        trainval = self.read_data(cname2lab, train_file)
        test = self.read_data(cname2lab, test_file)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_lines(self, name: str) -> list[str]:
        path = os.path.join(self.dataset_dir, name)
        with open(require_file(path, f"split list {WHY}")) as f:
            return [line.strip() for line in f if line.strip()]

    def read_data(self, cname2lab: dict, text_file: str) -> list:
        """Lines "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi[ 1]" -> the video's .jpg frame, which
        lies in the renamed action's folder (Apply_Eye_Makeup/v_ApplyEyeMakeup_g08_c01.jpg)."""
        source = os.path.join(self.dataset_dir, text_file)
        items = []
        for line in self.read_lines(text_file):
            action, filename = line.split(" ")[0].split("/")
            classname = action_to_classname(action)
            impath = os.path.join(self.image_dir, classname, filename.replace(".avi", ".jpg"))
            items.append(
                make_datum(
                    impath,
                    cname2lab[action],
                    classname,
                    source,
                    regenerable=False,
                )
            )
        return items
