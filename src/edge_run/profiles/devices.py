"""Device profiles: TOML data files (shipped in edge_run.profiles, plus the user's own), validated.

A user adds a device by dropping ``NAME.toml`` into ``$EDGE_RUN_PROFILES`` (default
``~/.config/edge-run/profiles``); a user profile with a shipped name overrides it.
"""

from __future__ import annotations

import math
import os
import platform
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edge_run.core.errors import ProfileError
from edge_run.core.fsutil import read_regular_file
from edge_run.core.quoting import check_name, check_text
from edge_run.profiles.host import cpu_core_type, detected_arch, host_features, read_proc

MAX_PROFILE_BYTES = 1 << 20  # a profile is a dozen lines

KNOWN_SIMD = frozenset({"neon", "dotprod", "i8mm", "sve", "avx", "avx2", "fma", "f16c", "avx512", "avx512_vnni",
                        "avx_vnni"})
KNOWN_ARCH = frozenset({"arm64", "x86_64", "armv7"})


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    ram_mb: int
    os_reserved_mb: int
    arch: str
    core_type: str
    physical_cores: int
    simd: tuple[str, ...]
    memory_bandwidth_gbs: float
    storage: str = ""
    source: str = ""  # the file it was read from ("detected" for `detect`)

    @property
    def available_mb(self) -> int:
        return self.ram_mb - self.os_reserved_mb

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["simd"] = list(self.simd)
        return d


# field -> (type, required, check, what a valid value is)
_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, True), "description": (str, True), "ram_mb": (int, True), "os_reserved_mb": (int, True),
    "arch": (str, True), "core_type": (str, True), "physical_cores": (int, True), "simd": (list, True),
    "memory_bandwidth_gbs": ((int, float), True), "storage": (str, False),
}


def user_profile_dir() -> Path:
    return Path(os.environ.get("EDGE_RUN_PROFILES") or Path.home() / ".config" / "edge-run" / "profiles")


def parse_profile(data: dict[str, Any], origin: str) -> DeviceProfile:
    """Validate a parsed TOML table; every defect is a ProfileError naming the file and field."""
    hint = "see the shipped profiles (`edge-run profiles show pi4-4gb`) for the format"
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ProfileError(f"{origin}: unknown key(s) {', '.join(unknown)}", f"allowed keys: {', '.join(_FIELDS)}")
    for key, (typ, required) in _FIELDS.items():
        if key not in data:
            if required:
                raise ProfileError(f"{origin}: missing field {key!r}", hint)
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise ProfileError(f"{origin}: field {key!r} has the wrong type ({type(value).__name__})", hint)
    # the name reaches install.sh, a systemd unit and README.txt; every text field is one plain line
    check_name(data["name"], f"{origin}: name", ProfileError, hint='e.g. name = "pi4-4gb"')
    for key in ("description", "core_type", "storage"):
        if key in data:
            check_text(data[key], f"{origin}: {key}", ProfileError, max_chars=200)
    for key in ("ram_mb", "physical_cores", "memory_bandwidth_gbs"):
        if not math.isfinite(data[key]) or data[key] <= 0:  # nan <= 0 is False: test finiteness first
            raise ProfileError(f"{origin}: {key} must be positive, got {data[key]}", hint)
    if data["os_reserved_mb"] < 0 or data["os_reserved_mb"] >= data["ram_mb"]:
        raise ProfileError(f"{origin}: os_reserved_mb must be between 0 and ram_mb ({data['ram_mb']})", hint)
    if data["arch"] not in KNOWN_ARCH:
        raise ProfileError(f"{origin}: arch {data['arch']!r} is not one of {', '.join(sorted(KNOWN_ARCH))}", hint)
    simd = data["simd"]
    bad = [s for s in simd if not isinstance(s, str) or s not in KNOWN_SIMD]
    if bad:
        raise ProfileError(f"{origin}: unknown SIMD feature(s) {bad}", f"known: {', '.join(sorted(KNOWN_SIMD))}")
    return DeviceProfile(
        name=data["name"], description=data["description"], ram_mb=data["ram_mb"],
        os_reserved_mb=data["os_reserved_mb"], arch=data["arch"], core_type=data["core_type"],
        physical_cores=data["physical_cores"], simd=tuple(simd),
        memory_bandwidth_gbs=float(data["memory_bandwidth_gbs"]), storage=data.get("storage", ""), source=origin)


def load_profile_file(path: Path) -> DeviceProfile:
    data_bytes = read_regular_file(Path(path), "profile", MAX_PROFILE_BYTES, ProfileError)  # no FIFO, no /dev/zero
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProfileError(f"profile {path} is not UTF-8 text") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"profile {path} is not valid TOML ({e})", "fix the syntax") from e
    except RecursionError as e:
        raise ProfileError(f"profile {path} nests tables or arrays too deeply", "a profile is one flat table") from e
    return parse_profile(data, str(path))


def _profile_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    shipped = resources.files("edge_run.profiles")
    for entry in shipped.iterdir():
        if entry.name.endswith(".toml"):
            files[entry.name[:-5]] = Path(str(entry))
    user = user_profile_dir()
    if user.is_dir():
        files.update({p.stem: p for p in sorted(user.glob("*.toml"))})
    return files


def list_profiles() -> list[DeviceProfile]:
    return [load_profile_file(p) for _, p in sorted(_profile_files().items())]


def get_profile(name: str) -> DeviceProfile:
    """A profile by name, ``auto`` (this machine, detected), or a path to a TOML file."""
    if name == "auto":
        return detect()
    if name.endswith(".toml") or os.sep in name:
        return load_profile_file(Path(name))
    files = _profile_files()
    if name not in files:
        raise ProfileError(f"no profile named {name!r}", f"choose from: {', '.join(sorted(files))}, or auto")
    return load_profile_file(files[name])


# ---------------------------------------------------------------------------------------------- detect

def measure_bandwidth_gbs(seconds: float = 0.4, mib: int = 64) -> float:
    """Sustained copy bandwidth (read + write bytes per second) of a buffer larger than caches."""
    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - t0))
    return round(best / 1e9, 1)


def detect() -> DeviceProfile:
    """A profile of this machine: psutil for memory and cores, /proc/cpuinfo (arm64: the kernel's hwcaps) for
    SIMD and the core type, a copy probe."""
    cpuinfo = read_proc("/proc/cpuinfo").decode("utf-8", errors="replace")
    machine = platform.machine().lower()
    arch = detected_arch(machine)
    model = cpu_core_type(cpuinfo, machine)
    vm = psutil.virtual_memory()
    ram_mb = vm.total // 2**20
    in_use_mb = (vm.total - vm.available) // 2**20
    return DeviceProfile(
        name="auto", description=f"this machine ({model})", ram_mb=ram_mb,
        os_reserved_mb=min(max(in_use_mb, 256), ram_mb - 1), arch=arch, core_type=model,
        physical_cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        simd=host_features(), memory_bandwidth_gbs=max(measure_bandwidth_gbs(), 0.1),
        storage="", source="detected")


PROFILE_FIELDS = tuple(f.name for f in fields(DeviceProfile))
