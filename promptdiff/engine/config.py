"""Dassl-compatible yacs defaults; unknown keys in a yaml file or on the command line are errors."""

from __future__ import annotations

import os
import sys

import yaml
from yacs.config import CfgNode as CN


class ConfigError(ValueError):
    """A config file or option names a key or value the project does not know."""


def get_cfg_default() -> CN:
    """Every key the CoOp-family configs use, with Dassl's defaults."""
    _C = CN()
    _C.VERSION = 1
    _C.OUTPUT_DIR = "./output"
    _C.RESUME = ""
    _C.SEED = -1
    _C.USE_CUDA = True
    _C.VERBOSE = True

    _C.INPUT = CN()
    _C.INPUT.SIZE = (224, 224)
    _C.INPUT.INTERPOLATION = "bilinear"
    _C.INPUT.TRANSFORMS = ()
    _C.INPUT.NO_TRANSFORM = False
    _C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
    _C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
    _C.INPUT.CROP_PADDING = 4
    _C.INPUT.RRCROP_SCALE = (0.08, 1.0)

    _C.DATASET = CN()
    _C.DATASET.ROOT = ""
    _C.DATASET.NAME = ""
    _C.DATASET.SOURCE_DOMAINS = ()
    _C.DATASET.TARGET_DOMAINS = ()
    _C.DATASET.NUM_LABELED = -1
    _C.DATASET.NUM_SHOTS = -1
    _C.DATASET.VAL_PERCENT = 0.1
    _C.DATASET.SUBSAMPLE_CLASSES = "all"
    # Image order inside a class folder before a split is generated or few-shot images are drawn:
    # "listdir" = the file system's raw order, as upstream (same seed, same picks as upstream on
    # the same disk); "sorted" = sorted names (the same picks on every machine).
    _C.DATASET.LIST_ORDER = "listdir"

    _C.DATALOADER = CN()
    _C.DATALOADER.NUM_WORKERS = 4
    _C.DATALOADER.K_TRANSFORMS = 1
    _C.DATALOADER.RETURN_IMG0 = False
    _C.DATALOADER.TRAIN_X = CN()
    _C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
    _C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
    _C.DATALOADER.TRAIN_X.N_DOMAIN = 0
    _C.DATALOADER.TRAIN_X.N_INS = 16
    _C.DATALOADER.TEST = CN()
    _C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
    _C.DATALOADER.TEST.BATCH_SIZE = 32

    _C.MODEL = CN()
    _C.MODEL.INIT_WEIGHTS = ""
    _C.MODEL.BACKBONE = CN()
    _C.MODEL.BACKBONE.NAME = ""
    _C.MODEL.BACKBONE.PRETRAINED = True
    # A local CLIP weights file (OpenAI JIT archive or state dict); wins over NAME's download.
    _C.MODEL.BACKBONE.PATH = ""
    _C.MODEL.HEAD = CN()
    _C.MODEL.HEAD.NAME = ""
    _C.MODEL.HEAD.HIDDEN_LAYERS = ()
    _C.MODEL.HEAD.ACTIVATION = "relu"
    _C.MODEL.HEAD.BN = True
    _C.MODEL.HEAD.DROPOUT = 0.0

    _C.OPTIM = CN()
    _C.OPTIM.NAME = "adam"
    _C.OPTIM.LR = 0.0003
    _C.OPTIM.WEIGHT_DECAY = 5e-4
    _C.OPTIM.MOMENTUM = 0.9
    _C.OPTIM.SGD_DAMPNING = 0
    _C.OPTIM.SGD_NESTEROV = False
    _C.OPTIM.RMSPROP_ALPHA = 0.99
    _C.OPTIM.ADAM_BETA1 = 0.9
    _C.OPTIM.ADAM_BETA2 = 0.999
    _C.OPTIM.STAGED_LR = False
    _C.OPTIM.NEW_LAYERS = ()
    _C.OPTIM.BASE_LR_MULT = 0.1
    _C.OPTIM.LR_SCHEDULER = "single_step"
    _C.OPTIM.STEPSIZE = (-1,)
    _C.OPTIM.GAMMA = 0.1
    _C.OPTIM.MAX_EPOCH = 10
    _C.OPTIM.WARMUP_EPOCH = -1
    _C.OPTIM.WARMUP_TYPE = "linear"
    _C.OPTIM.WARMUP_CONS_LR = 1e-5
    _C.OPTIM.WARMUP_MIN_LR = 1e-5
    _C.OPTIM.WARMUP_RECOUNT = True

    _C.TRAIN = CN()
    _C.TRAIN.CHECKPOINT_FREQ = 0
    _C.TRAIN.PRINT_FREQ = 10
    _C.TRAIN.COUNT_ITER = "train_x"

    _C.TEST = CN()
    _C.TEST.EVALUATOR = "Classification"
    _C.TEST.PER_CLASS_RESULT = False
    _C.TEST.COMPUTE_CMAT = False
    _C.TEST.NO_TEST = False
    _C.TEST.SPLIT = "test"
    _C.TEST.FINAL_MODEL = "last_step"

    _C.TRAINER = CN()
    _C.TRAINER.NAME = ""
    return _C


def _describe_key_error(exc: Exception) -> str:
    msg = str(exc).strip("'\"")
    return msg[0].lower() + msg[1:] if msg else "invalid key"


# a file may name the file it extends: `_BASE_: relative/path.yaml` is merged first
BASE_KEY = "_BASE_"
# old dotted key -> its new name; files and options that use the old name still work, with a warning
RENAMED_KEYS: dict[str, str] = {}


def rename_key(old: str, new: str) -> None:
    """Keep accepting `old` (a dotted key that moved) as a deprecated name of `new`."""
    RENAMED_KEYS[old] = new


def _renamed(key: str, where: str) -> str:
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    print(f"warning: {where}: {key} is deprecated; use {new}.", file=sys.stderr)
    return new


def _rename_old_keys(data: dict, path: str) -> None:
    """Move every deprecated key of a loaded file's mapping to its new place (in place)."""
    for old in RENAMED_KEYS:
        *parents, leaf = old.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        *parents, leaf = _renamed(old, f"Config file {path!r}").split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value


def _not_mappings(path: str) -> ConfigError:
    return ConfigError(
        f"Config file {path!r} must hold nested 'KEY: value' mappings (as in configs/); "
        f"it holds something else."
    )


def _load_yaml(path: str):
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist; check the path.")
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Config file {path!r} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
            f"give the YAML config file, saved as UTF-8."
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(
            f"Config file {path!r}{where} is not valid YAML ({problem}); fix the syntax there."
        ) from exc


def merge_file(cfg: CN, path: str, _chain: tuple[str, ...] = ()) -> None:
    """Merge a yaml file (after the file its `_BASE_` names, recursively); an unknown key or
    mistyped value is one ConfigError naming the file."""
    data = _load_yaml(path)
    if not isinstance(data, dict | None):
        raise _not_mappings(path)
    data = dict(data or {})
    base = data.pop(BASE_KEY, None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(
                f"Config file {path!r}: {BASE_KEY} must name one yaml file (a path relative to "
                f"this file); got {base!r}."
            )
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        chain = (*_chain, os.path.realpath(path))
        if os.path.realpath(base_path) in chain:
            raise ConfigError(
                f"Config file {path!r}: {BASE_KEY} {base!r} leads back to a file that is "
                f"already being merged (a cycle); point it at a file that does not extend this one."
            )
        if not os.path.isfile(base_path):
            raise ConfigError(
                f"Config file {path!r}: its {BASE_KEY} {base_path!r} does not exist; fix that path "
                f"(it is relative to the file naming it)."
            )
        merge_file(cfg, base_path, chain)
    _rename_old_keys(data, path)
    try:
        cfg.merge_from_other_cfg(CN(data))
    except (AttributeError, TypeError) as exc:
        raise _not_mappings(path) from exc
    except (KeyError, ValueError, AssertionError) as exc:
        raise ConfigError(
            f"Config file {path!r}: {_describe_key_error(exc)}; fix or remove that entry "
            f"(the known keys are in promptdiff/engine/config.py and the declare_keys calls in "
            f"trainers/)."
        ) from exc


def merge_opts(cfg: CN, opts: list) -> None:
    """Merge trailing KEY VALUE command-line options with the same error style as files."""
    if len(opts) % 2:
        raise ConfigError(f"Command-line options must come in KEY VALUE pairs (got {opts}).")
    opts = list(opts)
    for i in range(0, len(opts), 2):
        opts[i] = _renamed(str(opts[i]), "Command-line option")
        node = cfg
        for part in str(opts[i]).split("."):
            node = node.get(part) if isinstance(node, CN) else None
        # `TRAINER.PD.CE_WEIGHT 0` means 0.0; yacs would reject the int for a float key
        if (
            isinstance(node, float)
            and isinstance(opts[i + 1], str)
            and opts[i + 1].lstrip("-").isdigit()
        ):
            opts[i + 1] = opts[i + 1] + ".0"
        # a text key that also takes numbers (TRAINER.PD.OVERFIT_LR auto | 1e-3) keeps the text
        elif isinstance(node, str) and isinstance(opts[i + 1], str):
            try:
                float(opts[i + 1])
                opts[i + 1] = repr(opts[i + 1])
            except ValueError:
                pass
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as exc:
        raise ConfigError(
            f"Command-line option: {_describe_key_error(exc)}; fix or remove it."
        ) from exc
