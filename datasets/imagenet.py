import os

from promptdiff.datasets.common import (
    CoOpDataset,
    Layout,
    check_images,
    class_names_by_label,
    dataset_folder,
    list_images,
    listdir_nohidden,
    require_dir,
    require_file,
    sorted_listing,
    subsample_classes,
)
from promptdiff.host import DATASET_REGISTRY, DatasetBase, Datum, log


def read_classnames(text_file: str) -> dict[str, str]:
    """classnames.txt lines "<wnid> <class name>" -> {wnid: class name} in file order."""
    classnames = {}
    with open(text_file) as f:
        for line in f:
            if line.strip():
                folder, _, name = line.strip().partition(" ")
                classnames[folder] = name
    return classnames


CLASSNAMES_FILE = "classnames.txt"


def classnames_alternatives(dataset_dir: str) -> tuple[str, str]:
    """The variant's own classnames.txt (upstream's place), else ImageNet's; relative to the root."""
    return os.path.join(dataset_dir, CLASSNAMES_FILE), os.path.join("imagenet", CLASSNAMES_FILE)


def find_classnames(root: str, dataset_dir: str) -> str:
    """The first existing of classnames_alternatives(dataset_dir) under DATASET.ROOT root."""
    own, fallback = (os.path.join(root, p) for p in classnames_alternatives(dataset_dir))
    for path in (own, fallback):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"The class-name file {own} does not exist (nor {fallback}); copy ImageNet's "
        f"classnames.txt into either place (see DATASETS.md)."
    )


def read_class_folders(
    image_dir: str,
    classnames: dict,
    text_file: str,
    all_classes: bool = True,
    sort: bool = False,
) -> tuple[list, list]:
    """The <wnid> class folders of image_dir and their images: (sorted folders, items); the
    images in each folder in raw listing order unless `sort` (DATASET.LIST_ORDER).

    all_classes: every class of text_file must have a folder, and labels are positions in the
    class list (its wnids sorted, which is upstream's sorted-folder order on a complete dataset),
    so a missing folder can never renumber the others. Otherwise (ImageNet-A/-R, whose folders
    are a 200-class subset) the folders present are the classes, labelled in sorted order.
    """
    require_dir(image_dir, "image folder")
    folders = [
        d for d in listdir_nohidden(image_dir, True) if os.path.isdir(os.path.join(image_dir, d))
    ]
    if not folders:
        raise FileNotFoundError(
            f"The image folder {image_dir} has no class folders; arrange its images into one "
            f"folder per class (<wnid>/), see DATASETS.md."
        )
    unknown = [d for d in folders if d not in classnames]
    if unknown:
        raise ValueError(
            f"Class folders {unknown[:3]} in {image_dir} are not listed in {text_file}; use "
            f"ImageNet's classnames.txt (lines '<wnid> <class name>')."
        )
    if all_classes:
        absent = [w for w in classnames if w not in set(folders)]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} of the {len(classnames)} classes in {text_file} have no folder in "
                f"{image_dir} (e.g. {', '.join(absent[:3])}); restore them, since labels follow "
                f"the class list (see DATASETS.md)."
            )
        label_of = {wnid: n for n, wnid in enumerate(sorted(classnames))}
    else:
        label_of = {wnid: n for n, wnid in enumerate(folders)}
    items = []
    for folder in folders:
        folder_dir = os.path.join(image_dir, folder)
        for imname in list_images(folder_dir, sort):
            items.append(
                Datum(
                    impath=os.path.join(folder_dir, imname),
                    label=label_of[folder],
                    classname=classnames[folder],
                )
            )
    check_images([item.impath for item in items], f"in {image_dir}", "replace or remove them")
    return folders, items


class ImageNetTestOnly(DatasetBase):
    """An ImageNet variant read as test data only (train_x = test, no val), as upstream: used to
    evaluate a model trained on ImageNet; DATASET.NUM_SHOTS and SUBSAMPLE_CLASSES do not apply."""

    dataset_dir = ""
    image_subdir = ""
    ALL_CLASSES = True  # False: the folders are a subset of classnames.txt (ImageNet-A/-R)
    NUMBERED = False  # True: class folders are 0..N-1, the line numbers of classnames.txt

    @classmethod
    def layout(cls) -> Layout:
        """The image folder of class folders and a classnames.txt (its own or ImageNet's)."""
        image_dir = os.path.join(cls.dataset_dir, cls.image_subdir)
        classnames = classnames_alternatives(cls.dataset_dir)
        return Layout(
            folder=cls.dataset_dir,
            dirs=(image_dir,),
            files=(classnames,),
            class_dirs=(image_dir,),
            classnames=classnames if cls.ALL_CLASSES else (),
            all_class_dirs=(image_dir,) if cls.ALL_CLASSES else (),
            numbered=cls.NUMBERED,
        )

    def __init__(self, cfg):
        self.sort_listing = sorted_listing(cfg)
        self.dataset_dir = dataset_folder(cfg, type(self).dataset_dir)
        self.image_dir = require_dir(
            os.path.join(self.dataset_dir, self.image_subdir), "image folder"
        )
        text_file = find_classnames(os.path.dirname(self.dataset_dir), type(self).dataset_dir)
        data = self.read_data(read_classnames(text_file), text_file)
        if cfg.DATASET.NUM_SHOTS >= 1 or cfg.DATASET.SUBSAMPLE_CLASSES != "all":
            log(
                f"{type(self).__name__} is test-only: DATASET.NUM_SHOTS and "
                f"DATASET.SUBSAMPLE_CLASSES are ignored (as upstream)."
            )
        super().__init__(train_x=data, test=data)

    def read_data(self, classnames: dict, text_file: str) -> list:
        return read_class_folders(
            self.image_dir, classnames, text_file, self.ALL_CLASSES, sort=self.sort_listing
        )[1]


@DATASET_REGISTRY.register()
class ImageNet(CoOpDataset):
    """imagenet/images/{train,val}/<wnid>/*.JPEG with imagenet/classnames.txt; val is the test set
    (and the val split, as upstream); few-shot subsets are drawn from train only."""

    dataset_dir = "imagenet"
    image_subdir = "images"
    SPLIT_DIRS = ("train", "val")

    @classmethod
    def layout(cls) -> Layout:
        """images/train and images/val with a class folder for every line of classnames.txt."""
        dirs = tuple(os.path.join(cls.dataset_dir, cls.image_subdir, d) for d in cls.SPLIT_DIRS)
        classnames = os.path.join(cls.dataset_dir, CLASSNAMES_FILE)
        return Layout(
            folder=cls.dataset_dir,
            dirs=dirs,
            files=(classnames,),
            class_dirs=dirs,
            classnames=(classnames,),
            all_class_dirs=dirs,
        )

    def __init__(self, cfg):
        self.sort_listing = sorted_listing(cfg)
        self.dataset_dir = dataset_folder(cfg, type(self).dataset_dir)
        self.image_dir = require_dir(os.path.join(self.dataset_dir, self.image_subdir))
        train_dir, val_dir = (os.path.join(self.image_dir, d) for d in self.SPLIT_DIRS)
        require_dir(train_dir, "image folder")
        text_file = require_file(os.path.join(self.dataset_dir, CLASSNAMES_FILE), "class-name file")
        classnames = read_classnames(text_file)
        val_folders, test = read_class_folders(
            val_dir, classnames, text_file, sort=self.sort_listing
        )
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1 and self.has_fewshot_cache(cfg, num_shots):
            train = []  # the cached subset is loaded below; no need to list all training images
        else:
            train_folders, train = read_class_folders(
                train_dir, classnames, text_file, sort=self.sort_listing
            )
            if train_folders != val_folders:
                raise ValueError(
                    f"{train_dir} has {len(train_folders)} class folders but {val_dir} has "
                    f"{len(val_folders)} (or other names); ImageNet val must be arranged in the "
                    f"same <wnid> class folders as train (see DATASETS.md)."
                )
        if num_shots >= 1:
            # the classes come from classnames.txt and val: train is not listed when cached
            classes = class_names_by_label((item.label, item.classname) for item in test)
            train, _ = self.fewshot(cfg, train, [], num_shots, classes=classes)
        train, test = subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        DatasetBase.__init__(self, train_x=train, val=test, test=test)
