"""The bundle's wheelhouse: edge-run's own wheel plus every runtime dependency as a manylinux aarch64 wheel.

    edge-run          `pip wheel --no-deps` of a copy of the source tree (nothing is written into the tree)
    dependencies      `pip download --only-binary :all: --platform manylinux_2_36_aarch64 ... manylinux2014_aarch64
                      --python-version X.Y --abi cpXY`: Requires-Dist of
                      edge-run (+ the `serve` extra) and of the cross-built llama-cpp-python, evaluated for the
                      device; llama-cpp-python itself is left out (PyPI has only its sdist; our wheel replaces it)
    pip               so install.sh can make a venv without ensurepip (python3-venv) and install offline

Downloads go through pip's own cache (a second bundle re-downloads nothing).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from edge_run.core.errors import InputError, ResourceError, UsageError
from edge_run.runtime.bundle.llama_wheel import run_group

MIN_PYTHON = (3, 11)  # pyproject.toml requires-python
# Raspberry Pi OS bookworm (glibc 2.36) is the oldest Pi OS with Python >= 3.11. pip does not widen an explicit
# --platform manylinux_2_X to older glibc versions (only manylinux2014 / 2010 aliases), so every tag is listed.
DEVICE_GLIBC_MAX = (2, 36)


def device_platforms() -> list[str]:
    return [f"manylinux_2_{minor}_aarch64" for minor in range(DEVICE_GLIBC_MAX[1], 16, -1)] + ["manylinux2014_aarch64"]

EXTRAS = ("serve",)
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE")  # plus the package folders (_package_folders)
NOT_FROM_PYPI = frozenset({"llama-cpp-python"})


def parse_python(version: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)", version.strip())
    if not m:
        raise UsageError(f"--python {version!r} is not a Python version", "pass MAJOR.MINOR, e.g. --python 3.13")
    parsed = (int(m.group(1)), int(m.group(2)))
    if parsed < MIN_PYTHON:
        raise InputError(f"no edge-run wheels for Python {version}: edge-run needs Python >= "
                         f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}",
                         "pass --python 3.13 (Raspberry Pi OS trixie) or 3.11 (bookworm)")
    return parsed


def source_root() -> Path:
    root = Path(__file__).resolve().parents[4]
    if not (root / "pyproject.toml").is_file():
        raise ResourceError("edge-run's source tree (pyproject.toml) is not beside this installation",
                            "run `edge-run bundle` from a source checkout installed with pip install -e .")
    return root


def _pip(args: list[str], what: str) -> subprocess.CompletedProcess[str]:
    proc = run_group([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("ERROR")]
        raise ResourceError(f"pip failed while {what} ({(lines or ['no output'])[-1][:300]})")
    return proc


def _package_folders(pyproject: Path) -> list[str]:
    """The folders setuptools takes packages from: [tool.setuptools] package-dir values and packages.find's
    ``where`` (the src layout)."""
    with open(pyproject, "rb") as f:
        setuptools = tomllib.load(f).get("tool", {}).get("setuptools", {})
    folders = set(setuptools.get("package-dir", {}).values())
    packages = setuptools.get("packages", {})
    if isinstance(packages, dict):
        folders.update(packages.get("find", {}).get("where", []))
    return sorted(folders)


def build_edge_run_wheel(dest: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="edge-run-src-") as tmp:
        root, copy = source_root(), Path(tmp) / "src"
        copy.mkdir()
        for item in (*SOURCE_FILES, *_package_folders(root / "pyproject.toml")):
            src = root / item
            if src.is_dir():
                shutil.copytree(src, copy / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif src.is_file():
                shutil.copy2(src, copy / item)
        _pip(["wheel", "--no-deps", "-q", "-w", str(dest), str(copy)], "building edge-run's wheel")
    found = sorted(dest.glob("edge_run-*.whl"))
    if not found:
        raise ResourceError("pip built no edge-run wheel")
    return found[0]


def wheel_requirements(wheel: Path, python: tuple[int, int], extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    """Requires-Dist of ``wheel`` that apply on the device (linux aarch64, CPython ``python``) with ``extras``."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode("utf-8")
    env = {"python_version": f"{python[0]}.{python[1]}", "python_full_version": f"{python[0]}.{python[1]}.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
           "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    out = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        try:
            req = Requirement(line.split(":", 1)[1].strip())
        except InvalidRequirement:
            continue
        marker: Marker | None = req.marker
        if marker is None or any(marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
            req.marker = None
            out.append(req)
    return out


def download_dependencies(requirements: list[Requirement], python: tuple[int, int], dest: Path) -> list[Path]:
    """Every wheel ``requirements`` need on the device (transitively), into ``dest``."""
    wanted = [str(r) for r in requirements if canonicalize_name(r.name) not in NOT_FROM_PYPI]
    ver = f"{python[0]}{python[1]}"
    platforms = [arg for tag in device_platforms() for arg in ("--platform", tag)]
    args = ["download", "-q", "--only-binary", ":all:", *platforms, "--python-version", f"{python[0]}.{python[1]}",
            "--implementation", "cp", "--abi", f"cp{ver}", "--abi", "abi3", "--abi", "none", "-d", str(dest),
            "pip", *wanted]
    proc = run_group([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        err = proc.stderr
        m = re.search(r"No matching distribution found for (\S+)", err)
        if m:
            raise InputError(f"PyPI has no linux-aarch64 wheel of {m.group(1)} for Python {python[0]}.{python[1]}",
                             "pass --python 3.13 (Raspberry Pi OS trixie) or 3.11 (bookworm)")
        lines = [line.strip() for line in err.splitlines() if line.strip()]
        raise ResourceError(f"pip could not download the device's wheels ({(lines or ['no output'])[-1][:300]})",
                            "check PyPI access (pip's cache is used when offline)")
    return sorted(dest.glob("*.whl"))
