"""`edge-run bundle`: an offline deploy bundle for a Raspberry Pi / arm64 board (library:
src/edge_run/runtime/bundle/)."""

from __future__ import annotations

from pathlib import Path

import typer

from edge_run.cli._common import console, err_console, print_json
from edge_run.runtime.bundle.build import DEFAULT_CTX, DEFAULT_PYTHON, build_bundle


def bundle_cmd(
    artifact: Path = typer.Argument(None, help="a .gguf file or ONNX artifact folder (or pass --models)"),
    profile: str = typer.Option(..., "--profile", help="arm64 device profile, e.g. pi4-4gb or pi5-8gb"),
    out: Path = typer.Option(..., "--out", "-o", help="bundle folder to write (and OUT.tar.gz beside it)"),
    models: Path = typer.Option(None, "--models", help="bundle the pick for the profile from this folder"),
    python: str = typer.Option(DEFAULT_PYTHON, "--python", help="device Python: 3.13 (trixie), 3.11 (bookworm)"),
    ctx: int = typer.Option(None, "--ctx", min=16, help=f"service context (default {DEFAULT_CTX} or the trained one)"),
    force: bool = typer.Option(False, "--force", help="replace an existing OUT and OUT.tar.gz"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Cross-build llama.cpp for the board's CPU and write artifact + wheels + install.sh + systemd unit."""
    def progress(step: str) -> None:
        if not as_json:
            err_console.print(step, markup=False)

    r = build_bundle(artifact, profile, out, python=python, models=models, force=force, ctx=ctx, progress=progress)
    size = r.tarball.stat().st_size / 2**20
    if as_json:
        print_json({"folder": str(r.folder), "tarball": str(r.tarball), "profile": r.profile,
                    "baseline": r.baseline.name, "python": r.python, "artifact": r.artifact,
                    "tarball_mib": round(size, 1)})
        return
    console.print(f"{r.folder}  ({r.artifact} for {r.profile}, llama.cpp built for {r.baseline.name}, "
                  f"Python {r.python})", markup=False)
    console.print(f"{r.tarball}  ({size:.1f} MiB): copy it to the board, untar, run `sh install.sh`", markup=False)


def register(app: typer.Typer) -> None:
    app.command("bundle")(bundle_cmd)
