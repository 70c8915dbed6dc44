"""CPU baselines for cross-built llama.cpp: one row per 64-bit ARM instruction-set level a wheel is built for.

A build made for a newer CPU dies with SIGILL on an older one (a Pi 5 build uses ``sdot``, which a Pi 4's
Cortex-A72 does not have), so every bundle names the baseline it was built for and install.sh compares the
board's ``/proc/cpuinfo`` ``Features`` with the row's ``cpu_features`` before installing anything.

A profile maps to the highest baseline whose ``profile_simd`` it lists (profiles/*.toml ``simd``). Features
per core, from Arm's Technical Reference Manuals:

    Cortex-A53 (Pi Zero 2 W, Pi 3)   Armv8.0-A                      fp asimd
    Cortex-A72 (Pi 4)                Armv8.0-A                      fp asimd
    Cortex-A76 (Pi 5)                Armv8.2-A + dotprod + fp16     + asimddp fphp asimdhp
    Cortex-A78AE (Jetson Orin)       Armv8.2-A + dotprod + fp16     + asimddp fphp asimdhp
    Armv8.6-A cores with i8mm        (+ matrix multiply int8)       + i8mm

``march`` goes to ``-march=`` (gcc and clang: llama.cpp's ``GGML_CPU_ARM_ARCH``); ``zig_mcpu`` is the same
level in zig's ``-mcpu=`` syntax (zig cc reads ``-march`` as a CPU name).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_run.core.errors import InputError
from edge_run.profiles.devices import DeviceProfile


@dataclass(frozen=True)
class Baseline:
    name: str  # what bundles and README.txt call it
    march: str  # -march= value (GGML_CPU_ARM_ARCH)
    zig_mcpu: str  # the same level for zig cc -mcpu=
    cpu_features: tuple[str, ...]  # /proc/cpuinfo "Features" words the board must list
    profile_simd: frozenset[str]  # profile simd entries that imply this level
    wheel_tag: str  # PEP 440 local version label of the llama-cpp-python wheel (0.3.36+<tag>)
    boards: str  # which boards it is for (README.txt, error messages)


BASELINES: tuple[Baseline, ...] = (
    Baseline("armv8-a", "armv8-a", "generic", ("fp", "asimd"), frozenset({"neon"}), "armv8a",
             "Cortex-A53 / A72: Pi Zero 2 W, Pi 3, Pi 4"),
    Baseline("armv8.2-a+dotprod+fp16", "armv8.2-a+dotprod+fp16", "generic+v8_2a+dotprod+fullfp16",
             ("fp", "asimd", "asimddp", "fphp", "asimdhp"), frozenset({"neon", "dotprod"}), "armv82dotprod",
             "Cortex-A76 / A78AE: Pi 5, Jetson Orin"),
    Baseline("armv8.6-a+dotprod+fp16+i8mm", "armv8.6-a+dotprod+fp16+i8mm", "generic+v8_6a+dotprod+fullfp16+i8mm",
             ("fp", "asimd", "asimddp", "fphp", "asimdhp", "i8mm"), frozenset({"neon", "dotprod", "i8mm"}),
             "armv86i8mm", "Armv8.6-A cores with i8mm (Cortex-A78C, X2, Neoverse V1/N2 ...)"),
)

BUNDLE_ARCH = "arm64"


def baseline_named(name: str) -> Baseline:
    for b in BASELINES:
        if name in (b.name, b.wheel_tag):
            return b
    raise InputError(f"unknown CPU baseline {name!r}", f"choose from: {', '.join(b.name for b in BASELINES)}")


def arm64_profile_names() -> list[str]:
    from edge_run.profiles.devices import list_profiles

    return sorted(p.name for p in list_profiles() if p.arch == BUNDLE_ARCH)


def baseline_for_profile(profile: DeviceProfile) -> Baseline:
    """The highest baseline every CPU matching ``profile`` runs; InputError for a profile that is not arm64."""
    if profile.arch != BUNDLE_ARCH:
        raise InputError(
            f"profile {profile.name} is {profile.arch} ({profile.core_type}); edge-run bundle builds for 64-bit "
            "ARM boards only",
            f"choose an arm64 profile: {', '.join(arm64_profile_names())}")
    simd = set(profile.simd)
    fitting = [b for b in BASELINES if b.profile_simd <= simd]
    if not fitting:
        raise InputError(f"profile {profile.name} lists simd {sorted(simd)} without neon; every arm64 baseline "
                         "needs Advanced SIMD (neon)", "add \"neon\" to its simd list")
    return max(fitting, key=lambda b: len(b.cpu_features))


def missing_features(baseline: Baseline, cpuinfo: str) -> list[str]:
    """Features ``baseline`` needs that the ``Features`` line(s) of /proc/cpuinfo text lack (every core)."""
    lines = [line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
             if line.split(":", 1)[0].strip() == "Features" and ":" in line]
    if not lines:
        return list(baseline.cpu_features)
    return [f for f in baseline.cpu_features if not all(f in words for words in lines)]


def best_baseline_for_cpu(cpuinfo: str) -> Baseline | None:
    """The highest baseline a board with this /proc/cpuinfo runs (None: not even armv8-a)."""
    ok = [b for b in BASELINES if not missing_features(b, cpuinfo)]
    return max(ok, key=lambda b: len(b.cpu_features)) if ok else None
