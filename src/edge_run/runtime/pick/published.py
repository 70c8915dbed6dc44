"""Published WikiText-2 quality of known models: the picker's prior for a model nothing of which is measured here.

Each figure is a llama.cpp perplexity (`llama-perplexity`, WikiText-2 `wiki.test.raw`, ctx 512: the corpus and
context of edge-run's own reference measurement) copied from the source its row cites; a model or quant type with
no published figure has no row. A perplexity becomes bits per byte through the tokens its tokenizer makes of that
text: BPB = ln(PPL) / ln(2) * tokens / bytes (the corpus average; edge-run's own eval counts the scored tokens'
bytes exactly, the difference is well under 1%).

A candidate is matched to a model by its name (the checkpoint folder, the Hugging Face cache's repo folder or the
artifact's base name, compared without case or punctuation, so a fine-tune such as ``-Instruct`` is another model)
and the model's shape (layers, width, vocabulary), so a folder named after a model it does not hold gets nothing.
Only used while nothing of the candidate's own model is measured (src/edge_run/runtime/pick/quality.py), and
labelled "published".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WIKITEXT2_TEST_BYTES = 1_290_590  # wiki.test.raw (src/edge_run/runtime/eval/data/SOURCES.md)

# source -> citation
SOURCES: dict[str, str] = {
    "llama.cpp-l3-scoreboard": (
        "llama.cpp tools/perplexity/README.md, 'LLaMA 3 8b Scoreboard' (revision f364eb6f, CUDA, RTX 4090; "
        "WikiText-2 test, ctx 512; imatrix 'WT 10m' rows for +imat) "
        "https://github.com/ggml-org/llama.cpp/blob/master/tools/perplexity/README.md"),
    "llama.cpp-l2-vs-l3": (
        "llama.cpp tools/perplexity/README.md, 'LLaMA 2 vs. LLaMA 3 Quantization comparison', Mean PPL row "
        "(revision f364eb6f) https://github.com/ggml-org/llama.cpp/blob/master/tools/perplexity/README.md"),
    "qwen2-gguf-cards": (
        "Qwen/Qwen2-{0.5B,1.5B,7B}-Instruct-GGUF model cards, 'Evaluation' table (llama-perplexity on wikitext, "
        "following llama.cpp's practice) https://huggingface.co/Qwen/Qwen2-1.5B-Instruct-GGUF"),
}

# tokenizer -> (tokens of wiki.test.raw with BOS, how it is known). Counted here with llama-cpp-python's tokenizer
# on llama.cpp's own vocabulary files (vendor/llama.cpp/models/ggml-vocab-<name>.gguf of the installed sdist);
# the chunk counts llama.cpp's maintainers report (tokens // 512) agree where one is published.
TOKENIZERS: dict[str, tuple[int, str]] = {
    "llama3": (289_077, "ggml-vocab-llama-bpe.gguf: 564 chunks of 512, as llama.cpp PR #6936 reports for LLaMA 3"),
    "llama2": (335_688, "ggml-vocab-llama-spm.gguf: 655 chunks of 512, as llama.cpp PR #270 reports for LLaMA"),
    "qwen2": (299_078, "ggml-vocab-qwen2.gguf: 584 chunks of 512"),
}


@dataclass(frozen=True)
class PublishedModel:
    name: str  # the published model (Hugging Face repo)
    aliases: tuple[str, ...]  # other names a local copy is commonly given
    tokenizer: str  # a TOKENIZERS row
    n_layer: int
    n_embd: int
    n_vocab: int

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(_key(n) for n in (self.name.rpartition("/")[2], *self.aliases))


MODELS: dict[str, PublishedModel] = {m.name: m for m in (
    PublishedModel("meta-llama/Meta-Llama-3-8B", ("Llama-3-8B", "Llama3-8B"), "llama3", 32, 4096, 128256),
    PublishedModel("meta-llama/Llama-2-7b-hf", ("Llama-2-7b", "Llama2-7b"), "llama2", 32, 4096, 32000),
    PublishedModel("Qwen/Qwen2-0.5B-Instruct", (), "qwen2", 24, 896, 151936),
    PublishedModel("Qwen/Qwen2-1.5B-Instruct", (), "qwen2", 28, 1536, 151936),
    PublishedModel("Qwen/Qwen2-7B-Instruct", (), "qwen2", 28, 3584, 152064),
)}


@dataclass(frozen=True)
class Published:
    model: str  # a MODELS row
    quant: str
    imatrix: bool
    ppl: float
    source: str  # a SOURCES row

    @property
    def bpb(self) -> float:
        tokens, _ = TOKENIZERS[MODELS[self.model].tokenizer]
        return math.log(self.ppl) / math.log(2) * tokens / WIKITEXT2_TEST_BYTES


def _rows(model: str, source: str, imatrix: bool, figures: str) -> tuple[Published, ...]:
    """``figures``: "QUANT=PPL ..." as the source prints them."""
    return tuple(Published(model, q, imatrix, float(p), source)
                 for q, p in (pair.split("=") for pair in figures.split()))


_L3 = "meta-llama/Meta-Llama-3-8B"
PUBLISHED: tuple[Published, ...] = (
    *_rows(_L3, "llama.cpp-l3-scoreboard", False,
           "F16=6.233160 Q8_0=6.234284 Q6_K=6.253382 Q5_K_M=6.288607 Q5_K_S=6.336598 Q5_1=6.337857 Q5_0=6.363224 "
           "Q4_K_M=6.407115 Q4_K_S=6.500529 Q4_1=6.682737 Q4_0=6.700147 Q3_K_L=6.787876 Q3_K_M=6.888498 "
           "Q3_K_S=7.863786 Q2_K=9.751568"),
    *_rows(_L3, "llama.cpp-l3-scoreboard", True,
           "Q4_K_M=6.382937 Q4_K_S=6.409697 Q3_K_L=6.671223 Q3_K_M=6.734255 Q3_K_S=7.602878 Q2_K=8.647825"),
    *_rows("meta-llama/Llama-2-7b-hf", "llama.cpp-l2-vs-l3", False,
           "Q8_0=5.798542 Q6_K=5.808494 Q4_K_M=5.877078 Q2_K=5.794552"),
    *_rows("Qwen/Qwen2-0.5B-Instruct", "qwen2-gguf-cards", False,
           "F16=15.11 Q8_0=15.13 Q6_K=15.14 Q5_K_M=15.24 Q5_0=15.40 Q4_K_M=15.36 Q4_0=16.28 Q3_K_M=15.70 Q2_K=16.74"),
    *_rows("Qwen/Qwen2-1.5B-Instruct", "qwen2-gguf-cards", False,
           "F16=10.43 Q8_0=10.43 Q6_K=10.45 Q5_K_M=10.50 Q5_0=10.56 Q4_K_M=10.61 Q4_0=10.79 Q3_K_M=11.08 Q2_K=13.04"),
    *_rows("Qwen/Qwen2-7B-Instruct", "qwen2-gguf-cards", False,
           "F16=7.93 Q8_0=7.94 Q6_K=7.96 Q5_K_M=7.97 Q5_0=7.98 Q4_K_M=8.02 Q4_0=8.19 Q3_K_M=8.20 Q2_K=10.58"),
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def local_names(model: str, checkpoint: Path | None, path: Path | None) -> tuple[str, ...]:
    """The names a local model goes by: its own, and the repo of a Hugging Face cache folder it sits in
    (``models--<org>--<name>/snapshots/<revision>``)."""
    names = [model]
    for p in (checkpoint, path):
        for part in (p.parts if p is not None else ()):
            if part.startswith("models--"):
                names.append(part.split("--")[-1])
    return tuple(names)


def match(names: Iterable[str], n_layer: int, n_embd: int, n_vocab: int) -> PublishedModel | None:
    """The published model a local one is: one of its names and its shape agree."""
    keys = {_key(n) for n in names}
    for m in MODELS.values():
        if keys & m.keys and (m.n_layer, m.n_embd, m.n_vocab) == (n_layer, n_embd, n_vocab):
            return m
    return None


def references(model: PublishedModel) -> list[tuple[str, dict[str, Any]]]:
    """(quant, quality entry) of every published figure of ``model``, in the form measured entries take."""
    tokens, _ = TOKENIZERS[model.tokenizer]
    return [(p.quant, {"bpb": p.bpb, "ppl": p.ppl, "imatrix": p.imatrix, "tokens_scored": tokens,
                       "bytes_scored": WIKITEXT2_TEST_BYTES, "source": SOURCES[p.source],
                       "basis": f"published {p.quant}{'+imat' if p.imatrix else ''}"})
            for p in PUBLISHED if p.model == model.name]
