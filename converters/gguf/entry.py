"""The gguf row's `edge-run convert --format gguf` entry (core/formats.py): a ConvertRequest -> convert_to_gguf,
with an importance matrix measured first when ``imatrix_text`` is given."""

from __future__ import annotations

from pathlib import Path

from edge_run.core.formats import ConvertRequest

from .convert import ConvertOptions, Progress, convert_to_gguf


def convert_request(checkpoint: Path, out_dir: Path, request: ConvertRequest,
                    progress: Progress | None = None) -> list[Path]:
    """The gguf row's `edge-run convert` entry (core/formats.py): options ``intermediate``, ``imatrix_text``."""
    imatrix = None
    text = request.options.get("imatrix_text")
    if text is not None:
        from .imatrix import imatrix_for_checkpoint

        imatrix = imatrix_for_checkpoint(checkpoint, Path(text), out_dir, progress=progress, name=request.name)
    return convert_to_gguf(checkpoint, out_dir, ConvertOptions(
        quants=request.quant or "q4_k_m", intermediate=str(request.options.get("intermediate", "f16")),
        name=request.name, force=request.force, n_threads=request.threads, imatrix=imatrix), progress=progress)
