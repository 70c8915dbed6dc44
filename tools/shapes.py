"""Random-weight checkpoints of real models' shapes (1B-8B), for memory, file-size and speed measurements.

One row per model in :data:`SHAPES`: the architecture values of its public config.json (the Hugging Face repo
named in ``source``). Text from random weights means nothing; memory, file sizes and speed are the real
model's. The tensor names and shapes are transformers' own, read from the model class built on the meta device
(nothing allocated); the tokenizer is a small byte-level BPE trained here (its ids, padded by the converter to the
config's vocab_size, give the GGUF the real vocabulary size).

The weights are streamed to disk tensor by tensor (bounded RAM, whatever the model size): BF16 values cut from a
pool of random normals at a random offset per tensor, norms set to one. ``--header-only`` writes the same
safetensors header and a sparse file of the full size (no disk used): enough for ``pick``, which plans from
headers alone.

Cache: ``<zoo>/shapes/<name>[-header]/`` (outside git, beside tools/zoo.py's checkpoints), built in a temp folder
and renamed into place; a ``shape.json`` stamp written last marks it complete.

    python -m tools.shapes list
    python -m tools.shapes build NAME [--header-only]        # prints the checkpoint folder
    python -m tools.shapes remove NAME                        # frees the disk again
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from edge_run.core.errors import UsageError
from edge_run.core.fsutil import cache_dir

SHAPES_FORMAT = 1
STAMP = "shape.json"
POOL_ELEMENTS = 1 << 24  # 32 MiB of BF16 random normals, reused at random offsets
CHUNK_ELEMENTS = 1 << 23
INIT_STD = 0.02
LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}


@dataclass(frozen=True)
class Shape:
    name: str
    source: str  # the public config the values come from (Hugging Face repo)
    config: Mapping[str, Any]  # config.json as published (architecture values; ids and dtype set below)

    @property
    def arch(self) -> str:
        return str(self.config["architectures"][0])


def _row(name: str, source: str, **config: Any) -> Shape:
    return Shape(name, source, MappingProxyType(config))


_LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
              attention_bias=False, mlp_bias=False)
_QWEN2 = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", rms_norm_eps=1e-6,
              rope_theta=1000000.0, max_position_embeddings=32768, use_sliding_window=False, sliding_window=None)

SHAPES: dict[str, Shape] = {s.name: s for s in (
    _row("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B", **_LLAMA, hidden_size=2048, intermediate_size=8192,
         num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32, vocab_size=49152,
         max_position_embeddings=8192, rope_theta=130000.0, tie_word_embeddings=True),
    _row("llama3.2-1b", "meta-llama/Llama-3.2-1B", **_LLAMA, hidden_size=2048, intermediate_size=8192,
         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
         max_position_embeddings=131072, rope_theta=500000.0, rope_scaling={**LLAMA3_ROPE, "factor": 32.0},
         tie_word_embeddings=True),
    _row("llama3.2-3b", "meta-llama/Llama-3.2-3B", **_LLAMA, hidden_size=3072, intermediate_size=8192,
         num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
         max_position_embeddings=131072, rope_theta=500000.0, rope_scaling={**LLAMA3_ROPE, "factor": 32.0},
         tie_word_embeddings=True),
    _row("llama3.1-8b", "meta-llama/Llama-3.1-8B", **_LLAMA, hidden_size=4096, intermediate_size=14336,
         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
         max_position_embeddings=131072, rope_theta=500000.0, rope_scaling={**LLAMA3_ROPE, "factor": 8.0},
         tie_word_embeddings=False),
    _row("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", **_QWEN2, hidden_size=1536, intermediate_size=8960,
         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
         tie_word_embeddings=True),
    _row("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", **_QWEN2, hidden_size=3584, intermediate_size=18944,
         num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
         tie_word_embeddings=False),
    _row("phi3-mini", "microsoft/Phi-3-mini-4k-instruct", architectures=["Phi3ForCausalLM"], model_type="phi3",
         hidden_act="silu", rms_norm_eps=1e-5, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
         num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
         original_max_position_embeddings=4096, rope_theta=10000.0, rope_scaling=None, sliding_window=2047,
         tie_word_embeddings=False),
)}


def shapes_root() -> Path:
    return cache_dir() / "zoo" / "shapes"


def _shape(name: str) -> Shape:
    if name not in SHAPES:
        raise UsageError(f"unknown shape {name!r}", f"known shapes: {', '.join(SHAPES)}")
    return SHAPES[name]


def folder(name: str, header_only: bool = False, root: Path | None = None) -> Path:
    return (root or shapes_root()) / (f"{name}-header" if header_only else name)


def tensor_table(shape: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor the checkpoint stores, in transformers' order (tied lm_head left out)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in shape.config.items() if k != "architectures"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    tied = bool(shape.config.get("tie_word_embeddings"))
    return [(n, tuple(t.shape)) for n, t in model.state_dict().items() if not (tied and n == "lm_head.weight")]


def _header(table: list[tuple[str, tuple[int, ...]]]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in table:
        n = int(np.prod(dims)) * 2
        entries[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _bf16_pool(rng: np.random.Generator) -> np.ndarray:
    values = (rng.standard_normal(POOL_ELEMENTS, dtype=np.float32) * INIT_STD).view(np.uint32)
    return (values >> 16).astype(np.uint16)


def _chunks(n: int, pool: np.ndarray, start: int, is_norm: bool) -> Iterator[np.ndarray]:
    one = np.full(min(n, CHUNK_ELEMENTS), 0x3F80, np.uint16)  # BF16 1.0
    done = 0
    while done < n:
        k = min(CHUNK_ELEMENTS, n - done)
        if is_norm:
            yield one[:k]
        else:
            idx = (start + done) % POOL_ELEMENTS
            part = pool[idx: idx + k]
            yield part if len(part) == k else np.concatenate([part, pool[: k - len(part)]])
        done += k


def _tokenizer(dest: Path) -> None:
    """A 512-token byte-level BPE (gpt2 pre-tokenizer) trained on the built-in WikiText-2 sample."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from edge_run.runtime.eval.corpora import builtin_corpus_path

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(builtin_corpus_path("wikitext-2-raw-test").read_text(encoding="utf-8")[:100_000]
                            .splitlines(), trainer)
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                            "add_bos_token": True}))


def build(name: str | Shape, header_only: bool = False, seed: int = 0, root: Path | None = None) -> Path:
    """The checkpoint folder of shape ``name`` (a row of SHAPES, or a Shape: tests make small ones), built under
    ``root`` (default: the zoo cache) on first use; header-only: a sparse weights file."""
    shape = name if isinstance(name, Shape) else _shape(name)
    dest = folder(shape.name, header_only, root)
    stamp = {"format": SHAPES_FORMAT, "name": shape.name, "source": shape.source, "config": dict(shape.config),
             "header_only": header_only, "seed": seed}
    if (dest / STAMP).is_file() and json.loads((dest / STAMP).read_text()) == stamp:
        return dest
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        table = tensor_table(shape)
        config = {**shape.config, "torch_dtype": "bfloat16", "bos_token_id": 0, "eos_token_id": 1}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _tokenizer(tmp)
        head = _header(table)
        total = len(head) + sum(int(np.prod(d)) * 2 for _, d in table)
        with open(tmp / "model.safetensors", "wb") as f:
            f.write(head)
            if header_only:
                f.truncate(total)  # sparse: the size the header promises, no blocks on disk
            else:
                rng = np.random.default_rng(seed)
                pool = _bf16_pool(rng)
                for tname, dims in table:
                    start = int(rng.integers(POOL_ELEMENTS))
                    for part in _chunks(int(np.prod(dims)), pool, start, len(dims) == 1 and "norm" in tname):
                        f.write(part.tobytes())
        (tmp / STAMP).write_text(json.dumps(stamp) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def parameter_count(name: str) -> int:
    return sum(int(np.prod(d)) for _, d in tensor_table(_shape(name)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    b = sub.add_parser("build")
    b.add_argument("names", nargs="+")
    b.add_argument("--header-only", action="store_true")
    r = sub.add_parser("remove")
    r.add_argument("names", nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for s in SHAPES.values():
            print(f"{s.name:14} {s.arch:20} {s.source}")
    elif args.cmd == "build":
        for n in args.names:
            print(build(n, args.header_only))
    else:
        for n in args.names:
            for d in (folder(_shape(n).name), folder(n, True)):
                shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
