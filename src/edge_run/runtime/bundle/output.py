"""Where a bundle may be written, and what `--force` may replace.

    --out names a new folder: not '.', '..' or '/'                         UsageError (2)
    --out (or OUT.tar.gz) is, is inside, or holds an input                 UsageError (2)
        inputs: the artifact (file or ONNX folder), its manifest, --models
    OUT / OUT.tar.gz exists                                                OutputExistsError (4)
        with --force only if it is a previous bundle: a folder whose every file is install.sh, SHA256SUMS or
        listed in its SHA256SUMS (an empty folder too), and a .tar.gz whose first entry is OUT's name
    the folder beside OUT cannot be written                                ResourceError (4)

Nothing here deletes anything: build.py replaces OUT only after these checks said it is a bundle.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from edge_run.core.errors import EdgeRunError, OutputExistsError, ResourceError, UsageError
from edge_run.core.fsutil import os_error_to_resource, read_regular_file
from edge_run.core.quoting import display_text, sha256sums_name

MAX_SUMS_BYTES = 4 << 20  # a bundle's SHA256SUMS lists a few dozen files
ALWAYS_IN_A_BUNDLE = frozenset({"install.sh", "SHA256SUMS"})  # the files SHA256SUMS does not list


def tarball_for(out: Path) -> Path:
    return out.with_name(out.name + ".tar.gz")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _shown(path: Path) -> str:
    return display_text(str(path))


def absolute_out(out: Path) -> Path:
    """``out`` as an absolute path; UsageError when it names no new folder ('.', '..', '/', "")."""
    if Path(out).name in ("", ".", ".."):
        raise UsageError(f"--out {display_text(str(out))!r} names no new folder",
                         "name the folder to write the bundle to, e.g. --out deploy/pi4")
    return Path(os.path.abspath(out))


def check_out(out: Path, inputs: Iterable[Path], force: bool) -> Path:
    """Refuse an ``out`` that would overwrite an input or anything but a previous bundle; return OUT.tar.gz."""
    tarball = tarball_for(out)
    for given in inputs:
        src = _real(given)
        for flag, path in (("--out", out), ("the tarball", tarball)):
            dest = _real(path)
            if dest == src:
                raise UsageError(f"{flag} {_shown(path)} is the input {_shown(given)}",
                                 "write the bundle to a new folder")
            if src in dest.parents:
                raise UsageError(f"{flag} {_shown(path)} is inside the input {_shown(given)}",
                                 "write the bundle outside the artifact and the --models folder")
            if dest in src.parents:
                raise UsageError(f"{flag} {_shown(path)} holds the input {_shown(given)}",
                                 "write the bundle to a new folder, not one that holds the artifact")
    for path, why_not in ((out, not_a_bundle(out)), (tarball, not_a_bundle_tarball(tarball, out.name))):
        if why_not == "":  # nothing there
            continue
        if why_not is not None:
            raise OutputExistsError(f"{_shown(path)} already exists and is not a bundle edge-run wrote ({why_not})",
                                    "choose another --out: --force only ever replaces a previous bundle")
        if not force:
            raise OutputExistsError(f"{_shown(path)} already exists", "pass --force to replace it")
    return tarball


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ResourceError(f"cannot look at {_shown(path)}: {e.strerror}", "choose another --out") from e


def not_a_bundle(folder: Path) -> str | None:
    """None if ``folder`` is a previous bundle (or an empty folder), "" if nothing is there, else why not."""
    st = _lstat(folder)
    if st is None:
        return ""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    try:
        if not os.listdir(folder):
            return None
        data = read_regular_file(folder / "SHA256SUMS", "SHA256SUMS", MAX_SUMS_BYTES)
    except (OSError, EdgeRunError):
        return "it has no readable SHA256SUMS"
    listed = ALWAYS_IN_A_BUNDLE | {sha256sums_name(line) for line in
                                   data.decode("utf-8", "surrogateescape").splitlines() if line.strip()}
    for root, dirs, files in os.walk(folder, onerror=None):
        for name in (*dirs, *files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                return f"it holds the symbolic link {display_text(rel)}"
            if name in files and rel not in listed:
                return f"it holds {display_text(rel)}, which its SHA256SUMS does not list"
    return None


def not_a_bundle_tarball(tarball: Path, folder_name: str) -> str | None:
    """None if ``tarball`` is a bundle's .tar.gz (its first entry is the bundle folder), "" if nothing is there,
    else why not. Reads one tar header, never the whole archive."""
    st = _lstat(tarball)
    if st is None:
        return ""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            first = tf.next()
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return "it is not a .tar.gz archive"
    if first is None or first.name.split("/", 1)[0] != folder_name:
        return f"it does not hold a folder {display_text(folder_name)}"
    return None


def check_writable(folder: Path) -> None:
    """ResourceError (4) now, before anything slow, when ``folder`` exists and cannot be written."""
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise ResourceError(f"cannot write into {_shown(folder)}", "choose an --out in a writable folder")


def make_work_dir(out: Path) -> Path:
    """The hidden ``.edge-run-bundle-PID-*`` folder beside ``out`` the bundle is staged in."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".edge-run-bundle-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise os_error_to_resource(e, f"the bundle {_shown(out)}") from e
        raise ResourceError(f"cannot write the bundle {_shown(out)}: {e.strerror or e}",
                            "choose an --out in a writable folder") from e
