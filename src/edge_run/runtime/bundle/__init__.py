"""Offline deploy bundles for Raspberry Pis and other 64-bit ARM boards (`edge-run bundle`).

Public API (library: raises edge_run.core.errors classes, never prints):

    baseline_for_profile(profile: DeviceProfile) -> Baseline
        The CPU baseline a profile implies (BASELINES table in baselines.py: armv8-a for Cortex-A53/A72,
        armv8.2-a+dotprod+fp16 for A76/A78AE, +i8mm only where the profile lists it). InputError (exit 3)
        for an x86 profile.
    baseline_named(name: str) -> Baseline                       "armv8-a", or a wheel tag like "armv82dotprod"
    missing_features(baseline, cpuinfo_text) -> list[str]       /proc/cpuinfo Features the board lacks

    build_llama_wheel(baseline: Baseline, version: str | None = None, work_dir: Path | None = None,
                      force: bool = False) -> Path
        The cross-built llama-cpp-python wheel (linux-aarch64, from the pinned version's sdist) for the
        baseline, cached under $EDGE_RUN_CACHE/llama-cpp-python/<version>/<wheel tag>/ (a hit returns in
        milliseconds). ResourceError (exit 4) when no cross toolchain or cmake is installed.

    build_bundle(artifact: Path | None, profile: str, out: Path, python: str = "3.13",
                 models: Path | None = None, force: bool = False, ctx: int | None = None,
                 progress: Callable[[str], None] | None = None) -> BundleResult
        The whole bundle folder ``out`` (and ``out.tar.gz`` beside it): artifact + manifest, wheelhouse,
        install.sh, systemd unit, README.txt, SHA256SUMS. Pass ``artifact`` or ``models`` (the pick for the
        profile). BundleResult.folder / .tarball / .baseline / .python.

    Installing a bundle on the device (or in an emulator): ``sh BUNDLE/install.sh``; environment:
        EDGE_RUN_PREFIX      install prefix (default /opt/edge-run; venv in PREFIX/venv, launcher PREFIX/bin)
        EDGE_RUN_CPUINFO     the cpuinfo file to check (default /proc/cpuinfo)
        EDGE_RUN_MACHINE     the machine name to check (default `uname -m`)
        EDGE_RUN_CHECK_ONLY  1: stop after the CPU and sha256 checks
        EDGE_RUN_SKIP_CPU_CHECK  1: install even on a CPU that lacks the baseline (to prove it dies by SIGILL)
"""

from __future__ import annotations

from edge_run.runtime.bundle.baselines import (
    BASELINES,
    Baseline,
    baseline_for_profile,
    baseline_named,
    missing_features,
)
from edge_run.runtime.bundle.llama_wheel import build_llama_wheel, cached_llama_wheel, pinned_llama_version

__all__ = [
    "BASELINES",
    "Baseline",
    "baseline_for_profile",
    "baseline_named",
    "build_llama_wheel",
    "cached_llama_wheel",
    "missing_features",
    "pinned_llama_version",
]
