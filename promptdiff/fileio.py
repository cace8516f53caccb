"""Atomic file writes, the one helper every writer uses: checkpoints, results.json, the results
tables and figures, the tiny CLIP. Standard library only, so that the torch-free results library
(promptdiff.results) and its CLIs can use it without loading the engine."""

from __future__ import annotations

import errno
import os
import tempfile

# temporary files of atomic_write; a killed run leaves them, the next start removes them
TMP_PREFIX = ".tmp-"


class WriteError(RuntimeError):
    """An output file could not be written (full disk, read-only folder, permissions)."""

    def __init__(self, message: str, path: str = "", cause: OSError | None = None):
        super().__init__(message)
        self.path, self.cause = path, cause


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_failure(path: str, exc: OSError, kept: str = "") -> WriteError:
    """One sentence naming the path and the reason (ENOSPC, EACCES, EROFS ...) of a failed write."""
    code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    reason = f"{exc.strerror or exc}{', ' + code if code else ''}"
    folder = os.path.dirname(os.path.abspath(path))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free disk space for {folder}"
    elif exc.errno == errno.EIO:
        fix = f"check the disk holding {folder} (free space, quota, errors)"
    else:
        fix = f"make {folder} writable or choose another output folder"

    kept = f"; {kept}" if kept else ""
    return WriteError(
        f"Cannot write {path} ({reason}){kept}; {fix}, then run the same command again.", path, exc
    )


def atomic_write(path: str, write_fn, mode: str = "w") -> None:
    """Call write_fn(file) on a temporary file beside `path`, then rename it over `path`.

    The file gets the mode a plain open() would give (mkstemp's 0600 would lock labmates out),
    is flushed to disk before the rename, and an OSError becomes one WriteError naming `path`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.path.basename(path)}-", dir=directory)
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise write_failure(path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
