"""`edge-run verify`: rehash artifacts against their manifests now (bit rot on SD cards keeps size and mtime)."""

from __future__ import annotations

from pathlib import Path

import typer

from edge_run.cli._common import console, print_json
from edge_run.core.errors import ArtifactError


def verify_command(
    artifacts: list[Path] = typer.Argument(..., help=".gguf files or ONNX artifact folders"),
    as_json: bool = typer.Option(False, "--json", help="print the verified artifacts as JSON"),
) -> None:
    """Recompute every sha256 an artifact's manifest records and compare (exit 5 on the first mismatch)."""
    from edge_run.runtime.artifacts.integrity import verify_artifact

    verified = []
    for artifact in artifacts:
        manifest = verify_artifact(artifact, full=True)
        if manifest is None:
            raise ArtifactError(f"{artifact} has no manifest, so there is nothing to verify it against",
                                "convert it with `edge-run convert` (which writes one)")
        verified.append({"artifact": str(artifact), "sha256": manifest.sha256, "file_size": manifest.file_size})
        if not as_json:
            console.print(f"ok {artifact} ({manifest.file_size} bytes, sha256 {manifest.sha256[:12]}...)")
    if as_json:
        print_json(verified)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_command)
