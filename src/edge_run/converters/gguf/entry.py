"""The gguf row's `edge-run convert --format gguf` entry (src/edge_run/core/formats.py): a ConvertRequest ->
convert_to_gguf,
with an importance matrix measured first when ``imatrix_text`` is given. Measuring runs llama.cpp over text, a
runtime job: the command layer passes the measuring function in (``measure_imatrix``), and this module hands it
``f16_gguf``, the one piece of the measurement that is a conversion."""

from __future__ import annotations

from pathlib import Path

from edge_run.converters.checkpoint import open_checkpoint
from edge_run.converters.gguf.convert import ConvertOptions, Progress, convert_to_gguf
from edge_run.core.errors import UsageError
from edge_run.core.formats import ConvertRequest
from edge_run.core.quoting import artifact_base_name


def f16_gguf(checkpoint: Path, out_dir: Path, name: str, progress: Progress | None = None) -> Path:
    """The F16 GGUF an importance matrix is measured on (src/edge_run/runtime/eval/imatrix.py's ``to_f16``)."""
    (path,) = convert_to_gguf(checkpoint, out_dir, ConvertOptions(quants="f16", name=name), progress=progress)
    return path


def convert_request(checkpoint: Path, out_dir: Path, request: ConvertRequest,
                    progress: Progress | None = None) -> list[Path]:
    """The gguf row's `edge-run convert` entry (src/edge_run/core/formats.py): options ``intermediate``,
    ``imatrix_text`` with
    ``measure_imatrix`` (runtime.imatrix.imatrix_for_checkpoint, from the command layer)."""
    imatrix = None
    text = request.options.get("imatrix_text")
    if text is not None:
        measure = request.options.get("measure_imatrix")
        if measure is None:
            raise UsageError("an importance matrix was asked for without the function that measures it",
                             "pass options['measure_imatrix'] = edge_run.runtime.eval.imatrix.imatrix_for_checkpoint")
        name = artifact_base_name(request.name, open_checkpoint(checkpoint).name)
        imatrix = measure(checkpoint, Path(text), out_dir, name=name, to_f16=f16_gguf, progress=progress)
    return convert_to_gguf(checkpoint, out_dir, ConvertOptions(
        quants=request.quant or "q4_k_m", intermediate=str(request.options.get("intermediate", "f16")),
        name=request.name, force=request.force, n_threads=request.threads, imatrix=imatrix), progress=progress)
