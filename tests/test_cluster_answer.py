"""Same answer over a cluster (issue 27): greedy tokens and eval perplexity of a split over 2 and 3 loopback
workers equal one process's, for SmolLM2 (llama) and Gemma3 (sliding-window attention) at Q8_0 and Q4_K_M."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_cluster import WorkerProc, greedy_tokens, rpc_library, workers  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.zoo]
_local: dict[Path, list[int]] = {}


def _single(model: Path) -> list[int]:
    if model not in _local:
        _local[model] = greedy_tokens(model, "")[1]
    return _local[model]


@pytest.mark.parametrize(("model", "quant", "n"), [
    ("smollm2-135m", "Q8_0", 3), ("smollm2-135m", "Q4_K_M", 3),
    ("gemma3-270m", "Q8_0", 2), ("gemma3-270m", "Q8_0", 3),
    ("gemma3-270m", "Q4_K_M", 2), ("gemma3-270m", "Q4_K_M", 3),
])
def test_split_says_what_one_process_says(zoo_gguf_dir: Callable[[str, str], Path],
                                          workers: Callable[..., WorkerProc],  # noqa: F811
                                          model: str, quant: str, n: int) -> None:
    path = zoo_gguf_dir(model, quant)
    ws = [workers() for _ in range(n)]
    placement, split = greedy_tokens(path, ",".join(f"pi4-4gb@{w.endpoint}" for w in ws))
    assert split == _single(path) and len(split) == 16
    rows = placement["nodes"][1:]  # type: ignore[index]
    assert [r["endpoint"] for r in rows] == [w.endpoint for w in ws] and all(r["layers"] > 0 for r in rows)


def _eval(model: Path, *extra: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "eval", str(model), "--corpus",
                           "tinyshakespeare", "--ctx", "256", "--chunks", "3", "--threads", "1", "--no-save", "--json",
                           *extra], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_eval_over_a_cluster_gives_the_same_perplexity(zoo_gguf_dir: Callable[[str, str], Path],
                                                       workers: Callable[..., WorkerProc],  # noqa: F811
                                                       model: str) -> None:
    path = zoo_gguf_dir(model, "Q8_0")
    a, b = workers(), workers()
    local = _eval(path)
    split = _eval(path, "--cluster", f"pi4-4gb@{a.endpoint},pi4-2gb@{b.endpoint}")
    assert split["chunks"] == local["chunks"] == 3
    assert abs(split["ppl"] - local["ppl"]) < 0.01, (split["ppl"], local["ppl"])


def test_bench_runs_over_a_cluster(zoo_gguf_dir: Callable[[str, str], Path],
                                   workers: Callable[..., WorkerProc]) -> None:  # noqa: F811
    path = zoo_gguf_dir("smollm2-135m", "Q8_0")
    a, b = workers(), workers()
    proc = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "bench", str(path), "-r", "1", "-p", "32",
                           "-n", "8", "-t", "1", "--json", "--cluster", f"pi4-4gb@{a.endpoint},pi4-4gb@{b.endpoint}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["decode"]["tokens_per_s"]["median"] > 0 and got["prefill"]["tokens_per_s"]["median"] > 0
