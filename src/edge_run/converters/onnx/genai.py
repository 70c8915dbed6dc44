"""genai_config.json (onnxruntime-genai's model description) and the tokenizer files beside the graph.

    {"model":  {"type", "vocab_size", "context_length", "bos_token_id", "eos_token_id", "pad_token_id",
                "decoder": {"filename": "model.onnx", "head_size", "hidden_size", "num_attention_heads",
                            "num_key_value_heads", "num_hidden_layers", "session_options": {...},
                            "inputs":  {"input_ids", "attention_mask",
                                        "past_key_names": "past_key_values.%d.key", "past_value_names": ...},
                            "outputs": {"logits", "present_key_names": "present.%d.key", ...}}},
     "search": {"max_length", "past_present_share_buffer", "do_sample", "temperature", "top_k", "top_p", ...}}

Gemma 3's sliding-window layers keep a full-length cache here (GroupQueryAttention masks by
local_window_size), so no ``sliding_window`` section is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edge_run.converters.checkpoint import Checkpoint
from edge_run.converters.onnx.hparams import DecoderConfig

# Special tokens that end a turn in chat templates (llama.cpp treats them as end-of-generation too).
END_OF_TURN_TOKENS: tuple[str, ...] = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>",
                                       "<|end_of_text|>", "</s>", "<eos>")
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "special_tokens_map.json", "generation_config.json")
# tokenizers' model type -> the slow-tokenizer class name onnxruntime-extensions recognizes
TOKENIZER_CLASSES: dict[str, str] = {"gpt2": "GPT2Tokenizer", "llama": "LlamaTokenizer"}
# edge-run architecture key -> onnxruntime-genai model type, where they differ ("gemma3" is the
# multimodal model there; the text-only decoder is "gemma3_text")
GENAI_TYPES: dict[str, str] = {"gemma3": "gemma3_text"}


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _token_id(tok: dict[str, Any], content: str) -> int | None:
    for a in tok.get("added_tokens", []):
        if a.get("content") == content:
            return int(a["id"])
    vocab = tok.get("model", {}).get("vocab")
    if isinstance(vocab, dict) and content in vocab:
        return int(vocab[content])
    return None


def tokenizer_summary(ckpt: Checkpoint) -> dict[str, Any]:
    """The few parts of tokenizer.json this module reads (added tokens, post-processor, the vocabulary
    entries of end-of-turn names), so the parsed whole can be dropped at once."""
    tok = ckpt.read_json("tokenizer.json") or {}
    vocab = tok.get("model", {}).get("vocab")
    names = set(END_OF_TURN_TOKENS) | {str(v) for v in (ckpt.read_json("tokenizer_config.json") or {}).values()
                                       if isinstance(v, str)}
    kept = {k: v for k, v in vocab.items() if k in names} if isinstance(vocab, dict) else {}
    return {"added_tokens": tok.get("added_tokens", []), "post_processor": tok.get("post_processor"),
            "model": {"vocab": kept}}


def special_ids(ckpt: Checkpoint, tok: dict[str, Any] | None = None) -> dict[str, Any]:
    """bos / eos (all end-of-generation ids) / pad, from config, generation_config and the tokenizer."""
    cfg = ckpt.text_config()
    gen = ckpt.read_json("generation_config.json") or {}
    tok = tok if tok is not None else tokenizer_summary(ckpt)
    tcfg = ckpt.read_json("tokenizer_config.json") or {}
    eos: list[int] = []
    for v in (_ids(gen.get("eos_token_id")), _ids(cfg.get("eos_token_id"))):
        eos += [i for i in v if i not in eos]
    named = tcfg.get("eos_token")
    if isinstance(named, dict):
        named = named.get("content")
    for text in (named, *END_OF_TURN_TOKENS):
        i = _token_id(tok, text) if isinstance(text, str) else None
        if i is not None and i not in eos and (text == named or _is_special(tok, i)):
            eos.append(i)
    bos = gen.get("bos_token_id", cfg.get("bos_token_id"))
    pad = gen.get("pad_token_id", cfg.get("pad_token_id"))
    return {"bos_token_id": int(bos) if bos is not None else None, "eos_token_id": eos,
            "pad_token_id": int(pad) if pad is not None else (eos[0] if eos else 0)}


def _is_special(tok: dict[str, Any], token_id: int) -> bool:
    return any(int(a["id"]) == token_id and a.get("special") for a in tok.get("added_tokens", []))


def genai_config(ckpt: Checkpoint, cfg: DecoderConfig, arch_key: str) -> dict[str, Any]:
    ids = special_ids(ckpt)
    gen = ckpt.read_json("generation_config.json") or {}
    eos = ids["eos_token_id"]
    return {
        "model": {
            "bos_token_id": ids["bos_token_id"],
            "context_length": cfg.max_positions,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": cfg.head_dim,
                "hidden_size": cfg.hidden,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": cfg.n_heads,
                "num_hidden_layers": cfg.n_layers,
                "num_key_value_heads": cfg.n_kv_heads,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": ids["pad_token_id"],
            "type": GENAI_TYPES.get(arch_key, arch_key),
            "vocab_size": cfg.vocab,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": bool(gen.get("do_sample", False)), "early_stopping": True,
            "length_penalty": 1.0, "max_length": cfg.max_positions, "min_length": 0, "no_repeat_ngram_size": 0,
            "num_beams": 1, "num_return_sequences": 1, "past_present_share_buffer": True,
            "repetition_penalty": float(gen.get("repetition_penalty", 1.0)),
            "temperature": float(gen.get("temperature", 1.0)), "top_k": int(gen.get("top_k", 50)),
            "top_p": float(gen.get("top_p", 1.0)),
        },
    }


def adds_bos(tok: dict[str, Any], bos: int | None) -> bool:
    """Does the tokenizer's post-processor put BOS in front of a single encoded text?

        TemplateProcessing  single = [SpecialToken <bos>, Sequence A]   -> special_tokens[<bos>].ids[0] == bos
        Sequence            any member that does
    """
    def walk(proc: Any) -> bool:
        if not isinstance(proc, dict):
            return False
        if proc.get("type") == "Sequence":
            return any(walk(p) for p in proc.get("processors", []))
        if proc.get("type") != "TemplateProcessing" or not proc.get("single"):
            return False
        first = proc["single"][0].get("SpecialToken")
        if not first:
            return False
        ids = proc.get("special_tokens", {}).get(first.get("id"), {}).get("ids", [])
        return bool(ids) and ids[0] == bos

    return bos is not None and walk(tok.get("post_processor"))


def copy_tokenizer(ckpt: Checkpoint, dest: Path, tokenizer_kind: str) -> None:
    """tokenizer.json (+ special tokens / generation config) as they are; tokenizer_config.json with the
    chat template folded in (from chat_template.jinja when the config has none) and a tokenizer class
    onnxruntime-extensions knows."""
    for name in TOKENIZER_FILES:
        src = ckpt.file(name)
        if src is not None:
            shutil.copyfile(src, dest / name)
    tcfg = dict(ckpt.read_json("tokenizer_config.json") or {})
    jinja = ckpt.file("chat_template.jinja")
    if not tcfg.get("chat_template") and jinja is not None:
        tcfg["chat_template"] = jinja.read_text(encoding="utf-8")
    if "add_bos_token" not in tcfg:  # onnxruntime-extensions adds BOS only when told to
        tok = tokenizer_summary(ckpt)
        tcfg["add_bos_token"] = adds_bos(tok, special_ids(ckpt, tok)["bos_token_id"])
    if tcfg.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast"):
        tcfg["tokenizer_class"] = TOKENIZER_CLASSES.get(tokenizer_kind, "PreTrainedTokenizerFast")
    (dest / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
