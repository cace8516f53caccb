"""Apply a trained run to any images and class names: `promptdiff.load(run_dir).predict(...)`.

The run folder holds what train.py wrote: `config.yaml` (the merged config) and the checkpoints
`<model>/model.pth.tar-<epoch>`. A learned context does not depend on the class names, so any
list of names works. The model is the trainer's own (`model_inference`), so predictions equal
those of `train.py --eval-only` on the same images: a *Diff run samples each image's prompt from
TRAINER.PD.NOISE_SEED's noise, drawn batch by batch (DATALOADER.TEST.BATCH_SIZE) in the order
the images are given, as the evaluation does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from types import SimpleNamespace

import torch
from PIL import Image

ImageLike = str | os.PathLike | Image.Image


def run_config(run_dir: str):
    """The merged config a training run wrote to RUN/config.yaml, on top of today's defaults."""
    from promptdiff.trainers.config import build_cfg

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist; --model-dir must be a folder train.py trained into "
            f"(runs from before config.yaml was written need retraining)."
        )
    return build_cfg([path], freeze=False)


def checkpoint_epoch(run_dir: str, model: str = "prompt_learner") -> int | None:
    """The epoch recorded in RUN/<model>/checkpoint (None: model-best.pth.tar)."""
    from promptdiff.engine.checkpoint import last_checkpoint_name

    name = last_checkpoint_name(os.path.join(run_dir, model))
    if name is None:
        raise FileNotFoundError(
            f"No trained weights in {run_dir} (no {model}/checkpoint naming an existing file); "
            f"train it first or point --model-dir at a finished run."
        )
    match = re.fullmatch(r"model\.pth\.tar-(\d+)", name)
    return int(match.group(1)) if match else None


def open_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image; a file that does not open is one error naming it."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"Image {image} cannot be opened ({type(exc).__name__}); give image files PIL can "
            f"read (JPEG, PNG, ...)."
        ) from exc


class Predictor:
    """A trained run, ready to classify images among any class names."""

    def __init__(self, run_dir: str, epoch: int | None = None):
        import promptdiff.datasets  # noqa: F401  (registers the datasets a config may name)
        import promptdiff.trainers  # noqa: F401  (registers the trainers)
        from promptdiff.host import TRAINER_REGISTRY

        self.run_dir = run_dir
        self.cfg = run_config(run_dir)
        self.cfg.defrost()
        self.cfg.OUTPUT_DIR = ""  # prediction writes nothing
        self.cfg.freeze()
        self.epoch = checkpoint_epoch(run_dir) if epoch is None else epoch
        self.trainer_class = TRAINER_REGISTRY.get(self.cfg.TRAINER.NAME)
        self._trainer = None
        self._classnames: list[str] = []
        self._transform = None

    def trainer_for(self, classnames: list[str]):
        """The run's trainer built for these class names (rebuilt when they change)."""
        if self._trainer is not None and classnames == self._classnames:
            return self._trainer
        base = self.trainer_class

        class ForClassNames(base):
            # no dataset: only the class names are needed to build the model
            def build_data_loader(self) -> None:
                self.dm = SimpleNamespace(dataset=SimpleNamespace(classnames=list(classnames)))
                self.lab2cname = dict(enumerate(classnames))
                self.num_classes = len(classnames)
                self.num_source_domains = 1
                self.train_loader_x = self.train_loader_u = None
                self.val_loader = self.test_loader = None

            def load_init_weights(self, path: str) -> None:
                pass  # the run's own checkpoint replaces MODEL.INIT_WEIGHTS' tensors below

        trainer = ForClassNames(self.cfg)
        trainer.load_model(self.run_dir, epoch=self.epoch)
        self._trainer, self._classnames = trainer, list(classnames)
        return trainer

    @torch.no_grad()
    def predict(self, images: Sequence[ImageLike], classnames: Sequence[str]) -> torch.Tensor:
        """Class probabilities [N, C] of each image among classnames (softmax of the logits)."""
        from promptdiff.engine.data import build_transform
        from promptdiff.engine.utils import progress

        classnames = [str(c).strip() for c in classnames]
        if not classnames or not all(classnames):
            raise ValueError(
                "The class-name list is empty or has an empty name; give one name per class."
            )
        images = list(images)
        if not images:
            raise ValueError("No images to classify; give at least one image.")
        trainer = self.trainer_for(classnames)
        if self._transform is None:
            self._transform = build_transform(self.cfg, is_train=False)
        trainer.set_model_mode("eval")
        trainer.before_test("test")  # as an evaluation: fresh class features and noise
        size = max(int(self.cfg.DATALOADER.TEST.BATCH_SIZE), 1)
        probs = []
        for start in progress(range(0, len(images), size), desc="Predict"):
            batch = torch.stack(
                [self._transform(open_image(im)) for im in images[start : start + size]]
            )
            logits = trainer.model_inference(batch.to(trainer.device)).float()
            if not torch.isfinite(logits).all():
                # a NaN probability would pass for a prediction (and is not valid JSON)
                raise FloatingPointError(
                    f"The model of {self.run_dir} gives NaN or inf logits for images "
                    f"{start + 1}-{start + len(batch)}; its checkpoint or these images are "
                    f"broken: load another epoch or retrain."
                )
            probs.append(logits.softmax(dim=-1).cpu())
        return torch.cat(probs)


def load(run_dir: str, epoch: int | None = None) -> Predictor:
    """A trained run (train.py's --output-dir) as a Predictor; epoch defaults to the last saved."""
    return Predictor(run_dir, epoch)
