"""String registries keyed by class name, as Dassl's."""

from __future__ import annotations

from promptdiff.engine.utils import logger


class Registry:
    """Maps a class's __name__ to the class; `register()` is used as a decorator."""

    def __init__(self, name: str):
        self._name = name
        self._obj_map: dict[str, type] = {}

    def _do_register(self, name: str, obj, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(f'An object named "{name}" was already registered in "{self._name}".')
        self._obj_map[name] = obj

    def register(self, obj=None, force: bool = False):
        if obj is None:

            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name: str):
        if name not in self._obj_map:
            raise KeyError(
                f"Unknown {self._name.lower()} {name!r}; registered: {', '.join(self.registered_names())}."
            )
        return self._obj_map[name]

    def registered_names(self) -> list[str]:
        return sorted(self._obj_map)

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map


TRAINER_REGISTRY = Registry("TRAINER")
DATASET_REGISTRY = Registry("DATASET")


def build_trainer(cfg):
    """Instantiate the trainer named by cfg.TRAINER.NAME."""
    if cfg.VERBOSE:
        logger.info(f"Loading trainer: {cfg.TRAINER.NAME}")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


def build_dataset(cfg):
    """Instantiate the dataset named by cfg.DATASET.NAME."""
    if cfg.VERBOSE:
        logger.info(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
