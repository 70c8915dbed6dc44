"""Importance matrix: per-column mean of squared activations entering every layer matrix, measured with
llama.cpp on a calibration text, for the quantizer (``llama_model_imatrix_data``).

How it is measured (the quantities llama.cpp's imatrix tool collects)::

    calibration text ──tokenize (BOS as the model adds it)──> chunks of ctx tokens, BOS first
        │
        └─ llama_decode(chunk) on the F16 GGUF, with cb_eval = the scheduler's eval callback
              ask=True : "do you want node t?"  yes for MUL_MAT(src0 = blk.*.weight, 2-D;
                                                        src1 = F32 activations with >= 16 rows)
              ask=False: node t was computed; src1 is readable:

                  src1 (activations)  ne = [n_in, n_rows]       src0 (weight) ne = [n_in, n_out]
                  ┌───────── n_in ─────────┐
                  │ x[0,0]  ...   x[0,n-1] │  row 0          values[j] += Σ_rows x[row, j]²
                  │   ...                  │                 count     += n_rows
                  └────────────────────────┘

    importance[weight name] = values / count   (float32, length n_in = ne[0] of the weight)

Stored as ``.npz`` keyed by the GGUF tensor name; quantize.py hands each array to llama.cpp.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_run.core.errors import ArtifactError, CorpusError, EdgeRunError, UsageError
from edge_run.core.fsutil import atomic_open, atomic_write_text, check_destination, check_plain_name, exclusive_folder

Progress = Callable[[str, int, int], None]
# (checkpoint, out_dir, name, progress) -> the F16 GGUF written into out_dir
F16Converter = Callable[[Path, Path, str, Progress | None], Path]

DEFAULT_CTX = 512
DEFAULT_MAX_CHUNKS = 64  # 32k tokens at ctx 512: enough to rank the columns of models this size
MIN_ROWS = 16  # llama.cpp's imatrix skips matrix products over fewer tokens than this
GGML_TYPE_F32 = 0
GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64


class GGMLTensor(ctypes.Structure):
    """``struct ggml_tensor`` from ggml.h (the fields up to ``name`` are what this module reads).

    The layout is checked at run time: every weight name read through it must be a tensor of the
    GGUF with the same first dimension, or :class:`ImatrixError` says the bindings changed.
    """


GGMLTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GGMLTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


class ImatrixError(EdgeRunError):
    exit_code = 3


def _op_id(name: bytes) -> int:
    """The ggml_op enum value of ``name`` (looked up by name: the enum shifts between ggml versions)."""
    from llama_cpp._ggml import libggml

    fn = libggml.ggml_op_name
    fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_int]
    for i in range(256):
        op = fn(i)
        if op == name:
            return i
    raise ImatrixError(f"this llama.cpp build has no {name.decode()} op", "reinstall llama-cpp-python")


def weight_name(raw: bytes) -> str:
    """``CPU#blk.0.attn_q.weight#0`` -> ``blk.0.attn_q.weight`` (backend copies are named that way)."""
    s = raw.decode("utf-8", "replace")
    if "#" in s:
        s = s.split("#")[1]
    return s


@dataclass
class Collector:
    """Accumulates squared activations per weight from the eval callback."""

    mul_mat: int
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None

    def wants(self, t: GGMLTensor) -> bool:
        if t.op != self.mul_mat or not t.src[0] or not t.src[1]:
            return False
        w, x = t.src[0].contents, t.src[1].contents
        return (weight_name(w.name).startswith("blk.") and w.ne[2] == 1 and w.ne[3] == 1
                and x.type == GGML_TYPE_F32 and x.ne[1] >= MIN_ROWS)

    def collect(self, t: GGMLTensor) -> None:
        w, x = t.src[0].contents, t.src[1].contents
        name = weight_name(w.name)
        shape = tuple(int(x.ne[i]) for i in reversed(range(GGML_MAX_DIMS)))  # numpy order [ne3, ne2, ne1, ne0]
        strides = tuple(int(x.nb[i]) for i in reversed(range(GGML_MAX_DIMS)))
        if strides[-1] != 4:
            raise ImatrixError(f"activations of {name} are not contiguous rows of float32")
        extent = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 4
        buf = (ctypes.c_char * extent).from_address(x.data)
        acts = np.ndarray(shape, dtype=np.float32, buffer=memoryview(buf), strides=strides).reshape(-1, shape[-1])
        sq = np.einsum("ij,ij->j", acts, acts, dtype=np.float64)
        if name in self.sums:
            if self.sums[name].shape != sq.shape:
                raise ImatrixError(f"inconsistent activation width for {name}")
            self.sums[name] += sq
            self.counts[name] += acts.shape[0]
        else:
            self.sums[name] = sq
            self.counts[name] = acts.shape[0]

    def callback(self) -> Callable[[int, bool, int], bool]:
        def cb(ptr: int, ask: bool, _user: int) -> bool:
            try:
                t = ctypes.cast(ptr, ctypes.POINTER(GGMLTensor)).contents
                if ask:
                    return self.wants(t)
                self.collect(t)
            except BaseException as e:  # never let an exception cross the C boundary
                if self.error is None:
                    self.error = e
            return True  # False would abort the graph computation
        return cb

    def result(self) -> dict[str, np.ndarray]:
        return {n: (s / self.counts[n]).astype(np.float32) for n, s in sorted(self.sums.items())}


def _tokenize(llama_cpp: object, vocab: object, text: str) -> list[int]:
    data = text.encode("utf-8")
    n_max = len(data) + 16
    buf = (llama_cpp.llama_token * n_max)()  # type: ignore[attr-defined]
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, n_max, True, False)  # type: ignore[attr-defined]
    if n < 0:
        raise ImatrixError("tokenizing the calibration text failed")
    return list(buf[:n])


@contextlib.contextmanager
def _llama(gguf_path: Path, ctx: int, threads: int, cb: object) -> Iterator[tuple[object, object, object]]:
    import llama_cpp

    from edge_run.runtime.backends.gguf import _quiet_stderr

    mparams = llama_cpp.llama_model_default_params()
    mparams.use_mmap = True
    with _quiet_stderr():
        model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), mparams)
    if not model:
        raise ArtifactError(f"llama.cpp could not load {gguf_path.name}")
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = ctx
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.cb_eval = cb
    cparams.cb_eval_user_data = None
    with _quiet_stderr():
        lctx = llama_cpp.llama_init_from_model(model, cparams)
    if not lctx:
        llama_cpp.llama_model_free(model)
        raise ArtifactError(f"llama.cpp could not create a context for {gguf_path.name}")
    try:
        yield llama_cpp, model, lctx
    finally:
        with _quiet_stderr():
            llama_cpp.llama_free(lctx)
            llama_cpp.llama_model_free(model)


def compute_imatrix(gguf_path: Path, text: str, *, ctx: int = DEFAULT_CTX,
                    max_chunks: int | None = DEFAULT_MAX_CHUNKS, threads: int | None = None,
                    progress: Progress | None = None) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """(importance per GGUF weight name, provenance) measured on ``text`` with the (F16) GGUF at ``gguf_path``."""
    from edge_run.core.gguf_header import read_gguf_header
    from edge_run.runtime.backends.base import physical_cores

    # row lengths from the tensor table (the vocabulary arrays are skipped, not parsed)
    shapes = {t.name: int(t.shape[0]) for t in read_gguf_header(gguf_path, max_items=0).tensors}
    collector = Collector(mul_mat=_op_id(b"MUL_MAT"))
    import llama_cpp as _lc

    cb = _lc.ggml_backend_sched_eval_callback(collector.callback())
    with _llama(gguf_path, ctx, threads or physical_cores(), cb) as (llama_cpp, model, lctx):
        vocab = llama_cpp.llama_model_get_vocab(model)  # type: ignore[attr-defined]
        tokens = _tokenize(llama_cpp, vocab, text)
        n_chunks = len(tokens) // ctx
        if n_chunks < 1:
            raise CorpusError(f"the calibration text has {len(tokens)} tokens, too few for one chunk of {ctx}",
                              "use a longer text")
        if max_chunks is not None:
            n_chunks = min(n_chunks, max_chunks)
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))  # type: ignore[attr-defined]
        bos = llama_cpp.llama_vocab_bos(vocab)  # type: ignore[attr-defined]
        batch = llama_cpp.llama_batch_init(ctx, 0, 1)  # type: ignore[attr-defined]
        try:
            for k in range(n_chunks):
                chunk = tokens[k * ctx:(k + 1) * ctx]
                if add_bos:
                    chunk[0] = bos
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(lctx), True)  # type: ignore[attr-defined]
                batch.n_tokens = len(chunk)
                for i, tok in enumerate(chunk):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = True  # every row flows through the last layer, as in llama.cpp's tool
                rc = llama_cpp.llama_decode(lctx, batch)  # type: ignore[attr-defined]
                if collector.error is not None:
                    raise collector.error
                if rc != 0:
                    raise ImatrixError(f"llama_decode failed on chunk {k + 1} (code {rc})")
                if progress:
                    progress("imatrix", k + 1, n_chunks)
        finally:
            llama_cpp.llama_batch_free(batch)  # type: ignore[attr-defined]
    result = collector.result()
    for name, arr in result.items():
        if shapes.get(name) != arr.size:
            raise ImatrixError(f"read a weight named {name!r} with {arr.size} columns that the GGUF does not have",
                               "the ggml_tensor layout of these bindings differs from ggml.h; update imatrix.py")
    if not result:
        raise ImatrixError("no matrix products were seen", "the model has no blk.* weights or the callback failed")
    info = {"chunks": n_chunks, "ctx": ctx, "tokens": n_chunks * ctx, "model": gguf_path.name,
            "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "entries": len(result)}
    return result, info


def save_imatrix(path: Path, imatrix: dict[str, np.ndarray], info: dict[str, object], force: bool = True) -> Path:
    """Write ``path`` (.npz, one float32 array per tensor name) and ``path.json`` (provenance), atomically."""
    with atomic_open(path, force=force) as f:
        np.savez(f, **imatrix)  # type: ignore[arg-type]  # numpy stubs: ** may bind allow_pickle
    atomic_write_text(path.with_name(path.name + ".json"), json.dumps(info, indent=2, sort_keys=True) + "\n",
                      force=True)
    return path


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def imatrix_for_checkpoint(checkpoint: Path, text_file: Path, out_dir: Path, *, name: str, to_f16: F16Converter,
                           progress: Progress | None = None, max_chunks: int | None = DEFAULT_MAX_CHUNKS,
                           ctx: int = DEFAULT_CTX, threads: int | None = None) -> Path:
    """Convert ``checkpoint`` to a temporary F16 GGUF with ``to_f16`` (the converter's, passed in by the caller:
    the runtime never imports a converter), measure the importance matrix on ``text_file`` and write
    ``out_dir/<name>.imatrix.npz`` (replaced if present: it is derived data). Returns its path."""
    from edge_run.runtime.eval.perplexity import load_corpus

    if ctx < MIN_ROWS:
        raise UsageError(f"imatrix context {ctx} is below {MIN_ROWS} tokens")
    text = load_corpus(text_file)
    name = check_plain_name(name)
    dest = Path(out_dir) / f"{name}.imatrix.npz"
    check_destination(dest, force=True)

    def staged(stage: str) -> Progress | None:
        return (lambda _s, done, total: progress(stage, done, total)) if progress else None

    with exclusive_folder(Path(out_dir)), \
            tempfile.TemporaryDirectory(prefix=f".edge-run-imatrix-{os.getpid()}-", dir=out_dir) as tmp:
        f16 = to_f16(checkpoint, Path(tmp), name, staged("imat-F16"))
        imatrix, info = compute_imatrix(f16, text.text, ctx=ctx, max_chunks=max_chunks, threads=threads,
                                        progress=progress)
    info["text"] = text.name
    return save_imatrix(dest, imatrix, info)
