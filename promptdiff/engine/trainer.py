"""TrainerBase -> SimpleTrainer -> TrainerX: Dassl's template-method training loop."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import time
from collections import OrderedDict

import torch
from torch import nn

from promptdiff.engine import distributed as ddp
from promptdiff.engine.checkpoint import (
    MANIFEST,
    last_checkpoint_name,
    load_checkpoint,
    read_manifest,
    resume_from_checkpoint,
    rng_state,
    save_checkpoint,
    test_hook,
    write_manifest,
    write_record,
)
from promptdiff.engine.config import get_cfg_default
from promptdiff.engine.data import DataManager
from promptdiff.engine.evaluator import build_evaluator
from promptdiff.engine.runinfo import (
    differences,
    git_commit,
    package_versions,
    run_record,
    summarize,
)
from promptdiff.engine.utils import (
    AverageMeter,
    MetricMeter,
    WriteError,
    logger,
    progress,
    write_failure,
    write_json,
)
from promptdiff.results.layout import results_file
from promptdiff.results.record import make_record


def _few(keys: list[str], limit: int = 3) -> str:
    """The first few names and the count."""
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def _unit_order(unit: str) -> tuple:
    tail = unit.rsplit("-", 1)[-1]
    return (0, int(tail)) if tail.isdigit() else (1, unit)


class TrainerBase:
    """Model registry, checkpointing and the epoch loop; subclasses fill in the hooks."""

    def __init__(self):
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._optims: OrderedDict = OrderedDict()
        self._scheds: OrderedDict = OrderedDict()
        self._writer = None

    def register_model(self, name: str = "model", model=None, optim=None, sched=None) -> None:
        if self.__dict__.get("_models") is None:
            raise AttributeError("Call super().__init__() before register_model().")
        if name in self._models:
            raise KeyError(f"A model named {name!r} is already registered.")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None) -> list[str]:
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = [names] if isinstance(names, str) else names
        for name in names:
            if name not in names_real:
                raise KeyError(f"No model named {name!r}; registered: {names_real}.")
        return names

    def save_model(
        self,
        epoch: int,
        directory: str,
        is_best=False,
        val_result=None,
        model_name="",
        keep: bool = True,
    ) -> None:
        """Save one checkpoint unit: every model's file of this epoch, then the manifest naming
        them, last. A unit saved with keep=False (the per-epoch crash insurance) is deleted once
        a newer unit is complete. Under torchrun only rank 0 writes."""
        if not ddp.is_main_process():
            return
        unit = model_name or f"model.pth.tar-{epoch + 1}"
        names = self.get_model_names()
        meta = self.checkpoint_meta()
        manifest = read_manifest(directory) or {"format": 1, "last": None, "units": {}}
        if manifest["units"].pop(unit, None) is not None:
            # its files are overwritten below: the unit is incomplete until the manifest names it
            write_manifest(directory, manifest)
        written, stale = [], []
        try:
            for name in names:
                model = self._models[name]
                optim, sched = self._optims[name], self._scheds[name]
                state = {
                    "state_dict": model.state_dict(),
                    "epoch": epoch + 1,
                    "optimizer": optim.state_dict() if optim is not None else None,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "val_result": val_result,
                    # resuming restores the RNGs, so an interrupted run ends where an
                    # uninterrupted one would (Dassl does not save them)
                    "rng_state": rng_state(),
                    **meta,
                }
                path = os.path.join(directory, name)
                written.append(save_checkpoint(state, path, is_best, model_name=unit, record=False))
                test_hook(f"saved:{name}:{epoch + 1}")
            manifest.update(meta)
            manifest["units"][unit] = {
                "epoch": epoch + 1,
                "models": names,
                "keep": keep,
                "val_result": val_result,
            }
            if not model_name:
                previous, manifest["last"] = manifest["last"], unit
                if previous and previous != unit and not manifest["units"][previous]["keep"]:
                    del manifest["units"][previous]
                    stale.append(previous)
            # files of dropped units are deleted after the manifest stops naming them; a kill in
            # between leaves them listed here for the next save or resume to delete
            stale = [u for u in manifest.get("pruned", []) if u != unit] + stale
            manifest["pruned"] = stale
            write_manifest(directory, manifest)
        except WriteError as exc:
            for path in written:
                with contextlib.suppress(OSError):
                    os.remove(path)
            last = manifest.get("last")
            kept = (
                f"the last complete checkpoint ({last} in {directory}) is kept"
                if last
                else "no earlier checkpoint exists"
            )
            raise write_failure(exc.path, exc.cause, kept) from exc
        test_hook(f"unit:{epoch + 1}")
        for name in names:
            if not model_name:
                write_record(os.path.join(directory, name), unit)
        self.delete_units(directory, stale)

    def saved_epochs(self, directory: str) -> set[int]:
        """The epochs of the model.pth.tar-<epoch> files in the models' folders."""
        epochs = set()
        for name in self.get_model_names():
            folder = os.path.join(directory, name)
            for fname in os.listdir(folder) if os.path.isdir(folder) else []:
                tail = fname.removeprefix("model.pth.tar-")
                if tail != fname and tail.isdigit():
                    epochs.add(int(tail))
        return epochs

    def delete_units(self, directory: str, units: list[str]) -> None:
        """Delete the files of checkpoint units the manifest no longer names."""
        for name in self.get_model_names():
            for unit in units:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(directory, name, unit))

    def checkpoint_meta(self) -> dict:
        """What every checkpoint and the manifest record about the run (trainer, config)."""
        return {}

    def resume_model_if_exist(self, directory: str) -> int:
        """Restore the last complete checkpoint unit in `directory`; return the next epoch."""
        names = self.get_model_names()
        manifest = read_manifest(directory)
        if manifest is not None:
            unit = manifest.get("last")
            if not unit:
                logger.info("No checkpoint found, train from scratch")
                return 0
            self.check_run_identity(manifest, os.path.join(directory, MANIFEST), evaluating=False)
            saved = manifest["units"][unit]["models"]
            if sorted(saved) != sorted(names):
                raise RuntimeError(
                    f"The checkpoint in {directory} holds the models {saved}, this trainer has "
                    f"{names}; resume it with the trainer that wrote it or use another output folder."
                )
            # what an interrupted save left: files of dropped units, and of a newer unit that
            # never became complete (the resumed run writes that epoch again)
            last_epoch = manifest["units"][unit]["epoch"]
            if ddp.is_main_process():
                newer = [
                    f"model.pth.tar-{e}"
                    for e in self.saved_epochs(directory)
                    if e > last_epoch and f"model.pth.tar-{e}" not in manifest["units"]
                ]
                self.delete_units(directory, manifest.get("pruned", []) + newer)
        else:  # written before checkpoint manifests: the per-model records must agree
            records = {n: last_checkpoint_name(os.path.join(directory, n)) for n in names}
            if not all(records.values()):
                logger.info("No checkpoint found, train from scratch")
                return 0
            if len(set(records.values())) > 1:
                raise RuntimeError(
                    f"The models in {directory} record checkpoints of different epochs "
                    f"({records}); an interrupted save left them: delete the newer files or the "
                    f"folder and train again."
                )
            unit = next(iter(records.values()))
        logger.info(f"Found checkpoint at {directory} (will resume training)")
        # a unit whose files were damaged after it was complete gives way to the previous one
        units = [unit]
        if manifest is not None:
            older = [u for u in manifest["units"] if u != unit and u.startswith("model.pth.tar-")]
            units += sorted(older, key=_unit_order, reverse=True)
        for unit in units:
            try:
                for name in names:
                    start_epoch = resume_from_checkpoint(
                        os.path.join(directory, name),
                        self._models[name],
                        self._optims[name],
                        self._scheds[name],
                        fname=unit,
                    )
                break
            except (FileNotFoundError, RuntimeError, FloatingPointError) as exc:
                if unit == units[-1]:
                    raise
                logger.info(f"Cannot resume from {unit} ({exc}); trying the previous complete one")
        self.resumed_manifest = manifest or {}
        logger.info(
            f"Resumed from the checkpoint of epoch {start_epoch} ({unit} of {', '.join(names)} "
            f"in {directory}); training continues at epoch {start_epoch + 1}"
        )
        return start_epoch

    def check_run_identity(self, saved: dict, source: str, evaluating: bool) -> None:
        """Hook: refuse a checkpoint whose run-defining options differ from this run's."""

    def load_model(self, directory: str, epoch: int | None = None, check_run: bool = False) -> None:
        """Load each registered model from directory/<name>/model.pth.tar-<epoch> (or model-best),
        strictly: every tensor must fit, and all models must come from one complete save.
        check_run (train.py --eval-only) also refuses a model trained with other options."""
        if not directory:
            logger.info("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        manifest = read_manifest(directory)
        if manifest is not None and model_file not in manifest["units"]:
            complete = ", ".join(sorted(manifest["units"], key=_unit_order)) or "none"
            raise FileNotFoundError(
                f"{directory} holds no complete checkpoint {model_file} (complete ones: "
                f"{complete}); pass --load-epoch of a complete one."
            )
        epochs, checked = {}, False
        for name in self.get_model_names():
            fpath = os.path.join(directory, name, model_file)
            ckpt = load_checkpoint(fpath)
            self.check_trainer(ckpt, fpath)
            if check_run and not checked and "run" in ckpt:
                self.check_run_identity(ckpt, fpath, evaluating=True)
                checked = True
            state_dict = self.filter_loaded_state_dict(name, ckpt["state_dict"])
            logger.info(
                f"Load {fpath} to {name} (epoch={ckpt['epoch']}, val_result={ckpt.get('val_result')})"
            )
            self.load_state_strict(name, state_dict, fpath)
            epochs[name] = ckpt["epoch"]
        if len(set(epochs.values())) > 1:
            raise RuntimeError(
                f"The {model_file} files in {directory} come from different epochs ({epochs}); "
                f"an interrupted save left them: evaluate another epoch or retrain."
            )
        self.evaluated_epoch = next(iter(epochs.values()), None)

    def filter_loaded_state_dict(self, name: str, state_dict: dict) -> dict:
        """Hook to drop entries (e.g. frozen token buffers) before load_model applies a checkpoint."""
        return state_dict

    def check_trainer(self, ckpt: dict, fpath: str) -> None:
        """Hook: refuse a checkpoint another trainer saved."""

    def load_state_strict(self, name: str, state_dict: dict, fpath: str) -> None:
        """Apply a checkpoint's tensors to a model; missing, unexpected or mis-shaped ones are one
        error naming a few of them and the count."""
        model = self._models[name]
        expected = self.filter_loaded_state_dict(name, model.state_dict())
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        shapes = [
            f"{k} {tuple(v.shape)} (model: {tuple(expected[k].shape)})"
            for k, v in state_dict.items()
            if k in expected and hasattr(v, "shape") and tuple(v.shape) != tuple(expected[k].shape)
        ]
        problems = [
            f"{what} {_few(keys)}"
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", shapes),
            )
            if keys
        ]
        if problems:
            raise RuntimeError(
                f"Checkpoint {fpath} does not fit this run's {name}: {'; '.join(problems)}; it was "
                f"saved by another trainer or with other model options (e.g. N_CTX, depth)."
            )
        model.load_state_dict(state_dict, strict=False)

    def set_model_mode(self, mode: str = "train", names=None) -> None:
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            where = ""
            if hasattr(self, "batch_idx"):
                where = (
                    f" at epoch {self.epoch + 1}/{self.max_epoch}, batch {self.batch_idx + 1}/"
                    f"{self.num_batches}; training stopped and the last complete checkpoint is kept"
                )
            raise FloatingPointError(f"Loss is infinite or NaN{where}.")

    def init_writer(self, log_dir: str) -> None:
        if self._writer is None and ddp.is_main_process():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                logger.info("tensorboard is not installed; scalars are not written")
                return
            logger.info(f"Initialize tensorboard (log_dir={log_dir})")
            self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag: str, scalar_value, global_step=None) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def train(self, start_epoch: int, max_epoch: int) -> None:
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for epoch in range(self.start_epoch, self.max_epoch):
            self.epoch = epoch
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError

    def model_zero_grad(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None) -> None:
        self.sync_ranks(names)
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names=None) -> None:
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    def sync_ranks(self, names=None) -> None:
        """Under torchrun, before a step: average the gradients the named optimisers will apply,
        and give every rank rank 0's checkpointed buffers (e.g. the denoiser's target statistics,
        which each rank's forward updated from its own shard)."""
        if not ddp.is_distributed():
            return
        names = self.get_model_names(names)
        optims = [self._optims[n] for n in names if self._optims[n] is not None]
        ddp.all_reduce_grads(p for o in optims for g in o.param_groups for p in g["params"])
        for name in names:
            model = self._models[name]
            # only what a checkpoint keeps: frozen buffers (class-token embeddings) never change
            kept = {t.data_ptr() for t in model.state_dict().values()}
            ddp.broadcast_tensors([b for b in model.buffers() if b.data_ptr() in kept])


# Dassl keys this engine accepts (configs written for Dassl carry them) but does not implement:
# domain adaptation / semi-supervised data, the classifier head, staged learning rates
UNIMPLEMENTED_KEYS = (
    "INPUT.NO_TRANSFORM",
    "DATASET.SOURCE_DOMAINS",
    "DATASET.TARGET_DOMAINS",
    "DATASET.NUM_LABELED",
    "DATASET.VAL_PERCENT",
    "DATALOADER.K_TRANSFORMS",
    "DATALOADER.RETURN_IMG0",
    "DATALOADER.TRAIN_X.N_DOMAIN",
    "DATALOADER.TRAIN_X.N_INS",
    "MODEL.BACKBONE.PRETRAINED",
    "MODEL.HEAD.NAME",
    "MODEL.HEAD.HIDDEN_LAYERS",
    "MODEL.HEAD.ACTIVATION",
    "MODEL.HEAD.BN",
    "MODEL.HEAD.DROPOUT",
    "OPTIM.STAGED_LR",
    "OPTIM.NEW_LAYERS",
    "OPTIM.BASE_LR_MULT",
    "TRAIN.COUNT_ITER",
)


def _cfg_value(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def check_implemented(cfg) -> None:
    """Refuse a non-default value of an UNIMPLEMENTED_KEYS key, which would silently run unlike Dassl."""
    defaults = get_cfg_default()
    for key in UNIMPLEMENTED_KEYS:
        value, default = _cfg_value(cfg, key), _cfg_value(defaults, key)
        # yacs turns yaml lists into tuples or keeps lists: compare the items
        same = (
            list(value) == list(default) if isinstance(default, (list, tuple)) else value == default
        )
        if not same:
            raise ValueError(
                f"{key} is {value!r}, but this engine does not implement {key}; set it back to "
                f"{default!r} or run with --host dassl for it."
            )


TEST_SPLITS = ("val", "test")
FINAL_MODELS = ("last_step", "best_val")


def check_test_keys(cfg, has_val: bool = True) -> None:
    """Refuse a TEST.SPLIT or TEST.FINAL_MODEL the loop would silently read as another value."""
    for key, value, allowed in (
        ("TEST.SPLIT", cfg.TEST.SPLIT, TEST_SPLITS),
        ("TEST.FINAL_MODEL", cfg.TEST.FINAL_MODEL, FINAL_MODELS),
    ):
        if value not in allowed:
            raise ValueError(f"{key} {value!r} is unknown; use one of {', '.join(allowed)}.")
    needs_val = [
        k
        for k, v in (("TEST.SPLIT", "val"), ("TEST.FINAL_MODEL", "best_val"))
        if _cfg_value(cfg, k) == v
    ]
    if needs_val and not has_val:
        raise ValueError(
            f"{needs_val[0]} {_cfg_value(cfg, needs_val[0])} needs validation images, but "
            f"dataset {cfg.DATASET.NAME} has none here; use TEST.SPLIT test and TEST.FINAL_MODEL "
            f"last_step."
        )


class SimpleTrainer(TrainerBase):
    """Builds data, model and evaluator from cfg; trains, checkpoints and tests."""

    def __init__(self, cfg):
        super().__init__()
        check_implemented(cfg)
        self.check_cfg(cfg)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.build_data_loader()
        # a trainer built without data (promptdiff.load) never evaluates a split
        check_test_keys(cfg, has_val=self.val_loader is not None or self.test_loader is None)
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -float("inf")
        self.evaluated_epoch = None  # the epoch of the model test() evaluates (results.json)
        self.norm0: dict[str, float] = {}

    def check_cfg(self, cfg):
        pass

    def build_data_loader(self) -> None:
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self):
        raise NotImplementedError

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self) -> None:
        directory = self.cfg.RESUME or self.output_dir
        self.resumed_manifest = {}
        self.start_epoch = self.resume_model_if_exist(directory)
        ddp.broadcast_modules(self._models.values())
        self.evaluated_epoch = self.start_epoch or None
        saved = self.resumed_manifest
        self.norm0 = saved.get("param_norm0") or self.trainable_norms()
        best = saved.get("units", {}).get("model-best.pth.tar")
        if best and best.get("val_result") is not None:
            self.best_result = best["val_result"]
        self.init_writer(os.path.join(self.output_dir, "tensorboard"))
        self.time_start = time.time()

    def after_train(self) -> None:
        logger.info("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                logger.info("Deploy the model with the best val performance")
                ddp.barrier()  # rank 0 may still be writing model-best
                self.load_model(self.output_dir)
            else:
                logger.info("Deploy the last-epoch model")
            self.test()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        logger.info(f"Elapsed: {elapsed}")
        self.close_writer()

    def after_epoch(self) -> None:
        self.check_divergence()
        self.evaluated_epoch = self.epoch + 1
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST and self.cfg.TEST.FINAL_MODEL == "best_val"
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = freq > 0 and (self.epoch + 1) % freq == 0
        if do_test:
            curr_result = self.test(split="val")
            is_best = curr_result > self.best_result
            if is_best:
                self.best_result = curr_result
                self.save_model(
                    self.epoch,
                    self.output_dir,
                    val_result=curr_result,
                    model_name="model-best.pth.tar",
                )
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)
        elif freq <= 0:
            # crash insurance: every epoch, deleted once the next one is saved
            self.save_model(self.epoch, self.output_dir, keep=False)

    # Prompts live at the scale of token embeddings; a learning rate that multiplies their norm
    # by a thousand has left that scale for good (CLIP's normalised features keep the loss
    # finite, so only the tensors show it).
    DIVERGENCE_GROWTH = 1e3

    def trainable_norms(self) -> dict[str, float]:
        """L2 norm of each registered model's trainable tensors."""
        norms = {}
        for name, model in self._models.items():
            params = [p.detach().float() for p in model.parameters() if p.requires_grad]
            norms[name] = float(torch.sqrt(sum((p * p).sum() for p in params))) if params else 0.0
        return norms

    def check_divergence(self) -> None:
        """Stop (before saving) when trainable tensors are non-finite or grew DIVERGENCE_GROWTH-fold."""
        for name, norm in self.trainable_norms().items():
            start = self.norm0.get(name, 0.0)
            if math.isfinite(norm) and not (start > 0 and norm > self.DIVERGENCE_GROWTH * start):
                continue
            raise FloatingPointError(
                f"Training diverged at epoch {self.epoch + 1}/{self.max_epoch}: the norm of "
                f"{name}'s trainable tensors went from {start:.3g} to {norm:.3g} (limit: "
                f"{self.DIVERGENCE_GROWTH:g}x); lower the learning rate (OPTIM.LR is "
                f"{self.cfg.OPTIM.LR:g}); the last complete checkpoint in {self.output_dir} is kept."
            )

    def checkpoint_meta(self) -> dict:
        return {
            "trainer": self.cfg.TRAINER.NAME,
            "run": run_record(self.cfg),
            "clip_weights": self.weights_identity(),
            "param_norm0": self.norm0 or None,
        }

    @classmethod
    def config_namespaces(cls) -> tuple[str, ...] | None:
        """The TRAINER.<NS> blocks this trainer reads, which run identity compares: the CFG_KEY
        and CFG_ALSO_READS each class of its MRO sets itself (tests/test_run_identity_namespaces.py
        records the reads); None, all blocks, for a trainer that names none."""
        names: list[str] = []
        for klass in cls.__mro__:
            own = vars(klass)
            for name in [own.get("CFG_KEY", ""), *own.get("CFG_ALSO_READS", ())]:
                if name and name not in names:
                    names.append(name)
        return tuple(names) or None

    def weights_identity(self) -> dict | None:
        """{path, size, sha256} of the pretrained weights the model is built on (None: none)."""
        return None

    def accepts_checkpoint_of(self, trainer: str) -> bool:
        """Whether this trainer's models load the files another trainer saved."""
        return trainer == self.cfg.TRAINER.NAME

    def check_trainer(self, ckpt: dict, fpath: str) -> None:
        saved = ckpt.get("trainer")  # absent in upstream Dassl checkpoints
        if saved and not self.accepts_checkpoint_of(saved):
            raise RuntimeError(
                f"Checkpoint {fpath} was saved by trainer {saved}, not {self.cfg.TRAINER.NAME}; "
                f"evaluate it with --trainer {saved}."
            )

    def check_run_identity(self, saved: dict, source: str, evaluating: bool) -> None:
        run = saved.get("run") or {}
        if not run.get("config"):
            return  # written before run fingerprints existed: nothing to compare
        diffs = differences(
            run["config"],
            run_record(self.cfg)["config"],
            for_eval=evaluating,
            namespaces=self.config_namespaces(),
        )
        mine, theirs = self.weights_identity(), saved.get("clip_weights")
        if mine and theirs and mine["sha256"] != theirs["sha256"]:
            diffs.append(
                f"CLIP weights: {theirs['path']} (sha256 {theirs['sha256'][:12]}) -> "
                f"{mine['path']} (sha256 {mine['sha256'][:12]})"
            )
        if not diffs:
            return
        if evaluating:
            raise RuntimeError(
                f"Checkpoint {source} was trained with other options than this evaluation "
                f"({summarize(diffs)}); evaluate with the training options (only DATASET.* other "
                f"than NUM_SHOTS, PREC and test-time keys may differ)."
            )
        raise RuntimeError(
            f"Output folder {os.path.dirname(source)} holds a run with other options "
            f"({summarize(diffs)}); resume it with its options or choose another --output-dir."
        )

    @torch.no_grad()
    def test(self, split: str | None = None) -> float:
        """Evaluate on `split` (TEST.SPLIT by default), print the result block, write results.json."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split not in TEST_SPLITS or (split == "val" and self.val_loader is None):
            check_test_keys(self.cfg, has_val=self.val_loader is not None)
            raise ValueError(f"Cannot evaluate on {split!r}; evaluate on one of {TEST_SPLITS}.")
        data_loader = self.val_loader if split == "val" else self.test_loader
        logger.info(f"Evaluate on the *{split}* set")
        self.before_test(split)
        for batch in progress(data_loader, desc=f"Evaluate ({split})"):
            input, label = self.parse_batch_test(batch)
            self.evaluator.process(self.model_inference(input), label)
        if ddp.is_distributed():
            self.evaluator.gather(len(data_loader.dataset))
        results = self.evaluator.evaluate()
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        self.write_results(results, split)
        return results["accuracy"]

    def before_test(self, split: str) -> None:
        """Hook run once per evaluation, e.g. to encode the class prompts a single time."""

    def write_results(self, results: dict, split: str) -> None:
        if not ddp.is_main_process():
            return
        cfg = self.cfg
        run = run_record(cfg)
        record = make_record(
            results,
            split,
            trainer=cfg.TRAINER.NAME,
            dataset=cfg.DATASET.NAME,
            subsample_classes=cfg.DATASET.SUBSAMPLE_CLASSES,
            # what the data allowed (a class may hold fewer images than NUM_SHOTS asks for)
            num_shots=getattr(getattr(self, "dm", None), "num_shots", cfg.DATASET.NUM_SHOTS),
            seed=cfg.SEED,
            backbone=cfg.MODEL.BACKBONE.NAME,
            clip_weights=self.weights_identity(),
            epoch=self.evaluated_epoch
            if self.evaluated_epoch is not None
            else self.trained_epochs(),
            fingerprint=run["fingerprint"],
            run_config=run["config"],
            git_commit=git_commit(),
            versions=package_versions(),
        )
        write_json(record, os.path.join(self.output_dir, results_file(split)))

    def trained_epochs(self) -> int | None:
        """Epochs trained in this process (a host loop that does not track evaluated_epoch)."""
        return self.epoch + 1 if hasattr(self, "time_start") else None

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None) -> float:
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]

    def model_inference(self, input):
        return self.model(input)


class TrainerX(SimpleTrainer):
    """Trainer for labelled data: one pass over train_loader_x per epoch."""

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time, data_time = AverageMeter(), AverageMeter()
        ddp.begin_epoch(self.train_loader_x, self.epoch, self.cfg.SEED)
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        end = time.time()
        for batch_idx, batch in enumerate(self.train_loader_x):
            self.batch_idx = batch_idx
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            meet_freq = (self.batch_idx + 1) % print_freq == 0
            if meet_freq or self.num_batches < print_freq:
                nb_remain = self.num_batches - self.batch_idx - 1
                nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
                logger.info(
                    f"epoch [{self.epoch + 1}/{self.max_epoch}] "
                    f"batch [{self.batch_idx + 1}/{self.num_batches}] "
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) "
                    f"data {data_time.val:.3f} ({data_time.avg:.3f}) "
                    f"{losses} lr {self.get_current_lr():.4e} eta {eta}"
                )
            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.val, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)
