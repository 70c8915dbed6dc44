"""The rows of issue 13's table: each is an edge-run command and its llama.cpp counterpart, run as separate
processes in alternating order (A B, B A, ...) so that drifting machine load hits both alike.

Every measurement is a child process: wall time from spawn to exit, peak RSS as the larger of the process
tree's summed RSS (sampled every 20 ms) and the largest single process's ru_maxrss (wait4). A row keeps every
run and reports medians; ``ratio`` = edge-run / reference (time and memory: lower is better; tokens/s:
higher is better).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

EDGE_RUN = [sys.executable, "-m", "edge_run.cli.main"]
RUN_PROMPT = "The capital of France is"
# the plain llama-cpp-python script `edge-run run` is compared with (7 lines, as a user would write it), with the same
# threads for prompt and generation and flash attention on, as edge-run (and llama.cpp's own tools) load models
PLAIN_SCRIPT = """\
import sys
from llama_cpp import Llama
path, t, n_ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=t, n_threads_batch=t, flash_attn=True, verbose=False)
out = llm(sys.argv[4], max_tokens=int(sys.argv[5]), temperature=0.0)
sys.stdout.write(out["choices"][0]["text"] + "\\n")
"""


@dataclass
class Run:
    wall_s: float
    peak_rss_mib: float
    stdout: str
    stderr: str


@dataclass
class Row:
    """One line of the table: what is compared, each side's runs, the metrics and the goal."""

    name: str
    edge_run: list[dict[str, float]] = field(default_factory=list)
    reference: list[dict[str, float]] = field(default_factory=list)
    reference_name: str = ""
    goal: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def medians(self, side: list[dict[str, float]]) -> dict[str, float]:
        keys = side[0].keys() if side else ()
        return {k: round(statistics.median(r[k] for r in side), 3) for k in keys}

    def paired_ratios(self) -> dict[str, float]:
        """Median over rounds of edge-run / reference within a round: the two runs of a round are adjacent in
        time, so a load that drifts across the rounds cancels out of each pair."""
        keys = self.edge_run[0].keys() if self.edge_run else ()
        pairs = list(zip(self.edge_run, self.reference, strict=False))
        return {k: round(statistics.median(e[k] / r[k] for e, r in pairs), 3) for k in keys
                if pairs and all(r.get(k) for _, r in pairs)}

    def ratio_intervals(self, resamples: int = 2000, seed: int = 13) -> dict[str, list[float]]:
        """A 95% percentile-bootstrap interval of each paired ratio's median (rounds resampled with replacement):
        how far the median could move with other rounds from the same machine."""
        rng = random.Random(seed)
        keys = self.edge_run[0].keys() if self.edge_run else ()
        pairs = list(zip(self.edge_run, self.reference, strict=False))
        out: dict[str, list[float]] = {}
        for k in keys:
            if not pairs or not all(r.get(k) for _, r in pairs):
                continue
            ratios = [e[k] / r[k] for e, r in pairs]
            meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
            out[k] = [round(meds[int(0.025 * resamples)], 3), round(meds[int(0.975 * resamples) - 1], 3)]
        return out

    def to_dict(self) -> dict[str, Any]:
        a, b = self.medians(self.edge_run), self.medians(self.reference)
        return {"row": self.name, "reference": self.reference_name, "goal": self.goal, "edge_run": a,
                "reference_median": b, "ratio": self.paired_ratios(), "ratio_ci95": self.ratio_intervals(),
                "ratio_of_medians": {k: round(a[k] / b[k], 3) for k in a if b.get(k)},
                "runs": {"edge_run": self.edge_run, "reference": self.reference},
                **({"notes": self.notes} if self.notes else {})}


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def measure(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, poll_rss: bool = True) -> Run:
    """Run ``cmd`` to completion; its wall time, peak RSS and stdout. A failure stops the benchmark.

    ``poll_rss`` samples the RSS of the child's whole process tree every 20 ms (a converter's quantizer child is
    part of its peak). Each sample costs ~1 ms of CPU (psutil walks /proc), ~5% of a core that the measured
    process, on a 2-core machine, loses: rows that time only speed pass False and get the child's own
    ru_maxrss."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
    ps = psutil.Process(child.pid)
    peak = 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG if poll_rss else 0)
        if pid:
            break
        peak = max(peak, _tree_rss(ps))
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout = out.read().decode("utf-8", "replace")
    stderr = err.read().decode("utf-8", "replace")
    if child.returncode != 0:
        raise SystemExit(f"failed ({child.returncode}): {' '.join(map(str, cmd))}\n{stderr[-1500:]}")
    peak = max(peak, usage.ru_maxrss * 1024)
    return Run(round(wall, 3), round(peak / 2**20, 1), stdout, stderr)


def interleave(rounds: int, a: Callable[[], dict[str, float]], b: Callable[[], dict[str, float]],
               row: Row) -> Row:
    for i in range(rounds):
        for side in ((a, row.edge_run), (b, row.reference)) if i % 2 == 0 else ((b, row.reference), (a, row.edge_run)):
            side[1].append(side[0]())
    return row


# ---------------------------------------------------------------------------------------------- rows


BENCH_REPEATS = 5  # repetitions inside each process (both tools; llama-bench's default -r), reported as their median


def _llama_bench(tools: Any, gguf: Path, threads: int, repeats: int) -> dict[str, float]:
    out = measure([str(tools.binary("llama-bench")), "-m", str(gguf), "-p", "512", "-n", "128", "-t", str(threads),
                   "-r", str(repeats), "-o", "json"], poll_rss=False).stdout
    tests = json.loads(out)
    pp = next(t for t in tests if t["n_prompt"] > 0 and t["n_gen"] == 0)
    tg = next(t for t in tests if t["n_gen"] > 0 and t["n_prompt"] == 0)
    return {"prefill_tps": round(statistics.median(pp["samples_ts"]), 2),
            "decode_tps": round(statistics.median(tg["samples_ts"]), 2)}


def bench_row(tools: Any, gguf: Path, threads: int, rounds: int, label: str, repeats: int = BENCH_REPEATS) -> Row:
    """pp512 / tg128 tokens/s: `edge-run bench` vs `llama-bench`, ``repeats`` repetitions per process (fewer:
    the two sides alternate more often, so drifting machine speed splits less unevenly between them)."""

    def edge() -> dict[str, float]:
        b = json.loads(measure([*EDGE_RUN, "bench", str(gguf), "--json", "-r", str(repeats), "-t", str(threads)],
                               poll_rss=False).stdout)
        return {"prefill_tps": b["prefill"]["tokens_per_s"]["median"],
                "decode_tps": b["decode"]["tokens_per_s"]["median"]}

    return interleave(rounds, edge, lambda: _llama_bench(tools, gguf, threads, repeats),
                      Row(f"bench pp512/tg128 {label}", reference_name="llama-bench", goal="tokens/s ratio >= 0.97",
                          notes={"repeats_per_process": repeats}))


def calibration_row(tools: Any, gguf: Path, threads: int, rounds: int, label: str,
                    repeats: int = BENCH_REPEATS) -> Row:
    """llama-bench against itself, interleaved as bench_row interleaves: the same program on both sides, so any
    distance of its ratio from 1.00 (and the width of its interval) is the method's noise on this machine, the
    resolution the bench rows' ratios are read at."""

    def run() -> dict[str, float]:
        return _llama_bench(tools, gguf, threads, repeats)

    return interleave(rounds, run, run, Row(f"bench calibration: llama-bench vs itself, {label}",
                                            reference_name="llama-bench", goal="none: 1.00 is exact, the rest noise",
                                            notes={"repeats_per_process": repeats}))


def compile_sources() -> None:
    """Byte-compile edge-run's modules, as `pip install` does for an installed wheel (an editable install
    compiles on first import, or never where PYTHONDONTWRITEBYTECODE is set: then every edge-run process would
    compile ~40 modules from source, ~35 ms, while llama_cpp's came compiled with its wheel)."""
    import compileall
    import importlib

    for pkg in ("edge_run.core", "edge_run.runtime", "edge_run.converters"):
        compileall.compile_dir(str(Path(importlib.import_module(pkg).__file__ or "").parent), quiet=1)


def run_row(gguf: Path, threads: int, rounds: int, label: str, n_ctx: int = 2048) -> Row:
    """`edge-run run F -p PROMPT -n 8`, the whole process, vs the 6-line llama-cpp-python script."""
    compile_sources()
    edge_cmd = [*EDGE_RUN, "run", str(gguf), "-p", RUN_PROMPT, "-n", "8", "-t", str(threads), "--ctx", str(n_ctx)]
    plain_cmd = [sys.executable, "-c", PLAIN_SCRIPT, str(gguf), str(threads), str(n_ctx), RUN_PROMPT, "8"]
    measure(edge_cmd)  # warm: integrity and preflight caches filled, file pages in the page cache
    measure(plain_cmd)
    row = interleave(rounds, lambda: {"wall_s": measure(edge_cmd, poll_rss=False).wall_s},
                     lambda: {"wall_s": measure(plain_cmd, poll_rss=False).wall_s},
                     Row(f"run -n 8, whole process, {label}", reference_name="llama-cpp-python script",
                         goal="wall ratio <= 1.15"))
    row.notes["edge_run_text"] = measure(edge_cmd).stdout.strip()[-200:]
    return row


_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+)")


def eval_row(tools: Any, gguf: Path, corpus: Path, chunks: int, threads: int, rounds: int, label: str) -> Row:
    """`edge-run eval` vs `llama-perplexity`, same chunks, context 512 and threads: wall and peak RSS."""
    ppl: dict[str, float] = {}

    def edge() -> dict[str, float]:
        r = measure([*EDGE_RUN, "eval", str(gguf), "--corpus", str(corpus), "--ctx", "512", "--chunks", str(chunks),
                     "--json", "--no-save", "-t", str(threads)])
        ppl["edge_run"] = json.loads(r.stdout)["ppl"]
        return {"wall_s": r.wall_s, "peak_rss_mib": r.peak_rss_mib}

    def ref() -> dict[str, float]:
        r = measure([str(tools.binary("llama-perplexity")), "-m", str(gguf), "-f", str(corpus), "-c", "512",
                     "--chunks", str(chunks), "-t", str(threads)])
        m = _PPL.search(r.stderr + r.stdout)
        ppl["llama_perplexity"] = float(m.group(1)) if m else float("nan")
        return {"wall_s": r.wall_s, "peak_rss_mib": r.peak_rss_mib}

    row = interleave(rounds, edge, ref, Row(f"eval --chunks {chunks} -c 512, {label}",
                                            reference_name="llama-perplexity", goal="wall and peak RSS ratio <= 1.1"))
    row.notes["ppl"] = ppl
    return row


def convert_row(tools: Any, checkpoint: Path, threads: int, rounds: int, label: str) -> Row:
    """HF checkpoint -> Q4_K_M: `edge-run convert` vs convert_hf_to_gguf.py (F16) + llama-quantize."""

    def edge() -> dict[str, float]:
        with tempfile.TemporaryDirectory(dir=_scratch()) as tmp:
            r = measure([*EDGE_RUN, "convert", str(checkpoint), "--format", "gguf", "--quant", "q4_k_m", "--out", tmp,
                         "--threads", str(threads), "--json"])
        return {"wall_s": r.wall_s, "peak_rss_mib": r.peak_rss_mib}

    def ref() -> dict[str, float]:
        with tempfile.TemporaryDirectory(dir=_scratch()) as tmp:
            f16, q = Path(tmp) / "m.f16.gguf", Path(tmp) / "m.q4_k_m.gguf"
            a = measure([sys.executable, str(tools.convert_script), str(checkpoint), "--outtype", "f16",
                         "--outfile", str(f16)], env=tools.convert_env())
            b = measure([str(tools.binary("llama-quantize")), str(f16), str(q), "Q4_K_M", str(threads)])
        return {"wall_s": round(a.wall_s + b.wall_s, 3), "peak_rss_mib": max(a.peak_rss_mib, b.peak_rss_mib)}

    return interleave(rounds, edge, ref, Row(f"convert HF -> Q4_K_M, {label}",
                                             reference_name="convert_hf_to_gguf.py + llama-quantize",
                                             goal="wall ratio <= 0.8, peak RSS ratio <= 0.5"))


def pick_row(models: Path, rounds: int, profile: str = "pi5-8gb") -> Row:
    """`edge-run pick` over a models folder: cold (empty edge-run cache) and warm (the same cache again)."""
    row = Row(f"pick over {sum(1 for p in models.iterdir() if p.is_dir())} model folders",
              reference_name="(none: cold vs warm)", goal="warm < 1 s, cold < 3 s")
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(dir=_scratch()) as cache:
            env = {**os.environ, "EDGE_RUN_CACHE": cache}
            cmd = [*EDGE_RUN, "pick", "--profile", profile, "--models", str(models), "--json"]
            cold = measure(cmd, env=env, poll_rss=False)
            warm = measure(cmd, env=env, poll_rss=False)
        row.edge_run.append({"warm_s": warm.wall_s, "cold_s": cold.wall_s})
    return row


def _scratch() -> str:
    from edge_run.core.fsutil import cache_dir

    d = cache_dir() / "bench-scratch"
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


def models_folder(root: Path, checkpoints: dict[str, Path], ggufs: list[Path]) -> Path:
    """root/<name> -> each checkpoint (symlink), root/artifacts/ with the GGUFs and their manifests (hard links)."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "artifacts").mkdir(parents=True)
    for name, ckpt in checkpoints.items():
        (root / name).symlink_to(ckpt, target_is_directory=True)
    for g in ggufs:
        for f in (g, g.with_name(g.name + ".manifest.json")):
            if f.exists():
                os.link(f, root / "artifacts" / f.name)  # same bytes and mtime: the caches keyed on them still hit
    return root
