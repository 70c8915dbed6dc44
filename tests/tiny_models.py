"""Tiny random-init checkpoints of each supported architecture, made with transformers (a reference we
did not write), plus a small byte-level BPE tokenizer trained on WikiText-2 with HF tokenizers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_run.runtime.eval.corpora import builtin_corpus_path

SPECIALS = ("<s>", "</s>", "<pad>")


def train_tokenizer(dest: Path, vocab_size: int = 384) -> int:
    """Train a byte-level BPE (gpt2-style) tokenizer; return its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = builtin_corpus_path("wikitext-2-raw-test").read_text(encoding="utf-8")[:200_000]
    tok.train_from_iterator(text.splitlines(), trainer)
    dest.mkdir(parents=True, exist_ok=True)
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": True,
        "chat_template": "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}",
    }))
    return tok.get_vocab_size()


def _common(vocab: int) -> dict[str, Any]:
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                initializer_range=0.15, bos_token_id=0, eos_token_id=1, pad_token_id=2)


def _llama(vocab: int) -> Any:
    from transformers import LlamaConfig
    return LlamaConfig(**_common(vocab), rms_norm_eps=1e-5, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def _mistral(vocab: int) -> Any:
    from transformers import MistralConfig
    return MistralConfig(**_common(vocab), rms_norm_eps=1e-5, tie_word_embeddings=True, sliding_window=None,
                         head_dim=16)


def _qwen2(vocab: int) -> Any:
    from transformers import Qwen2Config
    return Qwen2Config(**_common(vocab), rms_norm_eps=1e-6, tie_word_embeddings=False)


def _qwen3(vocab: int) -> Any:
    from transformers import Qwen3Config
    return Qwen3Config(**_common(vocab), head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=True)


def _gemma3(vocab: int) -> Any:
    from transformers import Gemma3TextConfig
    cfg = {**_common(vocab), "num_hidden_layers": 6}
    return Gemma3TextConfig(**cfg, head_dim=32, query_pre_attn_scalar=32, sliding_window=8,
                            layer_types=["sliding_attention"] * 5 + ["full_attention"], rms_norm_eps=1e-6,
                            tie_word_embeddings=True)


def _phi3(vocab: int, original: int = 256, hidden: int = 64) -> Any:
    """Fused qkv_proj / gate_up_proj and longrope scaling (per-frequency short / long divisors, attention
    factor from max / original context); ``original`` 256 keeps the parity tests on the short factors."""
    from transformers import Phi3Config
    half = hidden // 4 // 2  # head_dim (hidden / 4 heads), halved
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": original,
            "short_factor": [1.0 + 0.15 * i for i in range(half)], "long_factor": [1.5 + 0.9 * i for i in range(half)]}
    cfg = {**_common(vocab), "hidden_size": hidden, "intermediate_size": 2 * hidden}
    return Phi3Config(**cfg, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=None,
                      original_max_position_embeddings=original, rope_parameters=rope)


def _phi3_long(vocab: int) -> Any:
    """Phi-3 whose original context (64) is shorter than the test prompts: the long factors apply."""
    return _phi3(vocab, original=64)


def _phi3_wide(vocab: int) -> Any:
    """Phi-3 with 256-wide rows, so llama.cpp's k-quants (256-element blocks) apply to it unchanged."""
    return _phi3(vocab, hidden=256)


TINY_CONFIGS: dict[str, Callable[[int], Any]] = {
    "llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3, "gemma3": _gemma3, "phi3": _phi3,
    "phi3-long": _phi3_long, "phi3-wide": _phi3_wide,
}


def make_tiny_checkpoint(arch: str, dest: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a random-init model of ``arch`` with the shared tiny tokenizer into ``dest``."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    n_vocab = len(vocab["model"]["vocab"]) + sum(1 for a in vocab["added_tokens"] if a["content"] not in
                                                 vocab["model"]["vocab"])
    torch.manual_seed(seed)
    config = TINY_CONFIGS[arch](n_vocab)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random norms so the norm-offset / norm-mapping paths are really tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (0.0 if arch == "gemma3" else 1.0))
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(dest, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / f, dest / f)
    return dest
