"""`edge-run bundle`: one folder (and a .tar.gz beside it) to copy to a board and install offline.

    OUT/
      models/ARTIFACT (+ ARTIFACT.manifest.json, or ARTIFACT/manifest.json for ONNX; source.path dropped)
      wheels/         edge-run, its dependencies (+ serve) for linux-aarch64 / CPython X.Y, pip, and
                      llama_cpp_python-<pin>+<baseline>-py3-none-manylinux_*_aarch64.whl (cross-built)
      install.sh      CPU check -> sha256 check -> venv -> pip install --no-index -> launcher, unit
                      (--worker: + the worker unit, installed and enabled)
      edge-run.service  systemd unit: edge-run serve ARTIFACT --host 127.0.0.1 --threads N --ctx C
      edge-run-worker.service  systemd unit: edge-run worker --threads N + install.sh --worker's --host/--port/--allow
      README.txt      what was picked for which board, and why
      SHA256SUMS      every file above except install.sh and SHA256SUMS itself
    OUT.tar.gz

Everything is written into ``.edge-run-bundle-PID-*`` beside OUT and renamed onto OUT when complete.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from edge_run.core.errors import UsageError
from edge_run.core.fsutil import atomic_path, os_error_to_resource, sha256_file
from edge_run.core.manifest import manifest_path_for
from edge_run.core.quoting import (
    BYTES_ERRORS,
    display_text,
    sh_assign,
    sh_quote,
    sha256sums_line,
    systemd_escape,
    systemd_text,
)
from edge_run.profiles.devices import DeviceProfile, get_profile
from edge_run.runtime.artifacts.integrity import check_artifact_path, verify_artifact
from edge_run.runtime.bundle.baselines import BASELINES, Baseline, baseline_for_profile
from edge_run.runtime.bundle.llama_wheel import build_llama_wheel, cached_llama_wheel, remove_dead_builds
from edge_run.runtime.bundle.output import (
    ALWAYS_IN_A_BUNDLE,
    absolute_out,
    check_out,
    check_writable,
    make_work_dir,
)
from edge_run.runtime.bundle.payload import bundle_name, copy_artifact
from edge_run.runtime.bundle.toolchain import find_toolchain
from edge_run.runtime.bundle.wheelhouse import (
    build_edge_run_wheel,
    download_dependencies,
    parse_python,
    wheel_requirements,
)

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


def _template(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def _fill(text: str, values: dict[str, str], keep: frozenset[str] = frozenset()) -> str:
    """Every ``@KEY@`` replaced in one pass (a value is never scanned again, so a name holding "@CTX@" stays
    text); a placeholder with no value and not in ``keep`` is a bug in the template."""
    def one(m: re.Match[str]) -> str:
        if m.group(1) in values:
            return values[m.group(1)]
        if m.group(1) in keep:
            return m.group(0)
        raise KeyError(f"template placeholder {m.group(0)} has no value")
    return PLACEHOLDER.sub(one, text)


def _baseline_table() -> str:
    from edge_run.profiles.devices import list_profiles

    rows = []
    for b in sorted(BASELINES, key=lambda b: -len(b.cpu_features)):
        names = [p.name for p in list_profiles() if p.arch == "arm64" and baseline_for_profile(p) == b]
        rows.append(f"{b.name}|{' '.join(b.cpu_features)}|{' / '.join(names) or 'PROFILE (a profile listing i8mm)'}")
    return "\n".join(rows)


@dataclass(frozen=True)
class Values:
    """What one bundle's generated files say; each template's row below quotes them for its language."""

    baseline: Baseline
    profile: str
    python: str
    artifact: str
    requirements: str
    threads: int
    ctx: int


def _install_sh(v: Values) -> dict[str, str]:
    """install.sh: one block of single-quoted assignments at the top and nothing else filled in."""
    variables = {"BASELINE": v.baseline.name, "FEATURES": " ".join(v.baseline.cpu_features), "PROFILE": v.profile,
                 "PYTHON_VERSION": v.python, "ARTIFACT": v.artifact, "ARTIFACT_SH": sh_quote(v.artifact),
                 "REQUIREMENTS": v.requirements, "BASELINE_TABLE": _baseline_table()}
    return {"VARIABLES": "\n".join(sh_assign(k, value) for k, value in variables.items())}


def _unit(v: Values) -> dict[str, str]:
    """edge-run.service: install.sh replaces @PREFIX@ (checked to be letters, digits and . _ / + -) on the
    ExecStart line; the model's name is systemd-escaped, so no raw '@', quote or space of the name is there."""
    return {"DESCRIPTION": systemd_text(f"edge-run serve {v.artifact} ({v.profile})"),
            "MODEL": '"@PREFIX@/models/' + systemd_escape(v.artifact) + '"',
            "THREADS": str(int(v.threads)), "CTX": str(int(v.ctx))}


def _worker_unit(v: Values) -> dict[str, str]:
    """edge-run-worker.service: install.sh --worker replaces @PREFIX@ and @WORKER_ARGS@ on the ExecStart line
    (values it checked: see templates/install.sh step 0)."""
    return {"DESCRIPTION": systemd_text(f"edge-run worker: a share of a split model ({v.profile})"),
            "THREADS": str(int(v.threads))}


TEMPLATES: dict[str, tuple[Callable[[Values], dict[str, str]], frozenset[str]]] = {
    "install.sh": (_install_sh, frozenset({"PREFIX", "WORKER_ARGS"})),
    "edge-run.service": (_unit, frozenset({"PREFIX"})),
    "edge-run-worker.service": (_worker_unit, frozenset({"PREFIX", "WORKER_ARGS"})),
}


def render(template: str, baseline: Baseline, profile: str, python: str, artifact: str, requirements: str,
           threads: int = 4, ctx: int = DEFAULT_CTX) -> str:
    """``templates/<template>`` (install.sh, edge-run.service, edge-run-worker.service) filled in for one bundle."""
    values, keep = TEMPLATES[template]
    return _fill(_template(template), values(Values(baseline, profile, python, artifact, requirements, threads,
                                                    ctx)), keep)


def write_generated(path: Path, text: str) -> None:
    """A generated file: UTF-8, with a non-UTF-8 name's bytes kept as they are (sh_quote passes them through)."""
    path.write_bytes(text.encode("utf-8", BYTES_ERRORS))


def _sha256sums(folder: Path) -> str:
    lines = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in ALWAYS_IN_A_BUNDLE:
            lines.append(sha256sums_line(sha256_file(p), rel))
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
    out = absolute_out(out)  # UsageError for '.', '..', '/'
    remove_dead_builds(out.parent)  # a SIGKILLed bundle's temp folder, whatever this run then says
    artifact = Path(os.path.abspath(artifact)) if artifact is not None else None
    models = Path(os.path.abspath(models)) if models is not None else None
    if artifact is not None:
        check_artifact_path(artifact)  # a FIFO or a device is named as such, never opened
    prof = get_profile(profile)
    baseline = baseline_for_profile(prof)
    py = parse_python(python)
    inputs = [p for p in (artifact, models) if p is not None]
    if artifact is not None:
        inputs.append(manifest_path_for(artifact))
    tarball = check_out(out, inputs, force)  # before anything slow; --force only over a previous bundle
    check_writable(out.parent)
    result = _choose(artifact, models, prof, ctx)
    chosen = result.pick.candidate
    assert chosen.path is not None
    name = bundle_name(chosen.path)
    manifest = verify_artifact(chosen.path, full=True)  # a corrupt artifact is refused (exit 5) before copying
    work = make_work_dir(out)
    try:
        stage = work / out.name
        stage.mkdir()
        copy_artifact(chosen.path, manifest, stage / "models")
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
        for template in TEMPLATES:
            write_generated(stage / template,
                            render(template, baseline, prof.name, f"{py[0]}.{py[1]}", name, reqs_line, threads, n_ctx))
        (stage / "install.sh").chmod(0o755)
        from edge_run.runtime.bundle.readme import readme_text

        write_generated(stage / "README.txt", readme_text(result, baseline, f"{py[0]}.{py[1]}", n_ctx, threads,
                                                          sorted(p.name for p in wheels.iterdir())))
        write_generated(stage / "SHA256SUMS", _sha256sums(stage))
        _tarball(stage, tarball, out.name, force)
        if os.path.lexists(out):  # --force over a previous bundle (check_out said so): moved aside, removed below
            os.rename(out, work / ".old")
        os.rename(stage, out)
    except OSError as e:  # a full disk, a folder made read-only meanwhile
        raise os_error_to_resource(e, f"the bundle {display_text(str(out))}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BundleResult(out, tarball, prof.name, baseline, f"{py[0]}.{py[1]}", name, result)
