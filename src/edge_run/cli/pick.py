"""`edge-run pick`: the best model x quant pairing for a device profile, with the whole table."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from edge_run.cli._common import console, err_console, print_json, progress_bars
from edge_run.core.errors import UsageError
from edge_run.core.tuning import BASE, INSTRUCT, UNKNOWN
from edge_run.profiles.devices import get_profile
from edge_run.runtime.eval.store import QualityStore
from edge_run.runtime.pick.picker import PickResult, gather_candidates, pick
from edge_run.runtime.pick.quality import measure_command


def pick_cmd(
    profile: str = typer.Option(None, "--profile", help="profile name, a .toml path, or 'auto'"),
    ctx: int = typer.Option(2048, "--ctx", min=16, help="context the pairing must hold"),
    min_tps: float = typer.Option(0.0, "--min-tps", min=0.0, help="minimum predicted decode tokens/s"),
    models: Path = typer.Option(Path("models"), "--models", help="folder of .gguf artifacts and HF checkpoints"),
    cache_type: str = typer.Option("f16", "--cache-type",
                                   help="KV cache type: f16 | q8_0 | q4_0 | f32, or auto: f16 unless a q8_0 cache "
                                        "(with flash attention) makes a better pairing fit"),
    min_ctx: int = typer.Option(None, "--min-ctx", min=16,
                                help="allow trading context for quality: rank pairings that fit only at a shorter "
                                     "context, down to this one (default: --ctx is a requirement)"),
    purpose: str = typer.Option("text", "--for", help="text: the best quality that fits; chat (as `chat`, `serve`, "
                                "`run --chat` pick): an instruction-tuned model first"),
    as_json: bool = typer.Option(False, "--json"),
    plot: Path = typer.Option(None, "--plot", help="write quality vs memory (PNG) with budget and Pareto frontier"),
    measure: bool = typer.Option(False, "--measure", help="measure the quality the ranking needs first (stored)"),
    budget_seconds: float = typer.Option(None, "--budget-seconds", min=1.0, help="with --measure: time budget"),
    chunks: int = typer.Option(20, "--chunks", min=1, help="with --measure: chunks of 512 tokens per model"),
    slice_chunks: int = typer.Option(4, "--slice-chunks", min=1, help="with --measure: chunks per pairing"),
    cluster: str = typer.Option(None, "--cluster", help="pick for boards together instead of --profile: a cluster "
                                "FILE, NAME or profile@host:port,... (one board when a pairing fits one, else split)"),
) -> None:
    """Show every candidate (memory, fit, quality, speed) and pick the best one that fits."""
    if (profile is None) == (cluster is None):
        raise UsageError("pick needs one of --profile or --cluster", "e.g. --profile pi5-8gb, or --cluster "
                         "pi4-4gb@10.0.0.2:50052,pi4-4gb@10.0.0.3:50052")
    if cluster is not None:
        from edge_run.cli._cluster_open import pick_over_cluster

        return pick_over_cluster(cluster, models, ctx, cache_type, as_json)
    store = QualityStore.default()
    dev = get_profile(profile)
    result = pick(dev, gather_candidates(models, store=store), ctx=ctx, min_tps=min_tps, cache_type=cache_type,
                  min_ctx=min_ctx, purpose=purpose)
    if measure:
        _measure(result, store, chunks, min(slice_chunks, chunks), budget_seconds, quiet=as_json)
        result = pick(dev, gather_candidates(models, store=store), ctx=ctx, min_tps=min_tps, cache_type=cache_type,
                      min_ctx=min_ctx, purpose=purpose)
    for problem in dict.fromkeys(store.problems):
        err_console.print(f"note: {problem}", markup=False, soft_wrap=True)  # one line each, as long as it is
    if plot is not None:
        from edge_run.runtime.pick.plot import plot_pick

        plot_pick(result, plot)
    if as_json:
        commands = list(dict.fromkeys(measure_command(r.candidate, dev.name, str(models))
                                      for r in result.rows if r.quality.unmeasured))
        print_json({**result.to_dict(), "measure_commands": commands,
                    "quality_store_notes": list(dict.fromkeys(store.problems))})
        return
    _print(result, str(models))


def _measure(result: PickResult, store: QualityStore, chunks: int, slice_chunks: int, budget: float | None,
             quiet: bool) -> None:
    from edge_run.runtime.pick.measure import measuring, plan, run

    with measuring():  # held from planning on: a second `pick --measure` says at once that this one is running
        report = plan(result, store, chunks, slice_chunks, budget)
        out = err_console if quiet else console
        cheapest = report.cheapest_left_out
        if report.planned:
            out.print(f"measure: {len(report.planned)} steps, about {report.est_seconds / 60:.1f} min: "
                      + ", ".join(s.label for s in report.planned), markup=False)
        elif cheapest is not None:
            out.print(f"measure: --budget-seconds {budget:g} is too small for the cheapest step "
                      f"({cheapest.label}, about {cheapest.est_seconds:.0f} s): nothing measured; "
                      f"pass --budget-seconds {math.ceil(cheapest.est_seconds)} or more", markup=False, soft_wrap=True)
        else:
            out.print("measure: nothing to do, the quality store already has what the ranking needs")
        if report.over_budget:
            out.print(f"measure: {len(report.over_budget)} steps left out by --budget-seconds: "
                      + ", ".join(s.label for s in report.over_budget), markup=False)
        if not report.planned:
            return
        with progress_bars(enabled=not quiet) as progress:
            run(report, store, progress=progress)
    for step, seconds, bpb in report.done:
        out.print(f"  {step.label}: BPB {bpb:.4f} ({seconds:.0f} s)", markup=False)


def _print(r: PickResult, models: str) -> None:
    table = Table("pairing", "load", "weights", "KV", "compute", "total MiB", "fits", "BPB", "chat", "tok/s", "max ctx",
                  "why not",
                  title=f"{r.profile.description}: budget {r.budget_mib:.0f} MiB at ctx {r.ctx}")
    for row in r.rows:
        e = row.estimate
        assert e is not None  # pick() estimates every row it returns
        mark = "->" if row is r.pick else ""
        at = f" @ctx {row.ctx}" if row.ctx else ""
        table.add_row(f"{mark}{row.candidate.label}{at}", e.load_mode or "-", f"{e.weights_mib:.0f}", f"{e.kv_mib:.0f}",
                      f"{e.compute_mib:.0f}", f"{e.total_mib:.0f}", "yes" if row.fits else "no",
                      row.quality.label, CHAT_MARKS[row.candidate.tuning.kind], f"{row.tps:.1f}",
                      str(row.max_ctx or ""), row.reason)
    console.print(table)
    console.print("BPB* = predicted from the same model's measured quality and the pairing's tensor-type mix; "
                  "unmeasured = nothing of that model is measured (ranked below every measured model); chat: tuned = "
                  "instruction-tuned, base = base model, ? = not known (--for chat picks a tuned model first)")
    for cmd in dict.fromkeys(measure_command(row.candidate, r.profile.name, models)
                             for row in r.rows if row.quality.unmeasured):
        console.print(f"measure the unmeasured: {cmd}", markup=False)
    at = f" at ctx {r.pick.ctx} (--min-ctx)" if r.pick.ctx else ""
    console.print(f"pick: {r.pick.candidate.label}{at}, BPB {r.pick.quality.label} ({r.pick.quality.basis}), "
                  f"binding constraint: {r.binding}", markup=False)
    if r.note:
        console.print(f"note: {r.note}", markup=False)
    for note in r.counterfactuals:
        console.print(f"  - {note}")


CHAT_MARKS = {INSTRUCT: "tuned", BASE: "base", UNKNOWN: "?"}


def register(app: typer.Typer) -> None:
    app.command("pick")(pick_cmd)
