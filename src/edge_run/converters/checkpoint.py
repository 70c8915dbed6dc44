"""Reading a Hugging Face checkpoint folder without loading it: config, tokenizer files and lazily
mapped safetensors tensors (one or several shards).

A safetensors file is:

    +----------------+------------------------------+-----------------------------------+
    | u64 LE  N      | N bytes of UTF-8 JSON header | raw tensor bytes (little endian)  |
    +----------------+------------------------------+-----------------------------------+
    header = {"name": {"dtype": "F32"|"F16"|"BF16"|..., "shape": [...], "data_offsets": [b, e]}, ...,
              "__metadata__": {...}}      offsets are relative to the start of the data section

We parse the header ourselves (so every defect gets a precise error) and map each tensor with
numpy.memmap, so converting never holds more than one tensor in memory. BF16 is widened to F32 by
a bit shift (no torch needed).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_run.core.errors import CheckpointError

# safetensors dtype -> (numpy dtype of the stored bytes, bytes per element)
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits; widened in LazyTensor.numpy()
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIM = 2**40  # no real tensor dimension comes near this; larger ones are corruption
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


FINITE_CHECK_ELEMENTS = 1 << 22  # checked at a time, so the check's own memory stays at 4 MiB of booleans


def check_finite(name: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` unchanged, or CheckpointError naming the tensor when it holds a NaN or an infinity (a quantizer
    would carry them into the artifact silently: F16 and ONNX int4 did, llama.cpp's Q8_0 aborted)."""
    if arr.dtype.kind != "f":
        return arr
    flat = arr.reshape(-1)
    for i in range(0, flat.size, FINITE_CHECK_ELEMENTS):
        block = flat[i:i + FINITE_CHECK_ELEMENTS]
        if not np.isfinite(block).all():
            j = i + int(np.flatnonzero(~np.isfinite(block))[0])
            raise CheckpointError(f"tensor {name!r} holds a non-finite value ({float(flat[j])} at element {j})",
                                  "the checkpoint is corrupt (or saved after training diverged): re-download it")
    return arr


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of an IEEE float32: shift the 16 bits into the high half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class LazyTensor:
    """A tensor inside a safetensors file, read only when asked."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the first axis as float32, read with plain file I/O: unlike an mmap
        slice, nothing stays mapped afterwards, so converting a large tensor in row chunks keeps the
        process's resident memory at one chunk."""
        np_dtype = SAFETENSORS_DTYPES[self.dtype]
        row_elems = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
        stop = min(stop, self.shape[0] if self.shape else 1)
        with open(self.file, "rb") as f:
            f.seek(self.offset + start * row_elems * np_dtype.itemsize)
            flat = np.fromfile(f, dtype=np_dtype, count=(stop - start) * row_elems)
        arr = flat.reshape((stop - start, *self.shape[1:]))
        return check_finite(self.name, bf16_to_f32(arr) if self.dtype == "BF16" else arr.astype(np.float32, copy=False))

    def row_range(self, start: int, stop: int, name: str) -> LazyTensor:
        """Rows [start, stop) as a tensor of their own (a part of a fused projection), still unread."""
        row_bytes = self.nbytes // self.shape[0]
        if not 0 <= start < stop <= self.shape[0]:
            raise CheckpointError(f"tensor {self.name!r} has {self.shape[0]} rows; rows {start}..{stop} were "
                                  "expected", "the weights do not match config.json's sizes")
        return LazyTensor(name, self.dtype, (stop - start, *self.shape[1:]), self.file,
                          self.offset + start * row_bytes, (stop - start) * row_bytes)

    def numpy(self, widen_bf16: bool = True) -> np.ndarray:
        """The tensor as a read-only memory-mapped array (F32 copy for BF16)."""
        np_dtype = SAFETENSORS_DTYPES[self.dtype]
        if self.nbytes == 0:
            return np.zeros(self.shape, dtype=np_dtype)
        arr = np.memmap(self.file, dtype=np_dtype, mode="r", offset=self.offset, shape=self.shape)
        if self.dtype == "BF16":
            check_finite(self.name, bf16_to_f32(np.asarray(arr)))
            return bf16_to_f32(np.asarray(arr)) if widen_bf16 else arr
        return check_finite(self.name, arr)


def _parse_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """Return (header dict, data start offset, file size) with every structural defect reported."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name} is truncated ({size} bytes, no safetensors header)",
                                      "re-download or re-save the checkpoint")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{path.name} has an invalid safetensors header length ({n} bytes "
                                      f"in a {size}-byte file)", "the file is corrupt or truncated: re-download it")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path.name} has a corrupt safetensors header ({e.__class__.__name__})",
                              "re-download or re-save the checkpoint") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has a safetensors header that is not a JSON object")
    return header, 8 + n, size


def read_safetensors_index(path: Path) -> list[LazyTensor]:
    """All tensors of one safetensors file, validated against the file's real size."""
    header, data_start, size = _parse_header(path)
    data_len = size - data_start
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise CheckpointError(f"{path.name}: entry {name!r} lacks dtype/shape/data_offsets")
        dtype = info["dtype"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path.name}: tensor {name!r} has unsupported dtype {dtype!r}",
                                  f"supported: {', '.join(SAFETENSORS_DTYPES)}")
        shape, offsets = info["shape"], info["data_offsets"]
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"{path.name}: tensor {name!r} has a malformed shape or data_offsets")
        if any(d > MAX_DIM for d in shape):
            raise CheckpointError(f"{path.name}: tensor {name!r} has an absurd dimension in shape {shape}",
                                  "the file is corrupt: re-download it")
        begin, end = offsets
        expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize  # exact: Python ints, no overflow
        if not 0 <= begin <= end or end > data_len:
            raise CheckpointError(f"{path.name}: tensor {name!r} lies past the end of the file "
                                  f"(bytes {begin}..{end} of {data_len})",
                                  "the file is truncated: re-download it")
        if end - begin != expected:
            raise CheckpointError(f"{path.name}: tensor {name!r} has {end - begin} bytes but dtype {dtype} "
                                  f"and shape {shape} need {expected}", "the file is corrupt: re-download it")
        tensors.append(LazyTensor(name, dtype, tuple(shape), path, data_start + begin, end - begin))
    if not tensors:
        raise CheckpointError(f"{path.name} holds no tensors")
    return tensors


@dataclass
class Checkpoint:
    """A validated HF checkpoint folder. Tensors are listed, not loaded."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, LazyTensor]
    weight_files: list[Path]

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else str(self.config.get("model_type", "?"))

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def text_config(self) -> dict[str, Any]:
        """Multimodal configs nest the language model's hyper-parameters under text_config."""
        nested = self.config.get("text_config")
        return {**self.config, **nested} if isinstance(nested, dict) else dict(self.config)

    def __iter__(self) -> Iterator[LazyTensor]:
        return iter(self.tensors.values())

    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())

    def file(self, name: str) -> Path | None:
        p = self.path / name
        return p if p.is_file() else None

    def read_json(self, name: str) -> dict[str, Any] | None:
        p = self.file(name)
        if p is None:
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise CheckpointError(f"{p} is not valid JSON ({e})", "fix or re-download the file") from e
        if not isinstance(data, dict):
            raise CheckpointError(f"{p} is not a JSON object")
        return data

    def digest(self) -> str:
        """sha256 over config.json and every weight file's header and size (cheap, content-sensitive
        for renames, shape and dtype changes; the full-data hash lives in each artifact's manifest)."""
        h = hashlib.sha256()
        h.update((self.path / "config.json").read_bytes())
        for wf in self.weight_files:
            header, start, size = _parse_header(wf)
            h.update(wf.name.encode())
            h.update(struct.pack("<QQ", start, size))
            h.update(json.dumps(header, sort_keys=True).encode())
            with open(wf, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                # sample the data so a re-trained checkpoint with identical shapes differs
                step = max(1, (size - start) // 64)
                for off in range(start, size, step):
                    h.update(m[off:off + 64])
        return h.hexdigest()


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index.name} is invalid ({e.__class__.__name__})",
                                  "re-download the checkpoint") from e
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index.name} has no valid weight_map (tensor name -> shard file)",
                                  "re-download the checkpoint")
        names = sorted(set(weight_map.values()))
        for n in names:
            if Path(n).name != n:
                raise CheckpointError(f"{index.name} names shard {n!r} outside the checkpoint folder")
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise CheckpointError(f"shard(s) {', '.join(missing)} listed in {index.name} are missing",
                                  "download the complete checkpoint")
        return [path / n for n in names]
    files = sorted(p for p in path.glob("*.safetensors") if p.is_file())  # a FIFO would block the first read
    if files:
        return files
    pickled = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickled:
        raise CheckpointError(f"{path} has only pickled weights ({', '.join(sorted(pickled))}); edge-run never "
                              "unpickles checkpoints", "convert them to safetensors first (e.g. with "
                              "transformers' save_pretrained(safe_serialization=True)) on a trusted machine")
    raise CheckpointError(f"{path} has no *.safetensors weights", "pass a Hugging Face checkpoint folder")


def open_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint folder {path} does not exist", "pass a Hugging Face checkpoint folder")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder", "pass a Hugging Face checkpoint folder (config.json, "
                              "*.safetensors, tokenizer)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} has no config.json", "pass a Hugging Face checkpoint folder")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"config.json is not valid JSON ({e})", "fix or re-download it") from e
    if not isinstance(config, dict):
        raise CheckpointError("config.json is not a JSON object", "fix or re-download it")
    files = _weight_files(path)
    tensors: dict[str, LazyTensor] = {}
    for wf in files:
        for t in read_safetensors_index(wf):
            if t.name in tensors:
                raise CheckpointError(f"tensor {t.name!r} appears in two shards", "re-download the checkpoint")
            tensors[t.name] = t
    return Checkpoint(path=path, config=config, tensors=tensors, weight_files=files)
