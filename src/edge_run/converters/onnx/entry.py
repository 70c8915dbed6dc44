"""The onnx row's `edge-run convert --format onnx` entry (src/edge_run/core/formats.py): a ConvertRequest ->
convert_to_onnx."""

from __future__ import annotations

from pathlib import Path

from edge_run.converters.onnx.convert import OnnxOptions, Progress, convert_to_onnx
from edge_run.core.formats import ConvertRequest


def convert_request(checkpoint: Path, out_dir: Path, request: ConvertRequest,
                    progress: Progress | None = None) -> list[Path]:
    """The onnx row's `edge-run convert` entry (src/edge_run/core/formats.py): options ``block_size``, ``symmetric``,
    ``accuracy_level``, and ``imatrix_text`` as the calibrated schemes' calibration text."""
    opts = request.options
    return convert_to_onnx(checkpoint, out_dir, OnnxOptions(
        quant=request.quant or "int4", block_size=int(opts.get("block_size", 32)),
        symmetric=bool(opts.get("symmetric", False)), accuracy_level=int(opts.get("accuracy_level", 4)),
        name=request.name, force=request.force,
        calibration_text=Path(opts["imatrix_text"]) if opts.get("imatrix_text") else None), progress=progress)
