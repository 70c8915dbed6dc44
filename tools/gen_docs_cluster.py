"""Docs table of clusters on paper (issue 27): `pick --cluster` over 1, 2, 4 and 8 boards of one kind for the real
1B / 3B / 8B shapes (tools/shapes.py, header-only: planning reads headers alone), beside the published figures of
another engine (distributed-llama), labelled as such (see tools/gen_docs.py for the block syntax).

``results-cluster-memory``: results/cluster_memory.json (tools/bench_cluster_memory.py), each node's predicted
peak RSS against the measured one.
``cluster-scale``: per board kind, model shape (at QUANT) and board count: what `pick --cluster` answers (one
board when the pairing fits one, else the layer split), the most any node needs and the predicted decode
tokens/s; beside it, the split over every board forced (what the boards would do if one board were not enough),
so the scaling of a layer split shows. Board 1 is the host and keeps a share; the others are workers
(`HOST,BOARD@10.0.0.2:50052,...`). 1 GbE: runtime/cluster/pick.py's default link.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.gen_docs_code import table

ROOT = Path(__file__).resolve().parent.parent

BOARDS = ("pi4-4gb", "pi5-8gb")
COUNTS = (1, 2, 4, 8)
SHAPES = ("llama3.2-1b", "llama3.2-3b", "llama3.1-8b")
QUANT = "Q4_K_M"
CTX = 2048


@dataclass(frozen=True)
class Published:
    engine: str
    model: str
    boards: str
    figures: str
    source: str


# one row per published measurement (as quoted in issue 27); figures of another engine, never edge-run's
PUBLISHED = (
    Published("distributed-llama (tensor parallel)", "Llama 3 8B Q40", "1 / 2 / 4 x Raspberry Pi 5 8 GB",
              "1.77 / 2.25 / 3.01 tok/s (later 4.08 on 4)", "distributed-llama's README, as quoted in issue 27"),
    Published("distributed-llama (tensor parallel)", "Llama 2 7B Q40", "1 / 4 / 8 x Raspberry Pi 4B 8 GB",
              "1312 / 494 / 588 ms per token (0.76 / 2.02 / 1.70 tok/s): 8 nodes slower, the network dominates",
              "distributed-llama's README, as quoted in issue 27"),
    Published("llama.cpp RPC (layer split)", "TinyLlama 1.1B F16", "1 host + 1 worker, 1 GbE",
              "63 tok/s local, 60 via loopback RPC, 42 via a remote worker",
              "llama.cpp RPC measurements, as quoted in issue 27"),
)


def _spec(board: str, n: int) -> Any:
    from edge_run.runtime.cluster.spec import parse_inline

    return parse_inline(",".join([board] + [f"{board}@10.0.0.{i + 2}:50052" for i in range(n - 1)]))


def _candidates(models: Path) -> dict[str, Any]:
    from edge_run.runtime.eval.store import QualityStore
    from edge_run.runtime.pick.picker import gather_candidates
    from tools.gen_docs_shapes import _shape_models

    _shape_models(models)
    found = gather_candidates(models, store=QualityStore(models.parent / "store"))
    return {c.model: c for c in found if c.quant == QUANT and not c.imatrix and c.model in SHAPES}


def _peak(plan: Any) -> str:
    worst = max(plan.shares, key=lambda s: s.need_mib)
    return f"{worst.need_mib:.0f} ({worst.node.name}{' host' if worst.node.is_host else ''})"


def _row(board: str, n: int, shape: str, c: Any) -> list[str]:
    from edge_run.core.errors import EdgeRunError
    from edge_run.runtime.cluster.pick import Link, pick_cluster, split_speed, with_headroom
    from edge_run.runtime.cluster.plan import plan_cluster
    from edge_run.runtime.pick.picker import evaluate

    profile = _spec(board, 2).nodes[1].profile  # the board's profile, as a cluster description names it
    if n == 1:
        alone = evaluate(c, profile, CTX)
        answer = "one board" if alone.fits else "nothing fits"
        return [f"`{board}`", "1", shape, answer, f"{alone.estimate.total_mib:.0f}",
                f"{alone.tps:.2f}" if alone.fits else "-", "-", "-"]
    spec = _spec(board, n)
    try:
        got = pick_cluster(spec, [c], CTX).pick
        if got.plan is None:
            answer, need, tps = "one board", f"{evaluate(c, profile, CTX).estimate.total_mib:.0f}", got.tps
        else:
            answer = "split " + "/".join(str(s.count) for s in got.plan.shares if s.count)
            need, tps = _peak(got.plan), got.tps
        picked = [answer, need, f"{tps:.2f}"]
    except EdgeRunError:
        picked = ["nothing fits", "-", "-"]
    try:
        forced = plan_cluster(with_headroom(spec), c.shape, CTX)
        split = [_peak(forced), f"{split_speed(forced, c.shape, Link(), min(CTX, 512)):.2f}"]
    except EdgeRunError as e:
        split = [f"does not fit ({e.message.split(' would need')[0]})", "-"]
    return [f"`{board}`", str(n), shape, *picked, *split]


def cluster_scale() -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        candidates = _candidates(models)
        for board in BOARDS:
            for shape in SHAPES:
                for n in COUNTS:
                    rows.append(_row(board, n, f"{shape} {QUANT}", candidates[shape]))
    published = [[p.engine, p.model, p.boards, p.figures, p.source] for p in PUBLISHED]
    return (f"Predicted by `edge-run pick --cluster` at ctx {CTX} over header-only checkpoints of the real shapes "
            "(tools/shapes.py); need = what the node must hold at its peak, MiB (the most of any node); 1 GbE "
            "(110 MB/s, 0.3 ms round trip).\n\n"
            + table(["boards", "N", "model", "pick --cluster", "need MiB (node)", "tok/s",
                     "forced split over all N: need MiB (node)", "forced split tok/s"], rows)
            + "\nPublished figures of other engines, quoted for comparison (not measured by edge-run):\n\n"
            + table(["engine", "model", "boards", "published", "source"], published))


def cluster_memory() -> str:
    import json

    doc = json.loads((ROOT / "results" / "cluster_memory.json").read_text(encoding="utf-8"))
    rows = [[r["model"], str(r["workers"]), n["node"], str(n["layers"] + n["output_layer"]),
             f"{n['plan_weight_mib']:.1f}", f"{n['plan_kv_mib']:.1f}", f"{n['plan_mib']:.1f}",
             f"{n['peak_rss_mib']:.1f}", f"{n['error_pct']:+.2f}%",
             f"{n['limit_as_mib']:.0f}" if "limit_as_mib" in n else "-"]
            for r in doc["rows"] for n in r["nodes"]]
    s, first = doc["summary"], doc["rows"][0]
    return (f"From [`results/cluster_memory.json`](../../results/cluster_memory.json) ({doc['machine']}, "
            f"ctx {first['ctx']}, a {first['n_prompt']}-token prompt then {len(first['tokens'])} tokens): "
            f"{s['within_goal']} of {s['nodes']} nodes within {doc['goal_pct']:g}%, the largest error "
            f"{s['max_abs_error_pct']:.2f}%. Workers ran under RLIMIT_AS (the cap column, MiB of address space).\n\n"
            + table(["model", "workers", "node", "slots", "weights MiB", "KV MiB", "predicted peak MiB",
                     "measured peak MiB", "error", "cap MiB"], rows))


GENERATORS = {"cluster-scale": cluster_scale, "results-cluster-memory": cluster_memory}
