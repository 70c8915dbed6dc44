"""Atomic, interruption-safe file output.

Every artifact is written to a hidden temp file beside its destination and renamed into place
only when complete, so a crash, a full disk or Ctrl-C never leaves a half-written file under the
final name. Temp files still open when SIGINT/SIGTERM arrives are removed before exiting.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from edge_run.core.errors import EdgeRunError, InputError, Interrupted, OutputExistsError, ResourceError, UsageError

_live_temps: set[Path] = set()
_lock = threading.Lock()
TEMP_PREFIX = ".edge-run-tmp-"
# Every temp file or folder edge-run makes is named ".edge-run-[KIND-]PID-...", so the next writer into the
# folder can tell a dead process's leftovers (SIGKILL, the OOM killer, a power cut) from a live one's.
STALE_TEMP = re.compile(r"^\.edge-run-(?:[a-z]+-)?(\d+)-")
_held_folders: dict[str, tuple[int, int]] = {}  # resolved folder -> (fd holding its flock, depth)


def _cleanup_temps() -> None:
    with _lock:
        for p in list(_live_temps):
            with contextlib.suppress(OSError):
                p.unlink()
            _live_temps.discard(p)


def _on_signal(signum: int, _frame: object) -> None:
    writing = bool(_live_temps or _held_folders)  # only a command that was writing files has any to remove
    _cleanup_temps()
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}",
                      "partial files were removed" if writing else None)


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
    ensure_folder(path.parent)


def ensure_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResourceError(f"cannot create output folder {folder}: {e.strerror}",
                            "choose a writable --out") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ResourceError(f"output folder {folder} is not writable", "choose a writable --out")


def check_plain_name(name: str, what: str = "--name") -> str:
    """An artifact base name must stay inside --out: no folders, no '..', no hidden or empty names."""
    if (not isinstance(name, str) or not name.strip() or Path(name).name != name or "/" in name or "\\" in name
            or "\x00" in name or name.startswith(".")):
        raise UsageError(f"{what} {name!r} is not a plain file name",
                         "pass a name without '/', '..' or a leading '.', e.g. --name smollm2-135m")
    return name


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path) -> list[str]:
    """Delete temp files and folders in ``folder`` left by edge-run processes that no longer run; return their
    names. Temps of live processes (including this one) are kept."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = STALE_TEMP.match(entry.name)
        if not m or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
    return removed


@contextlib.contextmanager
def exclusive_folder(folder: Path) -> Iterator[Path]:
    """Hold an advisory lock on the output folder itself (flock on the directory: no lock file to leave behind)
    while writing into it, after removing dead processes' temps. A second edge-run writing into the same folder
    fails at once instead of racing on the exists-check; re-entrant within one process."""
    folder = Path(folder)
    ensure_folder(folder)
    key = str(folder.resolve())
    with _lock:
        held = _held_folders.get(key)
        if held is not None:
            _held_folders[key] = (held[0], held[1] + 1)
    if held is None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise ResourceError(f"another edge-run process is writing into {folder}",
                                "wait for it to finish or choose another --out") from e
        with _lock:
            _held_folders[key] = (fd, 1)
        remove_stale_temps(folder)
    try:
        yield folder
    finally:
        with _lock:
            fd, depth = _held_folders[key]
            if depth > 1:
                _held_folders[key] = (fd, depth - 1)
            else:
                del _held_folders[key]
                os.close(fd)  # releases the flock


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


def _publish(tmp: Path, dest: Path, force: bool) -> None:
    """Rename ``tmp`` onto ``dest``; without ``force`` only if ``dest`` still does not exist (a hard link fails
    when the name is taken, closing the window between the exists-check and the rename)."""
    if force:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)
    except FileExistsError as e:
        raise OutputExistsError(f"{dest} already exists", "pass --force to overwrite it") from e
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if dest.exists():  # a file system without hard links (FAT): the best we can do
            raise OutputExistsError(f"{dest} already exists", "pass --force to overwrite it") from e
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


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
        _publish(tmp, dest, force)
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


def write_cache_text(dest: Path, text: str) -> bool:
    """Replace a cache file; False (nothing raised) when the cache folder is read-only or full: a cache is an
    optimisation, and commands that write nothing else must work without one."""
    try:
        atomic_write_text(dest, text, force=True)
    except (OSError, ResourceError):
        return False
    return True


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


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_regular_file(path: Path, what: str, max_bytes: int, error: type[EdgeRunError] = InputError,
                      missing_hint: str = "pass an existing file") -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``; ``error`` otherwise. Never opens a
    FIFO (it would block), a device (/dev/zero never ends) or a folder, and never reads more than the cap."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise error(f"{what} {path} does not exist", missing_hint) from e
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}", "check the path and its permissions") from e
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is {_kind(st.st_mode)}", "pass a regular file")
    too_big = error(f"{what} {path} is larger than {max_bytes // 2**20} MiB",
                    f"pass a file of at most {max_bytes // 2**20} MiB")
    if st.st_size > max_bytes:
        raise too_big
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}", "check the file's permissions") from e
    if len(data) > max_bytes:  # it grew after the stat
        raise too_big
    return data


def is_regular_or_folder(path: Path) -> str | None:
    """None for a regular file or a folder (following symlinks), else what ``path`` is ("a FIFO", ...);
    FileNotFoundError when it does not exist."""
    mode = os.stat(path).st_mode
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else _kind(mode)

