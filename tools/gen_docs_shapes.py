"""Docs tables of the real shapes (tools/shapes.py): what `pick` chooses on each shipped profile, and the measured
load modes (see tools/gen_docs.py for the block syntax).

``shape-picks``: every shipped profile at ctx 2048 and 8192, picking over header-only checkpoints of every shape
(sparse files, built into the zoo cache on first use: planning reads headers only). Nothing of a random-weight
shape is measured and none is a published model, so each is ranked by its parameter count: the pick is the
largest pairing that fits. The margin is the profile's budget less what the pairing needs.
``results-load-modes``: results/load_modes.json (tools/measure_load.py).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tools.gen_docs_code import table

ROOT = Path(__file__).resolve().parent.parent
CONTEXTS = (2048, 8192)


def _shape_models(dest: Path) -> None:
    """A models folder of every shape's header-only checkpoint (linked by the shape's own name)."""
    from tools.shapes import SHAPES, build

    for name in SHAPES:
        (dest / name).mkdir()
        for f in build(name, header_only=True).iterdir():
            (dest / name / f.name).symlink_to(f)


def _line(profile: str, ctx: int, row: Any, budget: float, fits: bool) -> list[str]:
    c, est = row.candidate, row.estimate
    what = f"{c.model} {c.quant}{'+imat' if c.imatrix else ''}" + (f" (at ctx {row.ctx})" if row.ctx else "")
    return [f"`{profile}`", str(ctx), what if fits else f"nothing fits (least: {what})", est.load_mode,
            f"{budget:.0f}", f"{est.total_mib:.0f} ({budget - est.total_mib:+.0f})"]


def shape_picks() -> str:
    from edge_run.core.errors import NothingFitsError
    from edge_run.profiles.devices import list_profiles
    from edge_run.runtime.eval.store import QualityStore
    from edge_run.runtime.pick.picker import budget_mib, evaluate, gather_candidates, pick
    from tools.shapes import SHAPES

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        _shape_models(models)
        candidates = gather_candidates(models, store=QualityStore(Path(tmp) / "store"))
        for profile in sorted(list_profiles(), key=lambda p: (p.ram_mb, p.name)):
            budget = budget_mib(profile)
            for ctx in CONTEXTS:
                try:
                    rows.append(_line(profile.name, ctx, pick(profile, candidates, ctx).pick, budget, True))
                except NothingFitsError:
                    least = min((evaluate(c, profile, ctx) for c in candidates), key=lambda r: r.estimate.total_mib)
                    rows.append(_line(profile.name, ctx, least, budget, False))
    shapes = ", ".join(f"{s.name} ({s.source})" for s in SHAPES.values())
    return (f"Shapes: {shapes}. Budget = RAM - OS reserve - headroom; need = the estimate `pick` budgets "
            "(anonymous memory and the file pages read every token, in the load mode shown).\n\n"
            + table(["profile", "ctx", "pick (largest that fits)", "load mode", "budget MiB", "need MiB (margin)"],
                    rows))


def load_modes() -> str:
    path = ROOT / "results" / "load_modes.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    rows = [[r["artifact"], str(r["ctx"]), r["mmap"], r["auto_would"], f"{r['estimate_rss_mib']:.0f}",
             f"{r['measured_peak_rss_mib']:.0f}", f"{r['error_pct']:+.1f}%", f"{r['load_seconds']:.1f}",
             f"{r['first_token_seconds']:.1f}", f"{r['load_average_1m']:.1f}"] for r in doc["rows"]]
    converts = [[f"{c['checkpoint']} -> {c['quants']}", f"{c['wall_seconds'] / 60:.1f}", f"{c['peak_rss_mib']:.0f}",
                 _f(c.get("load_average_1m"))] for c in doc.get("convert", [])]
    return (f"From [`results/load_modes.json`](../../results/load_modes.json): {doc['cpu_count']} CPUs "
            f"({', '.join(doc['simd'])}); a shared machine, its 1-minute load average beside each run.\n\n"
            + table(["artifact", "ctx", "mmap", "auto picks", "estimate peak MiB", "measured peak MiB", "error",
                     "load s", "first token s", "load avg"], rows)
            + ("\n`edge-run convert` of the random-weight BF16 checkpoints (GNU time: wall, the largest process's "
               "peak RSS):\n\n" + table(["conversion", "wall min", "peak RSS MiB", "load avg"], converts)
               if converts else ""))


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


GENERATORS = {"shape-picks": shape_picks, "results-load-modes": load_modes}
