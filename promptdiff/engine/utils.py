"""Small runtime utilities: seeding, logging to OUTPUT_DIR/log.txt, atomic file writes."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import socket
import sys
import time

import numpy as np
import torch

# atomic writes live in promptdiff.fileio (torch-free, so the results library can use them)
from promptdiff.fileio import (  # noqa: F401  (re-exported for the engine and trainers)
    TMP_PREFIX,
    WriteError,
    atomic_write,
    current_umask,
    write_failure,
)

logger = logging.getLogger("promptdiff")
# --quiet: stdout gets warnings only and progress bars are off; log.txt stays complete
_quiet = False
# OUTPUT_DIR/<this> holds "PID HOST" of the run writing the folder
LOCK_NAME = ".promptdiff.lock"
# below this much free space a failed torch.save is taken for a full disk
LOW_DISK_BYTES = 64 << 20


def set_random_seed(seed: int) -> None:
    """Seed Python `random`, numpy and torch once, as Dassl does before building the dataset."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def mkdir_if_missing(dirname: str) -> None:
    os.makedirs(dirname, exist_ok=True)


def remove_stale_tmp(directory: str) -> list[str]:
    """Delete the temporary files a killed writer left in `directory` and its model folders.

    Only one level down, and not in a folder with its own lock: another run may be writing there.
    """
    if not os.path.isdir(directory):
        return []
    folders = [directory] + [
        path
        for path in (os.path.join(directory, d) for d in sorted(os.listdir(directory)))
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, LOCK_NAME))
    ]
    removed = []
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.startswith(TMP_PREFIX) and os.path.isfile(path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                    removed.append(path)
    return removed


def write_json(obj, path: str) -> None:
    """Write JSON atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=4, separators=(",", ": ")))


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def torch_save_atomic(obj, path: str) -> None:
    """torch.save through a temporary name so an interrupted save never leaves a broken file.

    torch's own writer reports a failed write (e.g. a full disk) as a RuntimeError ("enforce
    fail at inline_container.cc ... unexpected pos"); it becomes the OSError atomic_write turns
    into one sentence naming the path.
    """

    def save(f) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            folder = os.path.dirname(os.path.abspath(path))
            full = shutil.disk_usage(folder).free < LOW_DISK_BYTES
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OSError(
                errno.ENOSPC if full else errno.EIO,
                f"torch.save could not finish the file: {first}",
            ) from exc

    atomic_write(path, save, mode="wb")


class FolderInUse(RuntimeError):
    """Another live process writes the same output folder."""


def _lock_holder(path: str) -> tuple[int, str] | None:
    try:
        with open(path) as f:
            pid, host = f.read().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but unreaped child still answers os.kill; it holds nothing any more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def lock_output_dir(directory: str) -> str:
    """Claim `directory` for this process (a lock file holding 'PID HOST'); return the lock's path.

    A lock whose process is gone (killed run) is taken over; a live one is one FolderInUse error.
    """
    path = os.path.join(directory, LOCK_NAME)
    host = socket.gethostname()
    me = f"{os.getpid()} {host}\n"
    for _ in range(5):
        try:
            mkdir_if_missing(directory)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _lock_holder(path)
            mine = holder == (os.getpid(), host)
            if holder is not None and not mine and (holder[1] != host or _is_running(holder[0])):
                raise FolderInUse(
                    f"Output folder {directory} is in use by process {holder[0]} on {holder[1]} "
                    f"(lock file {path}); wait for that run to end or choose another output folder."
                ) from None
            atomic_write(path, lambda f: f.write(me))  # stale (dead process): take it over
            if _lock_holder(path) == (os.getpid(), host):
                return path
            continue
        except OSError as exc:
            raise write_failure(path, exc) from exc
        try:
            os.write(fd, me.encode())
            os.close(fd)
        except OSError as exc:
            # a full disk fails the write, not the create: an empty lock would name no holder
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(path)
            raise write_failure(path, exc, "nothing in the folder was changed") from exc
        return path
    raise FolderInUse(f"Output folder {directory} is being claimed by other runs ({path}); retry.")


def unlock_output_dir(path: str) -> None:
    """Remove a lock file lock_output_dir() returned, if this process still holds it."""
    if _lock_holder(path) == (os.getpid(), socket.gethostname()):
        with contextlib.suppress(OSError):
            os.remove(path)


class _LogFile(logging.FileHandler):
    """log.txt; a failed write (full disk) stops the run with one sentence instead of logging's
    own traceback on stderr and a log that silently ends."""

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            raise write_failure(
                self.baseFilename, exc, "the checkpoints saved so far are kept"
            ) from exc
        super().handleError(record)


def setup_logger(output: str | None, quiet: bool = False, append: bool = False) -> None:
    """Send the 'promptdiff' logger to stdout and to OUTPUT_DIR/log.txt; quiet keeps only
    warnings on stdout (and turns progress bars off).

    An existing log.txt is continued when `append` (a resumed run), else kept and a new
    log.txt-<time> is written, as Dassl does.
    """
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
    continued = os.path.exists(fpath) and append
    if os.path.exists(fpath) and not append:
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    mkdir_if_missing(os.path.dirname(os.path.abspath(fpath)))
    try:
        handler = _LogFile(fpath)
    except OSError as exc:
        raise write_failure(fpath, exc, "nothing in the folder was changed") from exc
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if continued:
        logger.info(
            f"===== {time.strftime('%Y-%m-%d %H:%M:%S')}: this log continues (run restarted) ====="
        )


def progress(iterable, desc: str = "", total: int | None = None):
    """A tqdm bar on stderr over iterable; off under --quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    disable = _quiet or not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, disable=disable, leave=False)


# what a command line reports as one `error:` line (bad input), not as a traceback
USER_ERRORS = (
    KeyError,
    ValueError,
    FileNotFoundError,
    PermissionError,
    RuntimeError,
    ImportError,
    FloatingPointError,  # a non-finite loss or a diverging run
)


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
