"""Quality vs memory plot for `edge-run pick --plot` (matplotlib is an optional dependency)."""

from __future__ import annotations

from pathlib import Path

from edge_run.core.errors import UsageError
from edge_run.core.fsutil import atomic_path
from edge_run.runtime.pick.picker import PickResult


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten on both memory and BPB (lower is better for both), by memory."""
    front, best = [], float("inf")
    for mem, bpb in sorted(points):
        if bpb < best:
            front.append((mem, bpb))
            best = bpb
    return front


def plot_pick(result: PickResult, dest: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UsageError("--plot needs matplotlib", "pip install 'edge-run[plot]'") from e
    fig, ax = plt.subplots(figsize=(8, 5))
    total = {id(r): r.estimate.total_mib for r in result.rows if r.estimate is not None}
    for row in result.rows:
        x, y = total[id(row)], row.quality.bpb
        ax.scatter(x, y, marker="o" if row.quality.measured else "x", color="tab:blue" if row.fits else "tab:gray")
        ax.annotate(row.candidate.label.replace(" (planned)", "*"), (x, y), fontsize=6)
    front = pareto([(total[id(r)], r.quality.bpb) for r in result.rows])
    ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:green", label="Pareto frontier")
    ax.axvline(result.budget_mib, color="tab:red", linestyle="--", label=f"budget {result.budget_mib:.0f} MiB")
    p = result.pick
    ax.scatter([total[id(p)]], [p.quality.bpb], s=150, facecolors="none", edgecolors="tab:red", label="pick")
    ax.set_xlabel("estimated peak memory (MiB)")
    ax.set_ylabel("bits per byte on WikiText-2 (lower is better; x = predicted)")
    ax.set_title(f"{result.profile.description}, ctx {result.ctx}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(dest), force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
