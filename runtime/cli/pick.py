"""`edge-run pick`: the best model x quant pairing for a device profile, with the whole table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..picker import PickResult, gather_candidates, pick
from ..profiles import get_profile
from ._common import console, print_json


def pick_cmd(
    profile: str = typer.Option(..., "--profile", help="profile name, a .toml path, or 'auto'"),
    ctx: int = typer.Option(2048, "--ctx", min=16, help="context the pairing must hold"),
    min_tps: float = typer.Option(0.0, "--min-tps", min=0.0, help="minimum predicted decode tokens/s"),
    models: Path = typer.Option(Path("models"), "--models", help="folder of .gguf artifacts and HF checkpoints"),
    cache_type: str = typer.Option("f16", "--cache-type", help="KV cache type: f16 | q8_0 | q4_0 | f32"),
    as_json: bool = typer.Option(False, "--json"),
    plot: Path = typer.Option(None, "--plot", help="write quality vs memory (PNG) with budget and Pareto frontier"),
) -> None:
    """Show every candidate (memory, fit, quality, speed) and pick the best one that fits."""
    result = pick(get_profile(profile), gather_candidates(models), ctx=ctx, min_tps=min_tps, cache_type=cache_type)
    if plot is not None:
        from ..pick_plot import plot_pick

        plot_pick(result, plot)
    if as_json:
        print_json(result.to_dict())
        return
    _print(result)


def _print(r: PickResult) -> None:
    table = Table("pairing", "weights", "KV", "compute", "total MiB", "fits", "BPB", "tok/s", "max ctx", "why not",
                  title=f"{r.profile.description}: budget {r.budget_mib:.0f} MiB at ctx {r.ctx}")
    for row in r.rows:
        e = row.estimate
        mark = "->" if row is r.pick else ""
        table.add_row(f"{mark}{row.candidate.label}", f"{e.weights_file_mib:.0f}", f"{e.kv_mib:.0f}",
                      f"{e.compute_mib:.0f}", f"{e.total_mib:.0f}", "yes" if row.fits else "no",
                      row.quality.label, f"{row.tps:.1f}", str(row.max_ctx or ""), row.reason)
    console.print(table)
    console.print("BPB* = predicted (no `edge-run eval` measurement yet)")
    console.print(f"pick: {r.pick.candidate.label} ({r.pick.quality.basis}), binding constraint: {r.binding}")
    for note in r.counterfactuals:
        console.print(f"  - {note}")


def register(app: typer.Typer) -> None:
    app.command("pick")(pick_cmd)
