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
    import logging

    try:
        from dassl.config import get_cfg_default
        from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
        from dassl.engine import TRAINER_REGISTRY, build_trainer
        from dassl.engine import TrainerX as _DasslTrainerX
        from dassl.optim import build_lr_scheduler, build_optimizer
        from dassl.utils import (
            collect_env_info,
            mkdir_if_missing,
            read_json,
            set_random_seed,
            write_json,
        )
        from dassl.utils import setup_logger as _dassl_setup_logger
    except ImportError as exc:
        raise ImportError(
            f"PROMPTDIFF_HOST=dassl but Dassl cannot be imported ({exc}); install Dassl.pytorch "
            f"or unset PROMPTDIFF_HOST to use the built-in engine."
        ) from exc
    import numpy as np

    from promptdiff.engine import trainer as _builtin
    from promptdiff.engine.checkpoint import (
        load_checkpoint,
    )  # never Dassl's unrestricted unpickling
    from promptdiff.engine.evaluator import macro_f1
    from promptdiff.engine.utils import setup_logger as _setup_project_logger

    # importing dassl imports its WILDS datasets, whose module calls logging.disable(WARNING) for
    # the whole process; undo that so the project's (and the user's) log lines are not swallowed
    logging.disable(logging.NOTSET)

    def setup_logger(output: str | None) -> None:
        """Dassl's stdout tee into OUTPUT_DIR/log.txt, with the project's logger printing into it."""
        _dassl_setup_logger(output)
        _setup_project_logger(None)

    def log(msg: str) -> None:
        """Dassl tees stdout into log.txt, so printing is logging."""
        print(msg)

    class TrainerX(_DasslTrainerX):
        """Dassl's TrainerX with the project's batch parsing, safe checkpoint loading (also of
        files without a val_result) and evaluation, which resets the sampling noise through
        before_test and writes results.json as the built-in engine does."""

        parse_batch_train = _builtin.TrainerX.parse_batch_train  # (img, label): no domain
        load_model = _builtin.TrainerBase.load_model
        filter_loaded_state_dict = _builtin.TrainerBase.filter_loaded_state_dict
        # what load_model and write_results use: strict loads, trainer and run checks
        load_state_strict = _builtin.TrainerBase.load_state_strict
        check_trainer = _builtin.SimpleTrainer.check_trainer
        accepts_checkpoint_of = _builtin.SimpleTrainer.accepts_checkpoint_of
        check_run_identity = _builtin.SimpleTrainer.check_run_identity
        # the function itself: bound to SimpleTrainer it would read SimpleTrainer's MRO
        config_namespaces = classmethod(_builtin.SimpleTrainer.config_namespaces.__func__)
        trained_epochs = _builtin.SimpleTrainer.trained_epochs
        evaluated_epoch = None
        before_test = _builtin.SimpleTrainer.before_test
        write_results = _builtin.SimpleTrainer.write_results

        def test(self, split: str | None = None) -> float:
            split = split or self.cfg.TEST.SPLIT
            if split != "val" or self.val_loader is None:
                split = "test"
            self.before_test(split)
            accuracy = super().test(split)
            ev = self.evaluator  # Dassl's Classification keeps the counts it printed
            results = {
                "accuracy": accuracy,
                "error": 100.0 - accuracy,
                "macro_f1": 100.0 * macro_f1(np.asarray(ev._y_true), np.asarray(ev._y_pred)),
                "total": ev._total,
                "correct": ev._correct,
            }
            self.write_results(results, split)
            return accuracy

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
