"""README.txt of a bundle: what was picked for which board and why, with the picker's numbers."""

from __future__ import annotations

from edge_run.core.quoting import display_text, sh_word
from edge_run.runtime.bundle.baselines import Baseline
from edge_run.runtime.pick.picker import PickResult


def readme_text(result: PickResult, baseline: Baseline, python: str, n_ctx: int, threads: int,
                wheels: list[str]) -> str:
    prof, row = result.profile, result.pick
    c, est = row.candidate, row.estimate
    how = "measured" if row.quality.measured else "predicted"
    quality = f"{row.quality.bpb:.3f} bits per byte on WikiText-2 ({how})"
    memory = (f"{est.total_mib:.0f} MiB at ctx {est.n_ctx} (KV cache {est.kv_mib:.0f} MiB, file-backed "
              f"{est.file_mib:.0f} MiB, anonymous {est.anon_mib:.0f} MiB)") if est else "not estimable"
    others = [r for r in result.rows if r is not row]
    model = f"models/{c.path.name if c.path else '?'}"
    lines = [
        f"edge-run bundle for {prof.name}: {prof.description}",
        "",
        f"Board       {prof.ram_mb} MiB RAM, {prof.os_reserved_mb} MiB kept by the OS, {prof.physical_cores} x "
        f"{prof.core_type}, simd {', '.join(prof.simd)}",
        f"CPU build   llama.cpp for {baseline.name} ({baseline.boards}); install.sh requires the /proc/cpuinfo "
        f"features: {' '.join(baseline.cpu_features)}",
        f"Python      CPython {python} (linux aarch64 wheels)",
        "",
        f"Model       {c.model} {c.quant} [{c.format}] -> {model}",
        f"Why         the best quality that fits the budget of {result.budget_mib:.0f} MiB "
        f"(RAM - OS reserve - headroom): {quality}",
        f"Memory      {memory}",
        f"Speed       about {row.tps:.1f} tokens/s decode (predicted from {prof.memory_bandwidth_gbs} GB/s)",
        f"Context     {n_ctx} tokens (largest that fits: {row.max_ctx or 'n/a'})",
        f"Binding     {result.binding}",
    ]
    lines += [f"            {note}" for note in result.counterfactuals]
    if others:
        lines += ["", "Other candidates considered:"]
        lines += [f"  {r.candidate.label}: {'fits' if r.fits else r.reason}" for r in others]
    lines += [
        "",
        "Install (no network, no compiler):  sh install.sh        (EDGE_RUN_PREFIX=/opt/edge-run by default)",
        f"Serve:  edge-run serve {sh_word(model)} --host 127.0.0.1 --threads {threads} "
        f"--ctx {n_ctx}   (edge-run.service runs this under systemd, restarting on failure)",
        f"Worker: sh install.sh --worker --host ADDR --allow NET   (this board serves a share of a model split "
        f"over a cluster: edge-run-worker.service, edge-run worker --threads {threads}; llama.cpp RPC built in)",
        "",
        "Wheels:",
        *[f"  {w}" for w in wheels],
        "",
    ]
    return "\n".join(display_text(line) for line in lines)  # names, descriptions: one line each, no controls
