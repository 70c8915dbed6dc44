"""`edge-run inspect`: an artifact's manifest and its GGUF metadata / ONNX graph summary."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edge_run.cli._common import console, print_json
from edge_run.runtime.artifacts.inspection import describe_artifact


def inspect(
    artifact: Path = typer.Argument(..., help=".gguf file or ONNX artifact folder"),
    as_json: bool = typer.Option(False, "--json"),
    tensors: bool = typer.Option(False, "--tensors", help="list every tensor"),
) -> None:
    """Show what an artifact is: manifest, metadata, tensor types."""
    info = describe_artifact(artifact, with_tensors=tensors)
    if as_json:
        print_json(info)
        return
    for section in ("manifest", "metadata", "tensor_types"):
        data = info.get(section)
        if not data:
            continue
        table = Table(title=section, show_header=False, title_justify="left")
        for k, v in data.items():
            s = str(v)
            table.add_row(str(k), s if len(s) < 160 else s[:157] + "...")
        console.print(table)
    if tensors and info.get("tensors"):
        table = Table("name", "type", "shape", title="tensors", title_justify="left")
        for t in info["tensors"]:
            table.add_row(t["name"], t["type"], str(t["shape"]))
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
