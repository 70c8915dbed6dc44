"""`edge-run bundle`: one folder (and a .tar.gz beside it) to copy to a board and install offline.

    OUT/
      models/ARTIFACT (+ ARTIFACT.manifest.json, or ARTIFACT/manifest.json for ONNX; source.path dropped)
      wheels/         edge-run, its dependencies (+ serve) for linux-aarch64 / CPython X.Y, pip, and
                      llama_cpp_python-<pin>+<baseline>-py3-none-manylinux_*_aarch64.whl (cross-built)
      install.sh      CPU check -> sha256 check -> venv -> pip install --no-index -> launcher, unit
      edge-run.service  systemd unit: edge-run serve ARTIFACT --host 127.0.0.1 --threads N --ctx C
      README.txt      what was picked for which board, and why
      SHA256SUMS      every file above except install.sh and SHA256SUMS itself
    OUT.tar.gz

Everything is written into ``.edge-run-bundle-PID-*`` beside OUT and renamed onto OUT when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from edge_run.core.errors import OutputExistsError, ResourceError, UsageError
from edge_run.core.formats import payload_files
from edge_run.core.fsutil import atomic_path, sha256_file
from edge_run.core.manifest import manifest_path_for
from edge_run.runtime.bundle.baselines import BASELINES, Baseline, baseline_for_profile
from edge_run.runtime.bundle.llama_wheel import build_llama_wheel, cached_llama_wheel, remove_dead_builds
from edge_run.runtime.bundle.toolchain import find_toolchain
from edge_run.runtime.bundle.wheelhouse import (
    build_edge_run_wheel,
    download_dependencies,
    parse_python,
    wheel_requirements,
)
from edge_run.runtime.profiles import DeviceProfile, get_profile

if TYPE_CHECKING:
    from edge_run.runtime.pick.picker import PickResult

DEFAULT_PYTHON = "3.13"  # Raspberry Pi OS trixie; bookworm has 3.11
DEFAULT_CTX = 2048


@dataclass(frozen=True)
class BundleResult:
    folder: Path
    tarball: Path
    profile: str
    baseline: Baseline
    python: str
    artifact: str
    pick: PickResult


def _choose(artifact: Path | None, models: Path | None, profile: DeviceProfile, ctx: int | None) -> PickResult:
    """The picker's verdict: the best converted artifact under ``models``, or ``artifact`` checked to fit."""
    from edge_run.runtime.pick.picker import candidate_for_artifact, gather_candidates, pick

    if (artifact is None) == (models is None):
        raise UsageError("pass either an ARTIFACT or --models DIR", "e.g. edge-run bundle model.gguf --profile pi4-4gb")
    if artifact is not None:
        candidates = [candidate_for_artifact(Path(artifact))]
    else:
        candidates = [c for c in gather_candidates(Path(models)) if not c.planned]  # type: ignore[arg-type]
        if not candidates:
            raise UsageError(f"{models} holds no converted artifact to bundle",
                             "convert one first (edge-run convert, or edge-run run --profile ... --models ...)")
    if ctx is None:  # the default context, or the longest a candidate was trained for when that is less
        ctx = min(DEFAULT_CTX, max((c.trained_ctx for c in candidates), default=0) or DEFAULT_CTX)
    return pick(profile, candidates, ctx)  # NothingFitsError (exit 4) when the artifact is too big for the board


def _copy_artifact(src: Path, models_dir: Path) -> str:
    """Copy the artifact and its manifest; the manifest loses source.path (a path of the machine that made it)."""
    models_dir.mkdir()
    manifest_src = manifest_path_for(src)
    for path in payload_files(src):  # the format row's files, in the same layout (a file, or a folder's files)
        dst = models_dir / path.relative_to(src.parent)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst)
    manifest_dst = models_dir / manifest_src.relative_to(src.parent)
    if manifest_src.is_file():
        data = json.loads(manifest_src.read_text(encoding="utf-8"))
        source = data.get("source")
        if isinstance(source, dict):
            source.pop("path", None)
        manifest_dst.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return src.name


def _template(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def _baseline_table() -> str:
    from edge_run.runtime.profiles import list_profiles

    rows = []
    for b in sorted(BASELINES, key=lambda b: -len(b.cpu_features)):
        names = [p.name for p in list_profiles() if p.arch == "arm64" and baseline_for_profile(p) == b]
        rows.append(f"{b.name}|{' '.join(b.cpu_features)}|{' / '.join(names) or 'PROFILE (a profile listing i8mm)'}")
    return "\n".join(rows)


def render(template: str, baseline: Baseline, profile: str, python: str, artifact: str, requirements: str,
           threads: int = 4, ctx: int = DEFAULT_CTX) -> str:
    """``templates/<template>`` (install.sh, edge-run.service) filled in for one bundle."""
    values = {"BASELINE": baseline.name, "FEATURES": " ".join(baseline.cpu_features), "PROFILE": profile,
              "PYTHON": python, "ARTIFACT": artifact, "BASELINE_TABLE": _baseline_table(),
              "REQUIREMENTS": requirements, "THREADS": str(threads), "CTX": str(ctx)}
    return _fill(_template(template), values)


def _sha256sums(folder: Path) -> str:
    lines = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in ("install.sh", "SHA256SUMS"):
            lines.append(f"{sha256_file(p)}  {rel}")
    return "\n".join(lines) + "\n"


def _tarball(folder: Path, dest: Path, arcname: str, force: bool) -> None:
    with atomic_path(dest, force=force) as tmp, tarfile.open(tmp, "w:gz", compresslevel=6) as tf:
        tf.add(folder, arcname=arcname)


def build_bundle(artifact: Path | None, profile: str, out: Path, python: str = DEFAULT_PYTHON,
                 models: Path | None = None, force: bool = False, ctx: int | None = None,
                 progress: Callable[[str], None] | None = None) -> BundleResult:
    """Build the bundle folder ``out`` and ``out.tar.gz``; see the module docstring for what is inside.
    ``progress(step)`` is told each slow step before it starts."""
    say = progress or (lambda _step: None)
    out = Path(out)
    if out.parent.is_dir():
        remove_dead_builds(out.parent)  # a SIGKILLed bundle's temp folder
    prof = get_profile(profile)
    baseline = baseline_for_profile(prof)
    py = parse_python(python)
    tarball = out.with_name(out.name + ".tar.gz")
    for existing in (out, tarball):
        if existing.exists() and not force:
            raise OutputExistsError(f"{existing} already exists", "pass --force to replace it")
    result = _choose(artifact, models, prof, ctx)
    chosen = result.pick.candidate
    assert chosen.path is not None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResourceError(f"cannot create {out.parent}: {e.strerror}", "choose a writable --out") from e
    work = Path(tempfile.mkdtemp(prefix=f".edge-run-bundle-{os.getpid()}-", dir=out.parent))
    try:
        stage = work / out.name
        stage.mkdir()
        name = _copy_artifact(chosen.path, stage / "models")
        wheels = stage / "wheels"
        wheels.mkdir()
        if cached_llama_wheel(baseline) is None:
            find_toolchain()  # fail before announcing a build that cannot start
            say(f"cross-building llama.cpp for {baseline.name} (minutes; cached for the next bundle)")
        llama = build_llama_wheel(baseline, work_dir=work)
        shutil.copy2(llama, wheels / llama.name)
        say(f"building edge-run's wheel and downloading its dependencies for Python {py[0]}.{py[1]}")
        edge = build_edge_run_wheel(wheels)
        reqs = wheel_requirements(edge, py) + wheel_requirements(wheels / llama.name, py, extras=())
        download_dependencies(reqs, py, wheels)
        llama_version = llama.name.split("-")[1]
        edge_version = edge.name.split("-")[1]
        threads = prof.physical_cores
        n_ctx = result.ctx if not chosen.trained_ctx else min(result.ctx, chosen.trained_ctx)
        reqs_line = f"edge-run[serve]=={edge_version} llama-cpp-python=={llama_version}"
        for template in ("install.sh", "edge-run.service"):
            text = render(template, baseline, prof.name, f"{py[0]}.{py[1]}", name, reqs_line, threads, n_ctx)
            (stage / template).write_text(text, encoding="utf-8")
        (stage / "install.sh").chmod(0o755)
        from edge_run.runtime.bundle.readme import readme_text

        (stage / "README.txt").write_text(readme_text(result, baseline, f"{py[0]}.{py[1]}", n_ctx, threads,
                                                      sorted(p.name for p in wheels.iterdir())), encoding="utf-8")
        (stage / "SHA256SUMS").write_text(_sha256sums(stage), encoding="utf-8")
        _tarball(stage, tarball, out.name, force)
        if out.exists():  # --force: move the old bundle aside (removed with the temp folder), then swap
            os.rename(out, work / ".old")
        os.rename(stage, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BundleResult(out, tarball, prof.name, baseline, f"{py[0]}.{py[1]}", name, result)
