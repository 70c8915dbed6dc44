"""`edge-run convert`: HF checkpoint -> GGUF (llama.cpp quant types) or ONNX int4."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UsageError
from ._common import console, print_json, progress_bars


def convert(
    checkpoint: Path = typer.Argument(..., help="HF checkpoint folder (config.json, *.safetensors, tokenizer)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    fmt: str = typer.Option("gguf", "--format", "-f", help="gguf | onnx"),
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
    with progress_bars(enabled=not as_json) as progress:
        if fmt == "gguf":
            from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf

            imatrix = None
            if imatrix_text is not None:
                from edge_run.converters.gguf.imatrix import imatrix_for_checkpoint

                imatrix = imatrix_for_checkpoint(checkpoint, imatrix_text, out, progress=progress, name=name)
            paths = convert_to_gguf(checkpoint, out, ConvertOptions(
                quants=quant or "q4_k_m", intermediate=intermediate, name=name, force=force, n_threads=threads,
                imatrix=imatrix), progress=progress)
        elif fmt == "onnx":
            from edge_run.converters.onnx.convert import OnnxOptions, convert_to_onnx

            paths = convert_to_onnx(checkpoint, out, OnnxOptions(
                quant=quant or "int4", block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level,
                name=name, force=force), progress=progress)
        else:
            raise UsageError(f"unknown format {fmt!r}", "choose --format gguf or --format onnx")
    if as_json:
        print_json([str(p) for p in paths])
    else:
        for p in paths:
            console.print(f"wrote {p}")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
