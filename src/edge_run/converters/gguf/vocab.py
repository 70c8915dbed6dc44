"""Tokenizer metadata for GGUF, read from the checkpoint's ``tokenizer.json`` (HF tokenizers format).

Two llama.cpp vocab kinds are produced:

* ``gpt2``  byte-level BPE: tokens in byte-level alphabet, merges, and ``tokenizer.ggml.pre`` naming
  the pre-tokenizer regexes llama.cpp must apply. The pre name is chosen by matching the
  tokenizer's own pre-tokenizer split rules against ``PRE_TOKENIZERS`` (data, below).
* ``llama`` SentencePiece: pieces with scores (Unigram models carry them; SentencePiece-BPE models
  get -rank) and token types (normal / unknown / control / user-defined / unused / byte).

Special ids, add_bos/add_eos, merges and the chat template come through gguf-py's SpecialVocab.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from edge_run.converters.checkpoint import Checkpoint
from edge_run.core.errors import CheckpointError

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
DIGIT_SPLIT = r"\p{N}"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# The split rules a tokenizer.json pre-tokenizer applies (in order) -> llama.cpp's pre name with
# the same rules (llama.cpp: src/llama-vocab.cpp, llm_tokenizer_bpe regex_exprs).
PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    (GPT2_REGEX,): "gpt-2",
    (DIGIT_SPLIT, GPT2_REGEX): "smollm",
    (LLAMA3_REGEX,): "llama-bpe",
    (QWEN2_REGEX,): "qwen2",
}

TT = gguf.TokenType
BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass
class VocabInfo:
    model: str  # "gpt2" | "llama"
    pre: str | None
    tokens: list[str]
    scores: list[float] | None
    types: list[int]
    add_space_prefix: bool | None = None  # SentencePiece: prepend "▁" to the text before tokenizing

    @property
    def kind(self) -> str:
        return self.model


def split_rules(pre: dict[str, Any] | None) -> tuple[str, ...]:
    """The regexes a tokenizers pre-tokenizer splits on, in order (ByteLevel(use_regex) = GPT-2's)."""
    if not pre:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        return tuple(r for p in pre.get("pretokenizers", []) for r in split_rules(p))
    if kind == "ByteLevel":
        return (GPT2_REGEX,) if pre.get("use_regex", True) else ()
    if kind == "Digits":
        return (DIGIT_SPLIT,) if pre.get("individual_digits") else (r"\p{N}+",)
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return (pattern.get("Regex") or re.escape(pattern.get("String", "")),)
    return (f"<{kind}>",)


def _walk(node: Any) -> list[dict[str, Any]]:
    """A normalizer / pre-tokenizer and, for Sequences, its members, flattened."""
    if not isinstance(node, dict):
        return []
    members = node.get("normalizers") or node.get("pretokenizers") or []
    return [node, *(m for child in members for m in _walk(child))]


def adds_space_prefix(tok: dict[str, Any]) -> bool:
    """Does the SentencePiece-style tokenizer prepend "▁" (Prepend normalizer or Metaspace prefix)?"""
    for n in _walk(tok.get("normalizer")):
        if n.get("type") == "Prepend" and n.get("prepend") == "\u2581":
            return True
    for p in _walk(tok.get("pre_tokenizer")):
        if p.get("type") == "Metaspace":
            return p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never") != "never"
    return False


def _load_tokenizer_json(ckpt: Checkpoint) -> dict[str, Any]:
    path = ckpt.file("tokenizer.json")
    if path is None:
        if ckpt.file("tokenizer.model"):
            raise CheckpointError("the checkpoint has only a SentencePiece tokenizer.model",
                                  "save it as tokenizer.json (transformers: AutoTokenizer(...).save_pretrained)")
        raise CheckpointError(f"{ckpt.path} has no tokenizer (tokenizer.json)",
                              "copy the model's tokenizer files into the checkpoint folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"tokenizer.json is not valid JSON ({e})", "re-download it") from e
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError("tokenizer.json has no 'model' section", "re-download it")
    for section in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):  # null or an object
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise CheckpointError(f"tokenizer.json's {section} is not an object ({data[section]!r})", TOKENIZER_HINT)
    return data


def _fill(n_vocab: int, pieces: dict[int, tuple[str, int, float]], what: str) -> VocabInfo:
    tokens, types, scores = [], [], []
    for i in range(n_vocab):
        text, ttype, score = pieces.get(i, (f"[PAD{i}]", TT.UNUSED, -1e4))
        tokens.append(text)
        types.append(int(ttype))
        scores.append(score)
    if len(set(tokens)) != len(tokens):  # llama.cpp aborts (GGML_ASSERT) on a vocabulary with a repeated token
        first: dict[str, int] = {}
        i, text = next((i, t) for i, t in enumerate(tokens) if first.setdefault(t, i) != i)
        raise CheckpointError(f"the tokenizer has token {text!r} twice (ids {first[text]} and {i})",
                              "every token text must be unique: fix tokenizer.json")
    return VocabInfo(what, None, tokens, scores, types)


TOKENIZER_HINT = "the tokenizer.json is malformed: re-download it"


def _added(tok: dict[str, Any]) -> dict[int, tuple[str, bool]]:
    entries = tok.get("added_tokens", [])
    if not isinstance(entries, list):
        raise CheckpointError("tokenizer.json's added_tokens is not a list", TOKENIZER_HINT)
    added: dict[int, tuple[str, bool]] = {}
    for a in entries:
        i = a.get("id") if isinstance(a, dict) else None
        if isinstance(i, bool) or not isinstance(i, int) or i < 0 or not isinstance(a.get("content"), str):
            raise CheckpointError(f"tokenizer.json has an added token with id {i!r}",
                                  "ids must be non-negative integers and contents strings: re-download it")
        added[i] = (a["content"], bool(a.get("special")))
    return added


def _bpe_vocab(model: dict[str, Any]) -> dict[str, int]:
    """A BPE model's vocab: {token text: id}, every id a non-negative integer."""
    vocab = model.get("vocab", {})
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                              for i in vocab.values()):
        raise CheckpointError("tokenizer.json's BPE vocab is not a map of token -> non-negative id", TOKENIZER_HINT)
    return vocab


def _unigram_vocab(model: dict[str, Any]) -> list[tuple[str, float]]:
    """A Unigram model's vocab: a list of [piece, finite score]."""
    vocab = model.get("vocab", [])
    ok = isinstance(vocab, list) and all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], (int, float))
        and not isinstance(e[1], bool) for e in vocab)
    if not ok:
        raise CheckpointError("tokenizer.json's Unigram vocab is not a list of [piece, score]", TOKENIZER_HINT)
    return [(p, float(s)) for p, s in vocab]


def _check_ids(ids: list[int], n_vocab: int) -> None:
    if ids and max(ids) >= n_vocab:
        raise CheckpointError(f"the tokenizer has token id {max(ids)} but config.json says vocab_size={n_vocab}",
                              "the tokenizer does not belong to these weights")


def build_vocab(ckpt: Checkpoint, n_vocab: int) -> VocabInfo:
    tok = _load_tokenizer_json(ckpt)
    model = tok["model"]
    added = _added(tok)
    kind = model.get("type")
    pieces: dict[int, tuple[str, int, float]] = {}
    if kind == "BPE" and not model.get("byte_fallback"):
        vocab = _bpe_vocab(model)
        _check_ids(list(vocab.values()) + list(added), n_vocab)
        for text, i in vocab.items():
            pieces[i] = (text, TT.NORMAL, 0.0)
        for i, (text, special) in added.items():
            pieces[i] = (text, TT.CONTROL if special else TT.USER_DEFINED, 0.0)
        rules = split_rules(tok.get("pre_tokenizer"))
        pre = PRE_TOKENIZERS.get(rules)
        if pre is None:
            raise CheckpointError(
                f"unsupported byte-level BPE pre-tokenizer (split rules {list(rules)})",
                f"supported pre-tokenizers: {', '.join(sorted(set(PRE_TOKENIZERS.values())))}")
        info = _fill(n_vocab, pieces, "gpt2")
        info.pre, info.scores = pre, None
        return info
    if kind in ("Unigram", "BPE"):
        unk = model.get("unk_id")
        if kind == "Unigram":
            entries = _unigram_vocab(model)
        else:  # SentencePiece-BPE exported to tokenizers: rank order is merge priority
            bpe = _bpe_vocab(model)
            by_id = sorted(bpe.items(), key=lambda kv: kv[1])
            entries = [(p, -float(i)) for p, i in by_id]
            unk = bpe.get(model.get("unk_token"))
        _check_ids([len(entries) - 1, *added], n_vocab)
        for i, (text, score) in enumerate(entries):
            ttype = TT.UNKNOWN if i == unk else TT.BYTE if BYTE_PIECE.match(text) else TT.NORMAL
            pieces[i] = (text, ttype, score)
        for i, (text, special) in added.items():
            if i == unk:
                continue
            base = pieces.get(i, (text, TT.NORMAL, 0.0))
            pieces[i] = (text, TT.CONTROL if special else TT.USER_DEFINED, base[2])
        info = _fill(n_vocab, pieces, "llama")
        info.pre = "default"
        info.add_space_prefix = adds_space_prefix(tok)
        return info
    raise CheckpointError(f"tokenizer model type {kind!r} is not supported",
                          "supported: byte-level BPE (gpt2), SentencePiece (Unigram / BPE with byte fallback)")


def _check_chat_templates(templates: str | Sequence[Mapping[str, str]] | None) -> None:
    """A chat template that is not valid jinja would make every load of the GGUF fail (llama-cpp-python
    compiles it): refuse it here. Compiling runs nothing."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    listed: Sequence[Mapping[str, str]] = (
        [{"template": templates}] if isinstance(templates, str) and templates else
        templates if isinstance(templates, list) else [])
    for t in listed:
        try:
            ImmutableSandboxedEnvironment().parse(t.get("template") or "")
        except TemplateSyntaxError as e:
            raise CheckpointError(f"the chat template is not valid jinja ({e.message}, line {e.lineno})",
                                  "fix chat_template in tokenizer_config.json (or chat_template.jinja)") from e


def add_vocab(w: gguf.GGUFWriter, ckpt: Checkpoint, n_vocab: int, info: VocabInfo | None = None) -> VocabInfo:
    """Write the tokenizer's keys; ``info`` is build_vocab's result when the caller already has it."""
    info = info if info is not None else build_vocab(ckpt, n_vocab)
    w.add_tokenizer_model(info.model)
    if info.pre:
        w.add_tokenizer_pre(info.pre)
    w.add_token_list(info.tokens)
    if info.scores is not None:
        w.add_token_scores(info.scores)
    w.add_token_types(info.types)
    if info.add_space_prefix is not None:
        w.add_add_space_prefix(info.add_space_prefix)
    special = gguf.SpecialVocab(Path(ckpt.path), load_merges=info.model == "gpt2", n_vocab=n_vocab)
    if special.chat_template is None:
        jinja = ckpt.file("chat_template.jinja")
        if jinja is not None:
            special.chat_template = jinja.read_text(encoding="utf-8")
    _check_chat_templates(special.chat_template)
    special.add_to_gguf(w, quiet=True)
    return info
