"""The arithmetic of `edge-run eval`: log-softmax, negative log-likelihood, KL divergence, top-1 agreement,
and a compact on-disk store of a parent model's log-probabilities.

All functions take float32 logits ``[n_positions, n_vocab]`` and accumulate in float64.

Parent log-probability store (a folder, one row per scored position)::

    tokens.npy  int32   [chunks, ctx]             the chunk tokens the parent saw (BOS already placed)
    codes.npy   uint16  [chunks, scored, vocab]   lp ≈ lo + code * step   (code 0 = "at or below lo")
    scale.npy   float32 [chunks, scored, 2]       (lo, step) per row; lo = max(min lp, KLD_FLOOR)
    top1.npy    int32   [chunks, scored]          the parent's argmax, kept exactly
    info.json   {ctx, chunks, scored, n_vocab, parent, complete}

With lp in [lo, max lp] and 65,535 steps the rounding error is below 16 / 131,070 ≈ 1.2e-4 nats, so a
2-byte code per vocabulary entry stands in for the float32 distribution (llama.cpp's KL mode keeps its
base log-probs at the same resolution).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_run.core.errors import ArtifactError, UsageError

# Parent tokens whose log-probability is at or below this are left out of the KL sum (as llama.cpp does);
# their total probability mass is below n_vocab * e^-16.
KLD_FLOOR = -16.0
_CODE_MAX = 65535
# rows of logits normalised at once when only the NLL is needed (32 x 150k floats = 19 MiB per temporary)
ROW_BLOCK = 32


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of float32 logits, float32 out (the normaliser is summed in float64)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, dtype=np.float64, keepdims=True)).astype(np.float32)
    shifted -= lse
    return shifted


def token_nll(logprobs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (nats, float64) of ``targets[i]`` under row ``i`` of ``logprobs``."""
    rows = np.arange(len(targets))
    return -logprobs[rows, np.asarray(targets)].astype(np.float64)


def rows_nll(logits: np.ndarray, targets: np.ndarray, normalized: bool = False, block: int = ROW_BLOCK) -> np.ndarray:
    """``token_nll(log_softmax(logits), targets)`` taken ``block`` rows at a time, so the temporaries stay at
    ``block`` x n_vocab whatever the number of rows (``normalized``: the rows already are log-probabilities)."""
    targets = np.asarray(targets)
    out = np.empty(len(targets), dtype=np.float64)
    for i in range(0, len(targets), block):
        rows = logits[i:i + block]
        out[i:i + block] = token_nll(rows if normalized else log_softmax(rows), targets[i:i + block])
    return out


def kl_divergence(parent_lp: np.ndarray, child_lp: np.ndarray) -> np.ndarray:
    """KL(parent || child) per row in nats, over the parent's tokens with log-probability above KLD_FLOOR."""
    keep = parent_lp > KLD_FLOOR
    p = np.where(keep, np.exp(parent_lp, dtype=np.float32), 0.0)
    diff = np.where(keep, parent_lp - child_lp, 0.0)
    return (p * diff).sum(axis=1, dtype=np.float64)


@dataclass
class Accumulator:
    """Running sums over scored positions; combine chunk by chunk, read the means at the end."""

    count: int = 0
    nll: float = 0.0
    nll2: float = 0.0
    bytes: int = 0
    kld: float = 0.0
    kld2: float = 0.0
    same_top: int = 0
    kld_count: int = 0
    per_chunk_nll: list[float] = field(default_factory=list)

    def add_nll(self, nll: np.ndarray, n_bytes: int) -> None:
        self.count += int(nll.size)
        self.nll += float(nll.sum())
        self.nll2 += float((nll * nll).sum())
        self.bytes += int(n_bytes)
        self.per_chunk_nll.append(float(nll.sum()))

    def add_kld(self, kld: np.ndarray, same_top: np.ndarray) -> None:
        self.kld_count += int(kld.size)
        self.kld += float(kld.sum())
        self.kld2 += float((kld * kld).sum())
        self.same_top += int(np.count_nonzero(same_top))

    @property
    def mean_nll(self) -> float:
        return self.nll / self.count if self.count else float("nan")

    @property
    def ppl(self) -> float:
        return float(np.exp(self.mean_nll))

    @property
    def ppl_stderr(self) -> float:
        """Standard error of PPL from the spread of the per-token NLL (delta method, as llama.cpp prints it)."""
        if self.count < 2:
            return float("nan")
        var = self.nll2 / self.count - self.mean_nll ** 2
        return float(self.ppl * np.sqrt(max(var, 0.0) / (self.count - 1)))

    @property
    def bpb(self) -> float:
        return self.nll / np.log(2.0) / self.bytes if self.bytes else float("nan")

    @property
    def mean_kld(self) -> float:
        return self.kld / self.kld_count if self.kld_count else float("nan")

    @property
    def top1_agreement(self) -> float:
        return self.same_top / self.kld_count if self.kld_count else float("nan")


# ---- the parent log-probability store ---------------------------------------------------------------


def encode_logprobs(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 codes, float32 [rows, 2] (lo, step)) for log-prob rows; see the module docstring."""
    hi = lp.max(axis=1)
    lo = np.maximum(lp.min(axis=1), KLD_FLOOR)
    step = np.maximum((hi - lo) / _CODE_MAX, np.float32(1e-12)).astype(np.float32)
    codes = np.rint((lp - lo[:, None]) / step[:, None])
    np.clip(codes, 0, _CODE_MAX, out=codes)
    return codes.astype(np.uint16), np.stack([lo, step], axis=1).astype(np.float32)


def decode_logprobs(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    lo, step = scale[:, 0:1], scale[:, 1:2]
    return (lo + codes.astype(np.float32) * step).astype(np.float32)


class LogprobStore:
    """A parent's log-probabilities over the scored positions of every chunk, written once, read per chunk."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        info_path = self.folder / "info.json"
        if not info_path.exists():
            raise ArtifactError(f"{self.folder} is not a log-probability store (no info.json)")
        self.info = json.loads(info_path.read_text(encoding="utf-8"))
        if not self.info.get("complete"):
            raise ArtifactError(f"log-probability store {self.folder} is incomplete", "recompute it")
        self.tokens = np.load(self.folder / "tokens.npy", mmap_mode="r")
        self.codes = np.load(self.folder / "codes.npy", mmap_mode="r")
        self.scale = np.load(self.folder / "scale.npy", mmap_mode="r")
        self.top1 = np.load(self.folder / "top1.npy", mmap_mode="r")

    @property
    def chunks(self) -> int:
        return int(self.info["chunks"])

    def chunk(self, index: int, tokens: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log-probs [scored, vocab], argmax [scored]) of chunk ``index``; ``tokens`` must match the parent's."""
        if index >= self.chunks:
            raise UsageError(f"the parent's store holds {self.chunks} chunks, chunk {index + 1} was asked for",
                             "rebuild it with at least as many chunks")
        if not np.array_equal(self.tokens[index], np.asarray(tokens, dtype=np.int32)):
            raise UsageError("the model and its parent tokenize the corpus differently",
                             "KL divergence needs a parent with the same tokenizer")
        return decode_logprobs(np.asarray(self.codes[index]), np.asarray(self.scale[index])), \
            np.asarray(self.top1[index])

    @staticmethod
    def create(folder: Path, chunks: int, ctx: int, scored: int, n_vocab: int, parent: str) -> LogprobWriter:
        return LogprobWriter(Path(folder), chunks, ctx, scored, n_vocab, parent)


class LogprobWriter:
    """Fills a :class:`LogprobStore` folder chunk by chunk; ``close()`` marks it complete."""

    def __init__(self, folder: Path, chunks: int, ctx: int, scored: int, n_vocab: int, parent: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.info = {"ctx": ctx, "chunks": chunks, "scored": scored, "n_vocab": n_vocab, "parent": parent,
                     "complete": False}
        (folder / "info.json").write_text(json.dumps(self.info), encoding="utf-8")
        mm = np.lib.format.open_memmap
        self.tokens = mm(folder / "tokens.npy", mode="w+", dtype=np.int32, shape=(chunks, ctx))
        self.codes = mm(folder / "codes.npy", mode="w+", dtype=np.uint16, shape=(chunks, scored, n_vocab))
        self.scale = mm(folder / "scale.npy", mode="w+", dtype=np.float32, shape=(chunks, scored, 2))
        self.top1 = mm(folder / "top1.npy", mode="w+", dtype=np.int32, shape=(chunks, scored))

    def put(self, index: int, tokens: list[int], lp: np.ndarray) -> None:
        self.tokens[index] = np.asarray(tokens, dtype=np.int32)
        self.codes[index], self.scale[index] = encode_logprobs(lp)
        self.top1[index] = lp.argmax(axis=1)

    def close(self) -> LogprobStore:
        for arr in (self.tokens, self.codes, self.scale, self.top1):
            arr.flush()
        del self.tokens, self.codes, self.scale, self.top1
        self.info["complete"] = True
        (self.folder / "info.json").write_text(json.dumps(self.info), encoding="utf-8")
        return LogprobStore(self.folder)
