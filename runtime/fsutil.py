"""Atomic, interruption-safe file output.

Every artifact is written to a hidden temp file beside its destination and renamed into place
only when complete, so a crash, a full disk or Ctrl-C never leaves a half-written file under the
final name. Temp files still open when SIGINT/SIGTERM arrives are removed before exiting.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import Interrupted, OutputExistsError, ResourceError

_live_temps: set[Path] = set()
_lock = threading.Lock()
TEMP_PREFIX = ".edge-run-tmp-"


def _cleanup_temps() -> None:
    with _lock:
        for p in list(_live_temps):
            with contextlib.suppress(OSError):
                p.unlink()
            _live_temps.discard(p)


def _on_signal(signum: int, _frame: object) -> None:
    _cleanup_temps()
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}", "partial files were removed")


def install_signal_handlers() -> None:
    """Turn SIGINT/SIGTERM into :class:`Interrupted` after removing live temp files (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def check_destination(path: Path, force: bool) -> None:
    """Refuse to overwrite an existing file unless ``force``; make sure the folder is writable."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", "pass --force to overwrite it")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResourceError(f"cannot create output folder {parent}: {e.strerror}",
                            "choose a writable --out") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ResourceError(f"output folder {parent} is not writable", "choose a writable --out")


def os_error_to_resource(e: OSError, what: str) -> ResourceError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceError(f"disk full while writing {what}", "free some space or choose another --out")
    if e.errno == errno.EFBIG:
        return ResourceError(f"{what} is larger than the output file system or the file-size limit allows",
                             "choose an --out on a file system that takes large files (FAT32 stops at 4 GiB)")
    if e.errno is None and "written" in str(e):  # numpy's short write ("N requested and M written")
        return ResourceError(f"could not write all of {what}: the disk is full or the file is over a size limit",
                             "free some space or choose another --out")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ResourceError(f"cannot write {what}: {e.strerror}", "choose a writable --out")
    return ResourceError(f"cannot write {what}: {e.strerror or e}")


@contextlib.contextmanager
def atomic_path(dest: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; rename it onto ``dest`` if the block succeeds.

    Use when another library writes the file by path (GGUFWriter, llama_model_quantize, onnx.save).
    """
    dest = Path(dest)
    check_destination(dest, force)
    tmp = dest.with_name(f"{TEMP_PREFIX}{os.getpid()}-{dest.name}")
    with _lock:
        _live_temps.add(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise ResourceError(f"nothing was written for {dest.name}")
        os.replace(tmp, dest)
    except OSError as e:
        raise os_error_to_resource(e, dest.name) from e
    finally:
        with _lock:
            _live_temps.discard(tmp)
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(dest: Path, force: bool = False, mode: str = "wb") -> Iterator[BinaryIO]:
    with atomic_path(dest, force) as tmp, open(tmp, mode) as f:
        yield f  # type: ignore[misc]


def atomic_write_text(dest: Path, text: str, force: bool = False) -> None:
    with atomic_path(dest, force) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """edge-run's cache folder: $EDGE_RUN_CACHE, else $XDG_CACHE_HOME/edge-run, else ~/.cache/edge-run."""
    env = os.environ.get("EDGE_RUN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-run"
