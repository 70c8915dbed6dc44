"""`edge-run convert`: HF checkpoint -> GGUF (llama.cpp quant types) or ONNX int4."""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from edge_run.cli._common import console, print_json, progress_bars
from edge_run.core.errors import UsageError
from edge_run.core.formats import FORMATS, ConvertRequest, get_format
from edge_run.core.quoting import check_name


def convert(
    checkpoint: Path = typer.Argument(..., help="HF checkpoint folder (config.json, *.safetensors, tokenizer)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    fmt: str = typer.Option("gguf", "--format", "-f", help="artifact format: " + " | ".join(FORMATS)),
    quant: str = typer.Option(None, "--quant", "-q",
                              help="comma list, e.g. q4_k_m,q8_0 (default q4_k_m; onnx: int4, int8, mixed, fp32; "
                                   "default int4)"),
    intermediate: str = typer.Option("f16", help="gguf: full-precision intermediate f32|f16|bf16"),
    name: str = typer.Option(None, help="artifact base name (default: the checkpoint folder's name)"),
    imatrix_text: Path = typer.Option(None, "--imatrix-text", help="gguf: text to compute an importance matrix on"),
    block_size: int = typer.Option(32, help="onnx: int4 block size (16..256)"),
    symmetric: bool = typer.Option(False, "--symmetric/--asymmetric",
                                   help="onnx: symmetric (no zero point) or asymmetric blocks"),
    accuracy_level: int = typer.Option(4, help="onnx: MatMulNBits accuracy level (0-4)"),
    threads: int = typer.Option(0, min=0, max=512, help="quantizer threads (0 = all; llama.cpp allows 512)"),
    force: bool = typer.Option(False, "--force", help="overwrite existing artifacts"),
    as_json: bool = typer.Option(False, "--json", help="print the artifacts as JSON"),
) -> None:
    """Convert a checkpoint into one or more quantized artifacts, each with a manifest."""
    if name is not None:
        check_name(name, "--name")  # before anything is read: quotes, '$(', newlines, '%' never reach a file
    row = get_format(fmt)  # UsageError naming the known formats
    if not row.converter:
        raise UsageError(f"edge-run has no converter to {fmt} artifacts", "convert to another --format")
    module, _, function = row.converter.partition(":")
    entry = getattr(importlib.import_module(module), function)
    options: dict[str, object] = {
        "intermediate": intermediate, "imatrix_text": imatrix_text, "block_size": block_size, "symmetric": symmetric,
        "accuracy_level": accuracy_level}
    if imatrix_text is not None:
        from edge_run.runtime.eval.imatrix import imatrix_for_checkpoint

        options["measure_imatrix"] = imatrix_for_checkpoint
    request = ConvertRequest(quant=quant, name=name, force=force, threads=threads, options=options)
    with progress_bars(enabled=not as_json) as progress:
        paths = entry(checkpoint, out, request, progress)
    if as_json:
        print_json([str(p) for p in paths])
    else:
        for p in paths:
            console.print(f"wrote {p}")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
