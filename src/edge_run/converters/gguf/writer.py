"""Write a full-precision (F32 / F16 / BF16) GGUF from a checkpoint, one tensor at a time.

GGUF file layout (gguf-py's GGUFWriter writes it; we drive it in streaming mode):

    +-------+---------+----------+----------+-------------+-------------+---------+------------------+
    | GGUF  | version | n_tensor | n_kv     | kv pairs    | tensor info | padding | tensor data ...  |
    | magic | u32     | u64      | u64      | (metadata)  | name/shape/ | to 32 B | each aligned to  |
    |       |         |          |          |             | type/offset |         | 32 B             |
    +-------+---------+----------+----------+-------------+-------------+---------+------------------+

Tensor infos are declared first from shapes alone (no data read); then each tensor is read from
the safetensors mmap, transformed and written, so peak memory is one tensor, not the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from edge_run.converters.architectures import ArchSpec
from edge_run.converters.checkpoint import Checkpoint
from edge_run.converters.gguf.hparams import write_common
from edge_run.converters.gguf.quant_types import QUANT_TYPES
from edge_run.converters.gguf.tensors import plan_tensors
from edge_run.converters.gguf.vocab import VocabInfo, add_vocab
from edge_run.core import __version__
from edge_run.core.errors import CheckpointError

ProgressFn = Callable[[int, int], None]

# numpy dtype of the bytes written for each full-precision GGUF type
STORAGE_DTYPES: dict[gguf.GGMLQuantizationType, np.dtype] = {
    gguf.GGMLQuantizationType.F32: np.dtype(np.float32),
    gguf.GGMLQuantizationType.F16: np.dtype(np.float16),
    gguf.GGMLQuantizationType.BF16: np.dtype(np.uint16),
}


def write_full_precision(ckpt: Checkpoint, spec: ArchSpec, outtype: str, dest: Path, model_name: str,
                         progress: ProgressFn | None = None,
                         vocab: VocabInfo | None = None) -> tuple[VocabInfo, int, int]:
    """Write ``dest`` (a temp path chosen by the caller); return (vocab, weight bytes, weight elements).
    ``vocab``: the checkpoint's build_vocab result, if the caller made it already."""
    cfg = ckpt.text_config()
    n_vocab = int(cfg.get("vocab_size", 0))
    if n_vocab <= 0:
        raise CheckpointError("config.json lacks a valid 'vocab_size'", "the checkpoint's config is incomplete")
    plan = plan_tensors(ckpt, spec, outtype)
    emb = next(p for p in plan if p.gguf_name == "token_embd.weight")
    if emb.shape[0] != n_vocab:
        raise CheckpointError(f"embedding has {emb.shape[0]} rows but config.json says vocab_size={n_vocab}",
                              "the config does not belong to these weights")

    w = gguf.GGUFWriter(dest, gguf.MODEL_ARCH_NAMES[spec.gguf_arch])
    w.add_name(model_name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_string("general.quantized_by", f"edge-run {__version__}")
    w.add_file_type(QUANT_TYPES[outtype.upper()].ftype)
    write_common(w, cfg, spec)
    vocab = add_vocab(w, ckpt, n_vocab, vocab)
    for p in plan:
        # shapes are given in numpy order; GGUFWriter stores them innermost-first
        w.add_tensor_info(p.gguf_name, p.shape, STORAGE_DTYPES[p.qtype], p.nbytes, raw_dtype=p.qtype)
    w.write_header_to_file(dest)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i, p in enumerate(plan):
        w.write_tensor_data(p.streamed(cfg))  # type: ignore[arg-type]
        if progress:
            progress(i + 1, len(plan))
    w.close()
    return vocab, sum(p.nbytes for p in plan), sum(p.n_elements for p in plan)
