"""`profiles detect` on ARM boards: real /proc/cpuinfo text of a Pi 4 (64- and 32-bit OS) and a Pi 5 (tests/data,
each file citing where it was published) gives the SIMD features and core type of the shipped profile; the arm64
auxiliary-vector reader (what detect uses on arm64, and what qemu-user fills per -cpu) agrees with the Features line."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from edge_run.profiles.devices import get_profile
from edge_run.profiles.host import AT_HWCAP, AT_HWCAP2, cpu_core_type, cpu_features, hwcap_features

DATA = Path(__file__).parent / "data"

# Bit positions of the Features names in the Linux arm64 uapi header (arch/arm64/include/uapi/asm/hwcap.h);
# written out here independently of src/edge_run/profiles/host.py's feature table.
HWCAP_BITS = {
    "fp": 0, "asimd": 1, "evtstrm": 2, "aes": 3, "pmull": 4, "sha1": 5, "sha2": 6, "crc32": 7, "atomics": 8,
    "fphp": 9, "asimdhp": 10, "cpuid": 11, "asimdrdm": 12, "jscvt": 13, "fcma": 14, "lrcpc": 15, "dcpop": 16,
    "sha3": 17, "sm3": 18, "sm4": 19, "asimddp": 20, "sha512": 21, "sve": 22,
}
HWCAP2_BITS = {"dcpodp": 0, "sve2": 1, "i8mm": 13, "bf16": 14}


def auxv_for(features: list[str]) -> bytes:
    """The auxiliary vector a kernel would hand a process on a CPU with these Features (plus unrelated entries)."""
    hwcap = sum(1 << HWCAP_BITS[f] for f in features if f in HWCAP_BITS)
    hwcap2 = sum(1 << HWCAP2_BITS[f] for f in features if f in HWCAP2_BITS)
    entries = [(6, 4096), (AT_HWCAP, hwcap), (17, 100), (AT_HWCAP2, hwcap2), (0, 0)]  # AT_PAGESZ, AT_CLKTCK, AT_NULL
    return b"".join(struct.pack("=QQ", k, v) for k, v in entries)


def features_line(cpuinfo: str) -> list[str]:
    return next(ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("Features"))


@pytest.mark.parametrize(("capture", "machine", "profile"), [
    ("cpuinfo_pi4_aarch64.txt", "aarch64", "pi4-4gb"),
    ("cpuinfo_pi4_armv7l.txt", "armv7l", "pi4-4gb"),
    ("cpuinfo_pi5_aarch64.txt", "aarch64", "pi5-8gb"),
])
def test_real_pi_cpuinfo_matches_its_profile(capture: str, machine: str, profile: str) -> None:
    cpuinfo = (DATA / capture).read_text(encoding="utf-8")
    shipped = get_profile(profile)
    assert cpu_features(cpuinfo) == tuple(sorted(shipped.simd))
    assert cpu_core_type(cpuinfo, machine) == shipped.core_type


def test_pi4_lacks_dotprod_pi5_has_it() -> None:
    """The difference that makes a Pi 5 build SIGILL on a Pi 4."""
    pi4 = cpu_features((DATA / "cpuinfo_pi4_aarch64.txt").read_text(encoding="utf-8"))
    pi5 = cpu_features((DATA / "cpuinfo_pi5_aarch64.txt").read_text(encoding="utf-8"))
    assert "dotprod" not in pi4 and "dotprod" in pi5
    assert "i8mm" not in pi5 and "sve" not in pi5


@pytest.mark.parametrize("capture", ["cpuinfo_pi4_aarch64.txt", "cpuinfo_pi5_aarch64.txt"])
def test_hwcaps_agree_with_the_features_line(capture: str) -> None:
    cpuinfo = (DATA / capture).read_text(encoding="utf-8")
    assert hwcap_features(auxv_for(features_line(cpuinfo))) == cpu_features(cpuinfo)


def test_hwcaps_read_i8mm_from_hwcap2_and_sve() -> None:
    feats = ["fp", "asimd", "asimddp", "sve", "i8mm", "bf16"]  # a Neoverse-V1-class core
    assert hwcap_features(auxv_for(feats)) == ("dotprod", "i8mm", "neon", "sve")
    assert hwcap_features(auxv_for(["fp", "asimd", "i8mm"])) == ("i8mm", "neon")


def test_hwcaps_of_an_empty_or_truncated_auxv() -> None:
    assert hwcap_features(b"") == ()
    assert hwcap_features(auxv_for(["asimd"])[:20]) == ()  # the AT_HWCAP pair is cut off


def test_core_type_on_x86_and_unknown_parts() -> None:
    assert cpu_core_type("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n", "x86_64") == "AMD EPYC 7B13"
    assert cpu_core_type("CPU implementer\t: 0x51\nCPU part\t: 0x801\n", "aarch64") == "aarch64"  # not an Arm core
    # an aarch64 process whose /proc/cpuinfo is the x86 host's (qemu-user before 8.1): no x86 model name
    assert cpu_core_type("model name\t: AMD EPYC 7B13\nflags\t: avx2\n", "aarch64") == "aarch64"
