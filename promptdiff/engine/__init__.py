"""The built-in Dassl-compatible engine: the same names and meanings, on current PyTorch."""

from promptdiff.engine.checkpoint import load_checkpoint, resume_from_checkpoint, save_checkpoint
from promptdiff.engine.config import ConfigError, get_cfg_default, merge_file, merge_opts
from promptdiff.engine.data import DataManager, DatasetBase, Datum, build_transform, read_image
from promptdiff.engine.evaluator import build_evaluator
from promptdiff.engine.optim import build_lr_scheduler, build_optimizer
from promptdiff.engine.registry import (
    DATASET_REGISTRY,
    TRAINER_REGISTRY,
    Registry,
    build_dataset,
    build_trainer,
)
from promptdiff.engine.trainer import SimpleTrainer, TrainerBase, TrainerX
from promptdiff.engine.utils import (
    collect_env_info,
    count_num_param,
    logger,
    mkdir_if_missing,
    read_json,
    set_random_seed,
    setup_logger,
    write_json,
)

__all__ = [
    "ConfigError",
    "DATASET_REGISTRY",
    "DataManager",
    "DatasetBase",
    "Datum",
    "Registry",
    "SimpleTrainer",
    "TRAINER_REGISTRY",
    "TrainerBase",
    "TrainerX",
    "build_dataset",
    "build_evaluator",
    "build_lr_scheduler",
    "build_optimizer",
    "build_trainer",
    "build_transform",
    "collect_env_info",
    "count_num_param",
    "get_cfg_default",
    "load_checkpoint",
    "logger",
    "merge_file",
    "merge_opts",
    "mkdir_if_missing",
    "read_image",
    "read_json",
    "resume_from_checkpoint",
    "save_checkpoint",
    "set_random_seed",
    "setup_logger",
    "write_json",
]
