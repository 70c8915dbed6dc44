"""Memory per node of a cluster (issue 27): loopback workers under their own memory limit (RLIMIT_AS), a model
larger than any one worker's limit split over three, the peak RSS of each worker and of the host against the plan."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_cluster import rpc_library  # noqa: F401 - fixture
from tools.bench_cluster_memory import LimitedWorker, proc_status, workers

pytestmark = [pytest.mark.slow, pytest.mark.zoo]
MIB = 2**20
N_BATCH = 64  # small batches: llama.cpp's compute reservations stay small beside the weights
PROFILE = "pi5-8gb" if platform.machine() in ("aarch64", "arm64") else "laptop-x86-8gb"  # this machine's runtime
SCRIPT = """
import itertools, json, sys
from pathlib import Path
from edge_run.runtime.backends import GenerationParams
from edge_run.runtime.session import SessionOptions, open_session
model, cluster = sys.argv[1], sys.argv[2]
options = SessionOptions(ctx=512, threads=1, n_batch=int(sys.argv[3]))
if cluster:
    from edge_run.runtime.cluster.host import Cluster, open_cluster_session
    from edge_run.runtime.cluster.spec import load_cluster
    backend, placement = open_cluster_session(Path(model), Cluster(load_cluster(cluster)), options)
    nodes = placement.to_dict()["nodes"]
else:
    backend, nodes = open_session(Path(model), options), []
params = GenerationParams(max_tokens=16, temperature=0.0, ignore_eos=True)
prompt = backend.tokenize("The capital of France is Paris. " * 30)
tokens = list(itertools.islice(backend.token_stream(prompt, params), 16))
hwm = [int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"nodes": nodes, "tokens": tokens, "host_peak_mib": hwm}))
"""


def _run(model: Path, ws: list[LimitedWorker]) -> subprocess.CompletedProcess[str]:
    cluster = ",".join(f"{PROFILE}@{w.endpoint}" for w in ws)
    return subprocess.run([sys.executable, "-c", SCRIPT, str(model), cluster, str(N_BATCH)], capture_output=True,
                          text=True, timeout=300)


def _result(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr[-2000:]
    got: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return got


def test_a_model_over_every_workers_limit_runs_split_and_says_the_same(
        zoo_gguf_dir: Callable[[str, str], Path], rpc_library: Path) -> None:  # noqa: F811
    from edge_run.runtime.estimate.gguf import shape_from_gguf

    model = zoo_gguf_dir("smollm2-135m", "Q8_0")
    weights_mib = shape_from_gguf(model).weight_bytes / MIB
    with workers(1) as (idle,):
        idle_vm = idle.idle["VmSize"]
    cap = idle_vm + 0.8 * weights_mib  # address space for less than the model's weights alone

    with workers(1, [cap]) as (alone,):
        refused = subprocess.run([sys.executable, "-m", "edge_run.cli.main", "run", str(model), "--cluster",
                                  f"{PROFILE}@{alone.endpoint}", "-n", "4", "-p", "Hi", "--ctx", "512",
                                  "--threads", "1"], capture_output=True, text=True, timeout=300)
        assert alone.proc.poll() is None  # the worker refused the memory and lives on
        assert proc_status(alone.proc.pid)["VmPeak"] <= cap + 0.01
    assert refused.returncode == 4, refused.stderr[-2000:]
    assert "a worker refused the memory of its share" in refused.stderr and "Traceback" not in refused.stderr

    one = _result(_run(model, []))
    with workers(3, [cap] * 3) as ws:
        split = _result(_run(model, ws))
        status = [w.status() for w in ws]
    assert split["tokens"] == one["tokens"] and len(one["tokens"]) == 16  # type: ignore[arg-type]
    nodes = split["nodes"]
    assert isinstance(nodes, list) and [n["endpoint"] for n in nodes[1:]] == [w.endpoint for w in ws]
    for node, st in zip(nodes[1:], status, strict=True):
        assert node["weight_mib"] < 0.5 * weights_mib and st["VmPeak"] <= cap + 0.01
        assert abs(node["peak_rss_mib"] - st["VmHWM"]) <= 0.05 * st["VmHWM"], (node, st)
    host = nodes[0]
    assert abs(host["peak_rss_mib"] - split["host_peak_mib"]) <= 0.05 * split["host_peak_mib"], (host, split)
