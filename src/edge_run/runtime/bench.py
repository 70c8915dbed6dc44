"""Speed and memory of one artifact on this machine: prefill (pp512), decode (tg128), time to first token,
load time, peak RSS; repeated runs reported as median and spread.

The model is loaded once (timed) and its tests run in llama-bench's order, each test's untimed warm-up first and
then its repetitions back to back::

    load ─> warm-up: the 512-token prompt, 2 tokens
         ─> prefill x R: a 512-token prompt, time until the first generated token   -> pp tok/s
         ─> ttft    x R: a 32-token prompt, time until the first generated token    -> ttft
         ─> warm-up: the 1-token prompt, 2 tokens
         ─> decode  x R: a 1-token prompt, 128 greedy tokens, end-of-text ignored   -> tg tok/s
         ─> close

Every step starts from an empty KV cache (no prefix reuse between them: each prompt is evaluated whole). The
warm-up is the full-size prompt, as llama-bench warms up with its test prompt: the first graph of a new context
touches its compute buffers and maps the model's pages, which is load work, not prefill. The decode step is
llama-bench's tg128: one token at position 0 (BOS where the model adds one), then 128 tokens that do not stop at
end-of-text. Each generated token attends to every position before it, so the same 128 tokens after a longer
prompt are slower (SmolLM2-135M Q4_0: 2-4% slower after a 32-token prompt, measured in one process). One load
instead of one per repetition also keeps a Pi's bench of a multi-GiB model from reading it R times.

Prompts are the first tokens of the built-in WikiText-2 text. Anything that can load a model and generate (an
edge-run backend, or plain llama-cpp-python in tools/bench_vs_llama.py) is a :class:`Runner`, so the same
measurements compare them side by side.
"""

from __future__ import annotations

import platform
import resource
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from edge_run.core import __version__
from edge_run.core.errors import UsageError
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import Backend, GenerationParams, LoadOptions
from edge_run.runtime.backends.base import physical_cores

SCHEMA = "edge-run-bench/1"
Opener = Callable[[Path, LoadOptions], Backend]  # open_backend, or `--cluster`'s
WARMUP_TOKENS = 2


@dataclass(frozen=True)
class BenchConfig:
    n_prompt: int = 512
    n_gen: int = 128
    ttft_prompt: int = 32
    decode_prompt: int = 1
    repeats: int = 3
    threads: int | None = None
    n_batch: int = 512
    flash_attn: str = "auto"  # on | off | auto, as llama-bench's -fa (default auto)

    @property
    def n_ctx(self) -> int:
        return max(self.n_prompt, self.ttft_prompt + 1, self.decode_prompt + self.n_gen) + 16

    @property
    def steps(self) -> int:
        """Generations in a bench: the two warm-ups and three tests of ``repeats`` each."""
        return 3 * self.repeats + 2

    @property
    def n_threads(self) -> int:
        return self.threads or physical_cores()


@dataclass(frozen=True)
class GenTiming:
    prompt_tokens: int
    generated: int
    first_token_s: float  # from the call until the first generated token (prefill + one sample)
    decode_s: float  # from the first to the last generated token

    @property
    def decode_tps(self) -> float:
        return (self.generated - 1) / self.decode_s if self.generated > 1 and self.decode_s > 0 else 0.0


class Runner(Protocol):
    load_seconds: float

    def tokenize(self, text: str) -> list[int]: ...

    def generate(self, tokens: list[int], n: int) -> GenTiming:
        """Greedy generation of ``n`` tokens after ``tokens``, past end-of-generation tokens."""
        ...

    def close(self) -> None: ...


class BackendRunner:
    """An edge-run backend (what `edge-run run` uses)."""

    def __init__(self, path: Path, config: BenchConfig, opener: Opener = open_backend) -> None:
        self.backend: Backend = opener(path, LoadOptions(n_ctx=config.n_ctx, n_threads=config.n_threads,
                                                         n_batch=config.n_batch, flash_attn=config.flash_attn,
                                                         reuse_prefix=False))
        self.load_seconds = self.backend.load_seconds

    def tokenize(self, text: str) -> list[int]:
        return self.backend.tokenize(text, add_special=True)

    def generate(self, tokens: list[int], n: int) -> GenTiming:
        for _ in self.backend.stream(tokens, GenerationParams(max_tokens=n, temperature=0.0, ignore_eos=True)):
            pass
        r = self.backend.last_result
        assert r is not None
        return GenTiming(len(tokens), r.completion_tokens, r.prefill_seconds, r.decode_seconds)

    def close(self) -> None:
        self.backend.close()


def stats(values: list[float]) -> dict[str, Any]:
    med = statistics.median(values)
    return {"median": round(med, 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "spread_pct": round(100.0 * (max(values) - min(values)) / med, 2) if med else 0.0,
            "runs": [round(v, 4) for v in values]}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "physical_cores": physical_cores(),
            "logical_cores": psutil.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version()}


def prompt_text() -> str:
    from edge_run.runtime.eval.corpora import builtin_corpus_path

    return builtin_corpus_path("wikitext-2-raw-test").read_text(encoding="utf-8")[:20000]


@dataclass
class Measurements:
    load_s: list[float]
    prefill: list[GenTiming]
    ttft: list[GenTiming]
    decode: list[GenTiming]


def measure(runner: Runner, config: BenchConfig, text: str,
            progress: Callable[[str, int, int], None] | None = None) -> Measurements:
    """Every test of one loaded model, in llama-bench's order (the module's diagram)."""
    tokens = runner.tokenize(text)
    if len(tokens) < config.n_prompt:
        raise UsageError(f"the benchmark prompt has only {len(tokens)} tokens, {config.n_prompt} were asked")
    done = 0

    def run(prompt: list[int], n: int) -> GenTiming:
        nonlocal done
        timing = runner.generate(prompt, n)
        done += 1
        if progress:
            progress("bench", done, config.steps)
        return timing

    prompt, short, start = tokens[:config.n_prompt], tokens[:config.ttft_prompt], tokens[:config.decode_prompt]
    run(prompt, WARMUP_TOKENS)
    prefill = [run(prompt, 1) for _ in range(config.repeats)]
    ttft = [run(short, 1) for _ in range(config.repeats)]
    run(start, WARMUP_TOKENS)
    decode = [run(start, config.n_gen) for _ in range(config.repeats)]
    return Measurements([runner.load_seconds], prefill, ttft, decode)


def summarize(m: Measurements, config: BenchConfig) -> dict[str, Any]:
    return {
        "threads": config.n_threads, "n_ctx": config.n_ctx, "repeats": len(m.prefill),
        "prefill": {"n_tokens": config.n_prompt,
                    "tokens_per_s": stats([config.n_prompt / t.first_token_s for t in m.prefill])},
        "decode": {"n_tokens": config.n_gen, "generated": [t.generated for t in m.decode],
                   "tokens_per_s": stats([t.decode_tps for t in m.decode])},
        "ttft_s": {"prompt_tokens": config.ttft_prompt, **stats([t.first_token_s for t in m.ttft])},
        "load_s": stats(m.load_s),
    }


def validate_config(config: BenchConfig) -> None:
    if config.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    if config.n_prompt < 1 or config.n_gen < 2:
        raise UsageError("the prompt needs at least 1 token and the generation at least 2")


def bench(artifact: Path, config: BenchConfig | None = None,
          progress: Callable[[str, int, int], None] | None = None, opener: Opener = open_backend) -> dict[str, Any]:
    """Benchmark ``artifact``; a JSON-ready dict (schema ``edge-run-bench/1``, see the README). ``opener``:
    how the model is opened (`bench --cluster`: over the cluster's workers)."""
    from edge_run.core.formats import artifact_size
    from edge_run.core.manifest import read_manifest

    config = config or BenchConfig()
    validate_config(config)
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    text = prompt_text()
    if progress:
        progress("bench", 0, config.steps)
    runner = BackendRunner(artifact, config, opener)
    try:
        runs = measure(runner, config, text, progress)
    finally:
        runner.close()
    size = artifact_size(artifact)  # src/edge_run/core/formats.py: what manifest.file_size counts
    return {
        "schema": SCHEMA, "tool_version": __version__, "artifact": artifact.name,
        "quant": manifest.quant if manifest else None, "format": manifest.format if manifest else None,
        "file_size": size, **summarize(runs, config), "peak_rss_mib": round(peak_rss_mib(), 1),
        "machine": machine_info(),
    }
