"""Small runtime utilities: seeding, logging to OUTPUT_DIR/log.txt, atomic file writes."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch

logger = logging.getLogger("promptdiff")
# --quiet: stdout gets warnings only and progress bars are off; log.txt stays complete
_quiet = False


def set_random_seed(seed: int) -> None:
    """Seed Python `random`, numpy and torch once, as Dassl does before building the dataset."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def mkdir_if_missing(dirname: str) -> None:
    os.makedirs(dirname, exist_ok=True)


def atomic_write(path: str, write_fn, mode: str = "w") -> None:
    """Call write_fn(file) on a temporary file beside `path`, then rename it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    mkdir_if_missing(directory)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(obj, path: str) -> None:
    """Write JSON atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=4, separators=(",", ": ")))


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def torch_save_atomic(obj, path: str) -> None:
    """torch.save through a temporary name so an interrupted save never leaves a broken file."""
    atomic_write(path, lambda f: torch.save(obj, f), mode="wb")


def setup_logger(output: str | None, quiet: bool = False) -> None:
    """Send the 'promptdiff' logger to stdout and to OUTPUT_DIR/log.txt (a new log.txt-<time> if
    taken); quiet keeps only warnings on stdout (and turns progress bars off)."""
    global _quiet
    _quiet = quiet
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(logging.Formatter("%(message)s"))
    stream.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.addHandler(stream)
    if not output:
        return
    fpath = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
    if os.path.exists(fpath):
        # Dassl keeps earlier logs: a second run in the same folder writes a timestamped log
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    mkdir_if_missing(os.path.dirname(os.path.abspath(fpath)))
    handler = logging.FileHandler(fpath)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)


def progress(iterable, desc: str = "", total: int | None = None):
    """A tqdm bar on stderr over iterable; off under --quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    disable = _quiet or not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, disable=disable, leave=False)


# what a command line reports as one `error:` line (bad input), not as a traceback
USER_ERRORS = (KeyError, ValueError, FileNotFoundError, PermissionError, RuntimeError, ImportError)


def report_error(exc: BaseException) -> int:
    """Print exc as one `error:` line on stderr and return exit code 1; PROMPTDIFF_DEBUG=1
    re-raises it for the traceback."""
    if os.environ.get("PROMPTDIFF_DEBUG"):
        raise exc
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if "Original Traceback" in msg:
        # a DataLoader worker's error carries the worker's traceback; its last line is the sentence
        msg = msg.strip().splitlines()[-1].partition(": ")[2] or msg
    print(f"error: {msg}", file=sys.stderr)
    return 1


def collect_env_info() -> str:
    """A short description of the software stack, logged at start-up."""
    import torchvision

    lines = [
        f"Python {sys.version.split()[0]}",
        f"PyTorch {torch.__version__} (CUDA available: {torch.cuda.is_available()})",
        f"torchvision {torchvision.__version__}",
    ]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    return "\n".join(lines)


def count_num_param(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class AverageMeter:
    """Running average of a scalar, printed as 'val (avg)'."""

    def __init__(self):
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count


class MetricMeter:
    """A dict of AverageMeters keyed by the names forward_backward returns."""

    def __init__(self, delimiter: str = " "):
        self.meters: dict[str, AverageMeter] = {}
        self.delimiter = delimiter

    def update(self, input_dict: dict) -> None:
        for k, v in input_dict.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters.setdefault(k, AverageMeter()).update(v)

    def __str__(self) -> str:
        return self.delimiter.join(f"{k} {m.val:.4f} ({m.avg:.4f})" for k, m in self.meters.items())
