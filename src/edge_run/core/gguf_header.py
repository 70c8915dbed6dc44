"""A bounded reader of a GGUF file's header: the key-values and the tensor table, nothing else.

GGUF layout (little-endian, versions 2 and 3; llama.cpp's ggml/src/gguf.cpp)::

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x       string key | u32 value type | value
                 string = u64 byte length + UTF-8 bytes
                 array  = u32 item type + u64 count + count items (strings: each with its own length)
    n_tensors x  string name | u32 n_dims | n_dims x u64 ne (ne[0] = row length) | u32 ggml type | u64 offset
    zero padding to general.alignment (default 32) -> tensor data; tensor i at data_start + offset_i

Unlike gguf-py's GGUFReader, which builds numpy views of every item (seconds for a 150k-token vocabulary),
this reader decodes scalars and short arrays only. A long array (tokenizer tokens, scores, merges) is
skipped: a numeric one by count x item size, a string one by hopping over each length-prefixed item,
and only its item type and count are kept. Every count and length is checked against the bytes left in
the file before it is used, so a corrupt header fails at once instead of allocating or looping on a
count of 2^60; every failure is an ArtifactError.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_run.core.errors import ArtifactError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# arrays longer than this are skipped unless asked for (llama.cpp's per-layer arrays are far shorter)
DEFAULT_MAX_ITEMS = 4096

# GGUF value type -> (struct format, size in bytes); 8 = string, 9 = array are variable-length
VALUE_TYPES: dict[int, tuple[str, int]] = {
    0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4), 7: ("?", 1),
    10: ("Q", 8), 11: ("q", 8), 12: ("d", 8),
}
STRING, ARRAY = 8, 9

# ggml type id -> (name, elements per block, bytes per block)   (ggml.h enum ggml_type, gguf-py GGML_QUANT_SIZES;
# Q8_1 is left out: only a dot-product scratch type, never stored in a file)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class SkippedArray:
    """An array the reader stepped over: its GGUF item type and length."""

    item_type: int
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type_id: int
    type_name: str
    shape: tuple[int, ...]  # ne[0] (row length) first, as stored
    offset: int  # from the start of the data section
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, Any]  # scalars, strings, lists; a SkippedArray for a skipped array
    tensors: tuple[GGUFTensor, ...]
    data_offset: int
    file_size: int

    def array_length(self, key: str) -> int | None:
        value = self.fields.get(key)
        return len(value) if isinstance(value, list | SkippedArray) else None


class _Corrupt(Exception):
    pass


class _Cursor:
    """Reads little-endian values from a mapped file, never past its end."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str = "a field") -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Corrupt(f"{what} at byte {self.pos} runs past the end of the file")

    def u32(self) -> int:
        self.need(4)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self) -> int:
        self.need(8)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def string(self) -> str:
        n = self.u64()
        self.need(n, "a string")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(raw).decode("utf-8", errors="replace")

    def scalar(self, vtype: int) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype not in VALUE_TYPES:
            raise _Corrupt(f"unknown value type {vtype} at byte {self.pos - 4}")
        fmt, size = VALUE_TYPES[vtype]
        self.need(size)
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return v

    def array(self, keep: bool, depth: int = 0) -> list[Any] | SkippedArray:
        item_type = self.u32()
        count = self.u64()
        min_item = 8 if item_type in (STRING, ARRAY) else VALUE_TYPES.get(item_type, ("", 0))[1]
        if item_type not in VALUE_TYPES and item_type not in (STRING, ARRAY):
            raise _Corrupt(f"unknown array item type {item_type} at byte {self.pos - 12}")
        self.need(count * min_item, f"an array of {count} items")
        if item_type == ARRAY:
            if depth > 4:
                raise _Corrupt(f"arrays nested too deep at byte {self.pos}")
            items = [self.array(keep, depth + 1) for _ in range(count)]
            return items if keep else SkippedArray(item_type, count)
        if item_type == STRING:
            if keep:
                return [self.string() for _ in range(count)]
            self._skip_strings(count)
            return SkippedArray(item_type, count)
        fmt, size = VALUE_TYPES[item_type]
        if keep:
            values = list(struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos))
            self.pos += count * size
            return values
        self.pos += count * size
        return SkippedArray(item_type, count)

    def _skip_strings(self, count: int) -> None:
        buf, size, unpack, pos = self.buf, self.size, _U64.unpack_from, self.pos
        for _ in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, "a string")
            pos += 8 + unpack(buf, pos)[0]
        self.pos = pos
        self.need(0, "a string")  # the last string's bytes must lie inside the file too


def read_gguf_header(path: Path, max_items: int | None = DEFAULT_MAX_ITEMS,
                     skip_keys: frozenset[str] = frozenset()) -> GGUFHeader:
    """Parse ``path``'s header. Arrays longer than ``max_items`` (None: no limit) or named in ``skip_keys``
    are skipped (a SkippedArray in ``fields``). ArtifactError when the file is not a well-formed GGUF."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise _Corrupt(f"{size} bytes is too short for a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(_Cursor(buf, size), max_items, skip_keys)
    except _Corrupt as e:
        raise ArtifactError(f"{path.name} is not a readable GGUF file ({e})", "re-convert or re-download it") from e
    except (OSError, ValueError, OverflowError, struct.error) as e:
        raise ArtifactError(f"{path.name} is not a readable GGUF file ({e})", "re-convert or re-download it") from e


def _parse(cur: _Cursor, max_items: int | None, skip_keys: frozenset[str]) -> GGUFHeader:
    cur.need(4)
    if bytes(cur.buf[0:4]) != GGUF_MAGIC:
        raise _Corrupt("no GGUF magic")
    cur.pos = 4
    version = cur.u32()
    if version not in SUPPORTED_VERSIONS:
        raise _Corrupt(f"GGUF version {version} is not supported")
    n_tensors, n_kv = cur.u64(), cur.u64()
    # smallest possible entries: a key-value is 8 + 4 + 1 bytes, a tensor info 8 + 4 + 8 + 4 + 8
    cur.need(n_kv * 13, f"{n_kv} key-value pairs")
    cur.need(n_tensors * 32, f"a table of {n_tensors} tensors")
    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.u32()
        if key in fields:
            raise _Corrupt(f"duplicate key {key!r}")
        if vtype == ARRAY:
            at = cur.pos
            cur.need(12)
            count = _U64.unpack_from(cur.buf, at + 4)[0]
            keep = key not in skip_keys and (max_items is None or count <= max_items)
            fields[key] = cur.array(keep)
        else:
            fields[key] = cur.scalar(vtype)
    tensors = _tensor_table(cur, n_tensors)
    alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
            or alignment & (alignment - 1):
        raise _Corrupt(f"general.alignment {alignment!r} is not a power of two")
    data_offset = (cur.pos + alignment - 1) // alignment * alignment
    for t in tensors:
        if data_offset + t.offset + t.n_bytes > cur.size:
            raise _Corrupt(f"tensor {t.name!r} runs past the end of the file")
    return GGUFHeader(version=version, fields=fields, tensors=tuple(tensors), data_offset=data_offset,
                      file_size=cur.size)


def _tensor_table(cur: _Cursor, n_tensors: int) -> list[GGUFTensor]:
    tensors: list[GGUFTensor] = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.u32()
        if n_dims > MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        shape = tuple(cur.u64() for _ in range(n_dims))
        type_id = cur.u32()
        offset = cur.u64()
        if type_id not in GGML_TYPES:
            raise _Corrupt(f"tensor {name!r} has unknown ggml type {type_id}")
        if name in names:
            raise _Corrupt(f"duplicate tensor {name!r}")
        names.add(name)
        type_name, block, block_bytes = GGML_TYPES[type_id]
        n_elements = 1
        for d in shape:
            n_elements *= d
        if shape and shape[0] % block:
            raise _Corrupt(f"tensor {name!r} has rows of {shape[0]}, not a multiple of {type_name}'s block of {block}")
        n_bytes = n_elements // block * block_bytes
        if n_bytes > cur.size:  # also bounds the element count before anything uses it
            raise _Corrupt(f"tensor {name!r} ({n_bytes} bytes) runs past the end of the file")
        tensors.append(GGUFTensor(name, type_id, type_name, shape, offset, n_elements, n_bytes))
    return tensors
