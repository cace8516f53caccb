"""The one place trainers and datasets take the Dassl API from.

The built-in engine (promptdiff.engine) is the default. Set PROMPTDIFF_HOST=dassl (or pass
`--host dassl` to train.py, which sets it) to run on an installed real Dassl instead; trainers
and datasets use only names that both provide. Choose the host before importing trainers.
"""

from __future__ import annotations

import os

HOST = os.environ.get("PROMPTDIFF_HOST", "builtin").strip().lower() or "builtin"

if HOST == "builtin":
    from promptdiff.engine import (
        DATASET_REGISTRY,
        TRAINER_REGISTRY,
        DatasetBase,
        Datum,
        TrainerX,
        build_lr_scheduler,
        build_optimizer,
        build_trainer,
        collect_env_info,
        get_cfg_default,
        load_checkpoint,
        mkdir_if_missing,
        read_json,
        set_random_seed,
        setup_logger,
        write_json,
    )
    from promptdiff.engine import logger as _logger

    def log(msg: str) -> None:
        """Print to stdout and OUTPUT_DIR/log.txt."""
        _logger.info(msg)

elif HOST == "dassl":
    try:
        from dassl.config import get_cfg_default
        from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
        from dassl.engine import TRAINER_REGISTRY, TrainerX, build_trainer
        from dassl.optim import build_lr_scheduler, build_optimizer
        from dassl.utils import (
            collect_env_info,
            load_checkpoint,
            mkdir_if_missing,
            read_json,
            set_random_seed,
            setup_logger,
            write_json,
        )
    except ImportError as exc:
        raise ImportError(
            f"PROMPTDIFF_HOST=dassl but Dassl cannot be imported ({exc}); install Dassl.pytorch "
            f"or unset PROMPTDIFF_HOST to use the built-in engine."
        ) from exc

    def log(msg: str) -> None:
        """Dassl tees stdout into log.txt, so printing is logging."""
        print(msg)

else:
    raise ValueError(f"PROMPTDIFF_HOST={HOST!r} is unknown; use 'builtin' (default) or 'dassl'.")

__all__ = [
    "DATASET_REGISTRY",
    "DatasetBase",
    "Datum",
    "HOST",
    "TRAINER_REGISTRY",
    "TrainerX",
    "build_lr_scheduler",
    "build_optimizer",
    "build_trainer",
    "collect_env_info",
    "get_cfg_default",
    "load_checkpoint",
    "log",
    "mkdir_if_missing",
    "read_json",
    "set_random_seed",
    "setup_logger",
    "write_json",
]
