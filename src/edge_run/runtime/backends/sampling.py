"""Next-token choice from a logits vector: greedy, or llama.cpp's sampler chain in numpy
(repeat penalty -> top-k -> temperature -> top-p -> min-p -> draw), seeded per generation."""

from __future__ import annotations

import numpy as np

from edge_run.runtime.backends.base import GenerationParams

REPEAT_WINDOW = 64  # llama.cpp's default penalty_last_n


def apply_repeat_penalty(logits: np.ndarray, history: list[int], penalty: float) -> np.ndarray:
    """Positive logits of recently seen tokens are divided by ``penalty``, negative ones multiplied."""
    recent = np.unique(np.asarray(history[-REPEAT_WINDOW:], dtype=np.int64))
    recent = recent[recent < logits.shape[0]]
    out = logits.copy()
    seen = out[recent]
    out[recent] = np.where(seen > 0, seen / penalty, seen * penalty)
    return out


def sample_token(logits: np.ndarray, params: GenerationParams, rng: np.random.Generator,
                 history: list[int]) -> int:
    logits = np.asarray(logits, dtype=np.float32)
    if params.repeat_penalty != 1.0 and history:
        logits = apply_repeat_penalty(logits, history, params.repeat_penalty)
    if params.temperature <= 0.0:
        return int(np.argmax(logits))
    k = params.top_k if 0 < params.top_k < logits.shape[0] else logits.shape[0]
    cand = np.argpartition(-logits, k - 1)[:k] if k < logits.shape[0] else np.arange(logits.shape[0])
    cand = cand[np.argsort(-logits[cand], kind="stable")]
    scaled = logits[cand].astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if 0.0 < params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p) + 1)
        cand, probs = cand[:keep], probs[:keep]
    if params.min_p > 0.0:
        mask = probs >= params.min_p * probs[0]
        cand, probs = cand[mask], probs[mask]
    probs = probs / probs.sum()
    return int(cand[rng.choice(len(cand), p=probs)])
