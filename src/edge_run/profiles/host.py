"""What this machine's CPU is: its SIMD features and core type, from the kernel (arm64: the auxiliary vector's
hwcaps; elsewhere /proc/cpuinfo's flags). The memory estimate asks on every `run` (weights that llama.cpp repacks
for the host's SIMD take a second copy), so this module imports nothing beyond the standard library: device
profiles (src/edge_run/profiles/devices.py, TOML, numpy, psutil) build on it, not the other way round."""

from __future__ import annotations

import platform
from pathlib import Path

_CPUINFO_FLAGS: dict[str, str] = {  # /proc/cpuinfo flag -> profile SIMD feature
    "asimd": "neon", "neon": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "avx": "avx",
    "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512", "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
}
# Linux arm64 hardware capability bits (arch/arm64/include/uapi/asm/hwcap.h) -> profile SIMD feature.
# /proc/cpuinfo's Features line is printed from these same bits; they are read from the process's auxiliary
# vector, which is also right under qemu-user (it fills AT_HWCAP for its -cpu) and in containers.
AT_HWCAP, AT_HWCAP2 = 16, 26
_ARM64_HWCAPS: dict[str, tuple[int, int]] = {  # feature -> (auxv key, bit)
    "neon": (AT_HWCAP, 1), "dotprod": (AT_HWCAP, 20), "sve": (AT_HWCAP, 22), "i8mm": (AT_HWCAP2, 13),
}
# Arm Ltd (implementer 0x41) MIDR part numbers -> core type (Arm's Technical Reference Manuals, MIDR_EL1)
_ARM_PARTS: dict[int, str] = {
    0xD03: "cortex-a53", 0xD04: "cortex-a35", 0xD05: "cortex-a55", 0xD07: "cortex-a57", 0xD08: "cortex-a72",
    0xD09: "cortex-a73", 0xD0A: "cortex-a75", 0xD0B: "cortex-a76", 0xD0C: "neoverse-n1", 0xD0D: "cortex-a77",
    0xD40: "neoverse-v1", 0xD41: "cortex-a78", 0xD42: "cortex-a78ae", 0xD44: "cortex-x1", 0xD46: "cortex-a510",
    0xD47: "cortex-a710", 0xD49: "neoverse-n2", 0xD4B: "cortex-a78c", 0xD4F: "neoverse-v2",
}


def cpu_features(cpuinfo: str) -> tuple[str, ...]:
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return tuple(sorted({v for k, v in _CPUINFO_FLAGS.items() if k in flags}))


def hwcap_features(auxv: bytes) -> tuple[str, ...]:
    """SIMD features from an arm64 auxiliary vector (/proc/self/auxv: native-endian (u64 key, u64 value) pairs)."""
    words = memoryview(auxv[: len(auxv) // 16 * 16]).cast("Q")  # native-endian u64, as the kernel writes it
    values = dict(zip(words[0::2], words[1::2], strict=True))
    return tuple(sorted(f for f, (key, bit) in _ARM64_HWCAPS.items() if values.get(key, 0) >> bit & 1))


def cpu_core_type(cpuinfo: str, machine: str) -> str:
    """The core type: the Arm part number of the first CPU listed, else the x86 model name, else the machine."""
    implementer = part = None
    for line in cpuinfo.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name" and not machine.startswith(("aarch64", "arm")):
            return value
        if key in ("CPU implementer", "CPU part") and value.lower().startswith("0x"):
            if key == "CPU implementer" and implementer is None:
                implementer = int(value, 16)
            elif key == "CPU part" and part is None:
                part = int(value, 16)
    if implementer == 0x41 and part in _ARM_PARTS:
        return _ARM_PARTS[part]
    return machine


def detected_arch(machine: str) -> str:
    return "arm64" if machine in ("aarch64", "arm64") else "x86_64" if machine in ("x86_64", "amd64") else "armv7"


def read_proc(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def host_features() -> tuple[str, ...]:
    """This machine's SIMD features: the kernel's hwcaps on arm64, /proc/cpuinfo's flags elsewhere."""
    auxv = read_proc("/proc/self/auxv") if detected_arch(platform.machine().lower()) == "arm64" else b""
    return hwcap_features(auxv) if auxv else cpu_features(read_proc("/proc/cpuinfo").decode("utf-8", errors="replace"))
