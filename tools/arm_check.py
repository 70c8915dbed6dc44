"""The emulated ARM leg: Pi bundles installed and run in an arm64 Debian rootfs under qemu-user, per Pi CPU.

    python -m tools.arm_check [--cpus cortex-a72,cortex-a53,cortex-a76,max] [--out results/arm_check.json]
                              [--rss-out results/arm_rss.json] [--only cluster]
    make arm-check

What it does (see tools/arm_rootfs.py for the rootfs and how commands run in it):
 1. SmolLM2-135M from the zoo, converted on this (x86) host by edge-run to GGUF Q8_0 / Q4_K_M / Q4_0 and
    ONNX int4 (cached, keyed by the checkpoint's stamp); each run here greedily as the x86 reference.
 2. The Pi 4 (armv8-a) and Pi 5 (armv8.2-a+dotprod) bundles (`edge-run bundle`), copied into a throwaway
    copy of the cached rootfs and installed there with their own install.sh, offline.
 3. Per emulated CPU (QEMU_CPU): `edge-run profiles detect` must report that core's SIMD features; every
    artifact answers the prompt greedily: Q8_0, Q4_K_M and ONNX must say "Paris", every GGUF's text must
    equal the x86 text. The Pi 4 build runs on every CPU (it is the baseline); the Pi 5 build on cortex-a76.
 4. The negative: the Pi 5 bundle's install.sh on cortex-a72 refuses with one line (exit 3), and the Pi 5
    build run there anyway dies with SIGILL.
 5. Peak RSS of the Q4_0 / Q4_K_M / Q8_0 runs at ctx 512 and 2048 (guest memory only: tools/arm_rss.py)
    against src/edge_run/runtime/estimate/gguf.py for pi4-4gb (cortex-a72) and pi5-8gb (cortex-a76).
 6. Cluster (tools/arm_cluster.py): the Pi 4 bundle is installed with `install.sh --worker` (its
    edge-run-worker.service must hold the worker's command line); two aarch64 `edge-run worker`s from it on
    cortex-a72, and an x86 `edge-run run --cluster` splitting SmolLM2 Q4_K_M across them over loopback: the
    text must equal the single x86 process's, and each worker must end cleanly on SIGTERM.
    `--only cluster` runs this step alone (with the install it needs) and merges its rows into --out.
A table is printed at the end; exit status 0 only when every row passes. Emulated timings mean nothing and are
not reported, except the leg's own wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_run.core.errors import EdgeRunError, ResourceError
from edge_run.core.fsutil import cache_dir
from tools import arm_rootfs, arm_rss

PROMPT = "The capital of France is"
N_TOKENS = 8
MODEL = "smollm2-135m"
GGUF_QUANTS = ("Q8_0", "Q4_K_M", "Q4_0")
MUST_SAY_PARIS = frozenset({"Q8_0", "Q4_K_M", "ONNX-INT4"})  # Q4_0 does not on x86 either
RSS_CTX = (512, 2048)
SETTINGS: dict[str, Any] = {"tokens": N_TOKENS, "rss_ctx": RSS_CTX}  # --tokens / --rss-ctx
THREADS = 2


@dataclass(frozen=True)
class Board:
    """One emulated CPU: the qemu -cpu name, the SIMD features detect must report, the bundle it runs."""
    cpu: str
    simd: tuple[str, ...]
    profile: str  # the bundle installed for it
    artifacts: tuple[str, ...]
    rss: bool = False  # measure the memory table on this board


BOARDS: dict[str, Board] = {b.cpu: b for b in (
    Board("cortex-a72", ("neon",), "pi4-4gb", (*GGUF_QUANTS, "ONNX-INT4"), rss=True),  # Pi 4
    Board("cortex-a53", ("neon",), "pi4-4gb", ("Q4_K_M",)),  # Pi Zero 2 W / Pi 3: the same armv8-a build
    Board("cortex-a76", ("dotprod", "neon"), "pi5-8gb", GGUF_QUANTS, rss=True),  # Pi 5
    Board("max", ("dotprod", "i8mm", "neon", "sve"), "pi4-4gb", ()),  # i8mm / sve detection only
)}
NEGATIVE = ("pi5-8gb", "cortex-a72")
HOME_CPU = {"pi4-4gb": "cortex-a72", "pi5-8gb": "cortex-a76"}  # where each bundle is installed
RSS_ONLY_TOKENS = 2  # the ctx-2048 runs add memory rows: two tokens reach the peak (the KV cache is allocated)
STEPS = ("runs", "cluster")  # --only picks one; "runs": detect, answers, negative, memory
CLUSTER_PROFILE, CLUSTER_QUANT = "pi4-4gb", "Q4_K_M"
WORKER_INSTALL = ("--worker",)  # loopback 127.0.0.1:50052 (the unit's defaults); the leg's workers use free ports
SETTINGS["steps"] = STEPS


@dataclass
class Row:
    cpu: str
    what: str
    artifact: str = ""
    ok: bool = False
    rc: int | None = None
    answer: str = ""
    equal_x86: bool | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def log(msg: str) -> None:
    print(f"[arm-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def logged(row: Row) -> Row:
    """Every row is printed as it is made, so a leg that is stopped half-way still shows what it found."""
    log(f"{'pass' if row.ok else 'FAIL'} {row.cpu} {row.what} {row.artifact} rc={row.rc} {row.answer!r} "
        f"= x86: {row.equal_x86} {row.detail}")
    return row


def edge_run_cmd() -> list[str]:
    return [sys.executable, "-m", "edge_run.cli.main"]


# ------------------------------------------------------------------------------------- artifacts + x86

def artifacts(work: Path) -> dict[str, Path]:
    """SmolLM2-135M converted on this host, cached by the zoo checkpoint's stamp and the quant list."""
    subprocess.run([sys.executable, "-m", "tools.zoo", "build", MODEL], check=True, stdout=subprocess.DEVNULL)
    ckpt = Path(subprocess.run([sys.executable, "-m", "tools.zoo", "path", MODEL], check=True, text=True,
                               capture_output=True).stdout.strip())
    stamp = (ckpt / "zoo.json").read_bytes() if (ckpt / "zoo.json").is_file() else str(ckpt).encode()
    key = hashlib.sha256(stamp + json.dumps(GGUF_QUANTS).encode()).hexdigest()[:16]
    final = cache_dir() / "arm-check" / "models" / key
    if not (final / "done.json").is_file():
        tmp = final.with_name(f".tmp-{key}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            quants = ",".join(q.lower() for q in GGUF_QUANTS)
            for args in (["--quant", quants], ["--format", "onnx", "--quant", "int4"]):
                subprocess.run([*edge_run_cmd(), "convert", str(ckpt), *args, "--out", str(tmp), "--name", MODEL],
                               check=True, stdout=subprocess.DEVNULL)
            (tmp / "done.json").write_text("{}")
            shutil.rmtree(final, ignore_errors=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    found: dict[str, Path] = {}
    for q in GGUF_QUANTS:
        hits = sorted(final.glob(f"*{q}*.gguf")) or sorted(final.glob(f"*{q.lower()}*.gguf"))
        if not hits:
            raise ResourceError(f"no {q} GGUF in {final}", f"delete {final} and rerun")
        found[q] = hits[0]
    onnx = [p for p in final.iterdir() if p.is_dir() and (p / "genai_config.json").is_file()]
    if not onnx:
        raise ResourceError(f"no ONNX artifact in {final}", f"delete {final} and rerun")
    found["ONNX-INT4"] = onnx[0]
    return found


def parse_json(stdout: str) -> dict[str, Any] | None:
    """The JSON object `edge-run ... --json` prints (indented, possibly after other output)."""
    try:
        data = json.loads(stdout[stdout.index("{"):])
    except ValueError:  # no "{", or not JSON
        return None
    return data if isinstance(data, dict) else None


def run_json(cmd: list[str], **kw: Any) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return proc.returncode, parse_json(proc.stdout) or {}, proc.stderr.strip()


def x86_reference(arts: dict[str, Path]) -> dict[str, str]:
    ref = {}
    for name, path in arts.items():
        rc, data, err = run_json([*edge_run_cmd(), "run", str(path), "-p", PROMPT, "-n", str(SETTINGS["tokens"]),
                                  "--ctx", "512", "--threads", str(THREADS), "--json"])
        if rc != 0:
            raise ResourceError(f"the x86 reference run of {path.name} failed (exit {rc}): {err[-300:]}")
        ref[name] = data["text"]
    return ref


# ------------------------------------------------------------------------------------------- bundles

def bundle_profiles(profiles: set[str], negative: bool = True) -> list[str]:
    """The bundles the chosen boards run, plus the Pi 5 one for the negative when a Pi 4 core is emulated."""
    if negative and NEGATIVE[1] in {b.cpu for b in BOARDS.values() if b.profile in profiles}:
        profiles = profiles | {NEGATIVE[0]}
    return sorted(profiles)


def bundle(arts: dict[str, Path], work: Path, profile: str) -> Path:
    """`edge-run bundle` for the profile (its cross-built llama-cpp-python wheel is cached by the bundle module)."""
    from edge_run.runtime.bundle.build import build_bundle

    log(f"bundle for {profile}")
    return build_bundle(arts["Q4_K_M"], profile, work / f"bundle-{profile}", python="3.13", force=True).folder


# ------------------------------------------------------------------------------------- emulated steps

def emulated_run(root: Path, board: Board, prefix: str, key: str, ctx: int, ref: dict[str, str],
                 arts: dict[str, Path]) -> Row:
    name = arts[key].name
    n = SETTINGS["tokens"] if ctx == SETTINGS["rss_ctx"][0] else min(RSS_ONLY_TOKENS, SETTINGS["tokens"])
    cmd = arm_rootfs.chroot_cmd(root, [f"{prefix}/bin/edge-run", "run", f"/opt/models/{name}", "-p", PROMPT,
                                       "-n", str(n), "--ctx", str(ctx), "--threads", str(THREADS), "--json"])
    m = arm_rss.run_sampled(cmd, arm_rootfs.emulated_env(board.cpu), timeout=900)
    row = Row(board.cpu, f"run ctx {ctx}", key, rc=m.returncode)
    data = parse_json(m.stdout)
    if data is None or m.returncode != 0:
        row.detail = (m.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return row
    row.answer = data["text"]
    row.equal_x86 = row.answer == ref[key] if n == SETTINGS["tokens"] else ref[key].startswith(row.answer)
    paris = "Paris" in row.answer
    row.ok = m.returncode == 0 and (paris or key not in MUST_SAY_PARIS) and (row.equal_x86 or key == "ONNX-INT4")
    if key == "ONNX-INT4" and not row.equal_x86:
        row.detail = "ONNX: MLAS kernels differ per ISA; only 'Paris' is required"
    row.extra = {"quant": key, "ctx": ctx, "guest_peak_mib": round(m.guest_peak_mib, 1),
                 "qemu_mib": round(m.qemu_mib, 1), "prompt_tokens": data.get("prompt_tokens"),
                 "x86_text": ref[key], "profile": board.profile}
    return row


def detect_row(root: Path, board: Board, prefix: str) -> Row:
    proc = arm_rootfs.run_emulated(root, board.cpu, [f"{prefix}/bin/edge-run", "profiles", "detect", "--json"])
    row = Row(board.cpu, "profiles detect", rc=proc.returncode)
    data = parse_json(proc.stdout)
    if data is None:
        row.detail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return row
    got = tuple(sorted(data.get("simd", ())))
    row.answer = ",".join(got)
    row.ok = proc.returncode == 0 and got == board.simd and data.get("arch") == "arm64"
    row.detail = f"expected {','.join(board.simd)}; core_type {data.get('core_type')}"
    return row


def install(root: Path, profile: str, cpu: str, env: dict[str, str] | None = None,
            args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return arm_rootfs.run_emulated(root, cpu, ["sh", f"/opt/bundles/{profile}/install.sh", *args], timeout=1800,
                                   env={"EDGE_RUN_PREFIX": f"/opt/{profile}", "PIP_NO_COMPILE": "1", **(env or {})})


# ------------------------------------------------------------------------------------------- cluster

def worker_unit_row(root: Path, prefix: str) -> Row:
    """install.sh --worker wrote the worker's unit where systemd reads it, with the command line it runs."""
    want = f'ExecStart={prefix}/venv/bin/edge-run worker --threads 4 --host "127.0.0.1" --port "50052"'
    try:
        lines = (root / "etc" / "systemd" / "system" / "edge-run-worker.service").read_text().splitlines()
    except OSError as e:
        return Row(HOME_CPU[CLUSTER_PROFILE], "worker unit (install.sh --worker)", detail=str(e))
    got = next((ln for ln in lines if ln.startswith("ExecStart=")), "")
    return Row(HOME_CPU[CLUSTER_PROFILE], "worker unit (install.sh --worker)", ok=got == want, answer=got[10:],
               detail=f"expected {want[10:]}")


def cluster_row(root: Path, prefix: str, arts: dict[str, Path], ref: dict[str, str]) -> Row:
    """Two emulated aarch64 workers, an x86 host splitting the model across them: the x86 text (arm_cluster.py)."""
    from tools import arm_cluster

    cpu, key = arm_cluster.WORKER_CPU, CLUSTER_QUANT
    row = Row(cpu, f"cluster: x86 host + {arm_cluster.WORKERS} workers", key)
    t0 = time.monotonic()
    try:
        with arm_cluster.emulated_workers(root, prefix) as workers:
            started = time.monotonic() - t0
            spec = ",".join(f"{CLUSTER_PROFILE}@{w.endpoint}" for w in workers)
            rc, data, err = run_json([*edge_run_cmd(), "run", str(arts[key]), "-p", PROMPT, "-n",
                                      str(SETTINGS["tokens"]), "--ctx", "512", "--threads", str(THREADS),
                                      "--cluster", spec, "--json"], timeout=1800)
    except (EdgeRunError, subprocess.TimeoutExpired) as e:
        row.detail = str(e)[:200]
        return row
    clean = all(w.stopped_cleanly for w in workers)
    row.rc, row.answer = rc, data.get("text", "")
    row.equal_x86 = rc == 0 and row.answer == ref[key]
    row.ok = bool(row.equal_x86) and clean and "Paris" in row.answer
    nodes = data.get("cluster", {}).get("nodes", [])
    row.detail = (f"layers {'/'.join(str(n.get('layers')) for n in nodes)}; workers stopped cleanly on SIGTERM: "
                  f"{clean}" if rc == 0 else (err.splitlines() or ["no output"])[-1][:200])
    row.extra = {"quant": key, "ctx": 512, "x86_text": ref[key], "cluster": data.get("cluster"),
                 "workers": [w.banner for w in workers], "workers_start_s": round(started, 1),
                 "seconds": round(time.monotonic() - t0, 1)}
    return row


def negative_rows(root: Path, arts: dict[str, Path]) -> list[Row]:
    profile, cpu = NEGATIVE
    proc = install(root, profile, cpu, {"EDGE_RUN_PREFIX": "/opt/refused"})
    lines = proc.stderr.strip().splitlines()
    refused = Row(cpu, f"install {profile} bundle", rc=proc.returncode, answer=(lines or [""])[-1][:120])
    refused.ok = proc.returncode == 3 and len(lines) == 1 and "lacks" in lines[0] and "asimddp" in lines[0]
    refused.detail = "must be refused with one line (exit 3)"
    forced = emulated_run(root, BOARDS[cpu], f"/opt/{profile}", "Q8_0", 512, {"Q8_0": ""}, arts)
    row = Row(cpu, f"{profile} build forced", "Q8_0", rc=forced.rc, answer=forced.answer or forced.detail)
    row.ok = forced.rc in (-4, 132)  # SIGILL, seen directly or through a shell
    row.detail = "must die with SIGILL (rc -4 / 132)"
    return [refused, row]


def group_rows(pristine: Path, profile: str, boards: list[Board], arts: dict[str, Path], ref: dict[str, str],
               work: Path) -> tuple[list[Row], arm_rss.Measured | None]:
    """Install one bundle in its own rootfs copy, then every board that runs it; the Pi 5 group adds the negative
    (its build on a Pi 4 core), the Pi 4 group the idle-python measurement of qemu's own footprint."""
    rows: list[Row] = []
    idle = None
    with arm_rootfs.work_rootfs(pristine, tag=profile) as root:
        arm_rootfs.self_check(root)
        (root / "opt" / "models").mkdir(parents=True, exist_ok=True)
        for path in arts.values():
            dest = root / "opt" / "models" / path.name
            shutil.copytree(path, dest) if path.is_dir() else shutil.copy2(path, dest)
            manifest = path.with_name(path.name + ".manifest.json")
            if manifest.is_file():
                shutil.copy2(manifest, dest.with_name(manifest.name))
        shutil.copytree(bundle(arts, work, profile), root / "opt" / "bundles" / profile)
        cpu = HOME_CPU[profile]
        worker = profile == CLUSTER_PROFILE and "cluster" in SETTINGS["steps"]
        args = WORKER_INSTALL if worker else ()
        log(f"install {profile} bundle on {cpu} {' '.join(args)}")
        proc = install(root, profile, cpu, args=args)
        rows.append(Row(cpu, f"install {profile} bundle", ok=proc.returncode == 0, rc=proc.returncode,
                        answer=(proc.stderr.strip().splitlines() or [""])[-1][:120], detail=" ".join(args)))
        if proc.returncode != 0:
            return rows, idle
        prefix = f"/opt/{profile}"
        if worker:
            log(f"cluster: {profile} workers on {HOME_CPU[profile]}, x86 host")
            rows += [logged(worker_unit_row(root, prefix)), logged(cluster_row(root, prefix, arts, ref))]
        if "runs" not in SETTINGS["steps"]:
            return rows, idle
        for board in boards:
            log(f"{board.cpu}: detect + runs ({profile} build)")
            rows.append(logged(detect_row(root, board, prefix)))
            for key in board.artifacts:
                for ctx in (SETTINGS["rss_ctx"] if board.rss and key in GGUF_QUANTS else SETTINGS["rss_ctx"][:1]):
                    rows.append(logged(emulated_run(root, board, prefix, key, ctx, ref, arts)))
        if profile == NEGATIVE[0]:
            log(f"negative: {profile} bundle on {NEGATIVE[1]}")
            rows += [logged(r) for r in negative_rows(root, arts)]
        if profile == "pi4-4gb":
            idle = arm_rss.run_sampled(arm_rss.idle_python_cmd(root, f"{prefix}/venv/bin/python"),
                                       arm_rootfs.emulated_env("cortex-a72"), timeout=600)
    return rows, idle


# ------------------------------------------------------------------------------------------------- rss

def rss_table(rows: list[Row], arts: dict[str, Path], idle_qemu_mib: float) -> list[dict[str, Any]]:
    from edge_run.profiles.devices import get_profile
    from edge_run.runtime.estimate.gguf import estimate_memory, shape_from_gguf

    table = []
    for r in rows:
        if r.what.startswith("run") and r.rc == 0 and r.extra.get("quant") in GGUF_QUANTS \
                and BOARDS[r.cpu].rss and r.extra.get("profile") == BOARDS[r.cpu].profile:
            prof = get_profile(r.extra["profile"])
            est = estimate_memory(shape_from_gguf(arts[r.extra["quant"]]), r.extra["ctx"], prof.simd,
                                  n_prompt=r.extra["prompt_tokens"])
            measured = r.extra["guest_peak_mib"]
            table.append({"profile": prof.name, "cpu": r.cpu, "quant": r.extra["quant"], "ctx": r.extra["ctx"],
                          "measured_mib": measured, "estimate_mib": round(est.rss_mib, 1), "load_mode": est.load_mode,
                          "repacked_mib": round(est.weights_repacked_mib, 1),
                          "error_pct": round(100 * (est.rss_mib - measured) / measured, 1),
                          "qemu_run_mib": r.extra["qemu_mib"], "qemu_idle_mib": round(idle_qemu_mib, 1)})
    return table


# ------------------------------------------------------------------------------------------------ main

def merge_partial(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """--only STEP: this run's rows replace the previous full leg's rows of the same (cpu, step, artifact); the
    others are kept, and ``partial`` says which steps this run redid and when."""
    try:
        prev = json.loads(out.read_text())
    except (OSError, ValueError):
        return summary

    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r["cpu"], r["what"], r["artifact"]
    new = {key(r) for r in summary["rows"]}
    rows = [r for r in prev.get("rows", []) if key(r) not in new] + summary["rows"]
    partial = {"steps": list(SETTINGS["steps"]), "seconds": summary["leg_seconds"],
               "date": time.strftime("%Y-%m-%d %H:%M"), "failed": summary["failed"]}
    return {**prev, "rows": rows, "failed": sum(1 for r in rows if not r["ok"] and not r["what"].startswith("rss")),
            "cluster_step_seconds": summary["cluster_step_seconds"], "partial": partial}


def print_table(rows: list[Row]) -> None:
    head = ("cpu", "step", "artifact", "answer", "= x86", "rc", "ok")
    body = [(r.cpu, r.what, Path(r.artifact).name[:28], repr(r.answer[:40]),
             "-" if r.equal_x86 is None else "yes" if r.equal_x86 else "NO", str(r.rc), "pass" if r.ok else "FAIL")
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    for line in (head, *body):
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)))


def leg(cpus: list[str], out: Path, rss_out: Path, negative: bool = True, rss_gate: bool = False) -> int:
    t0 = time.monotonic()
    arm_rootfs.check_host()
    work = cache_dir() / "arm-check" / f"work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        log("rootfs")
        pristine, rootfs_s = arm_rootfs.ensure_rootfs(work.parent / "mmdebstrap.log")
        log(f"rootfs ready ({f'built in {rootfs_s:.0f} s' if rootfs_s else 'cached'}); artifacts + x86 reference")
        arts = artifacts(work)
        ref = x86_reference(arts)
        groups = {profile: [BOARDS[c] for c in cpus if BOARDS[c].profile == profile]
                  for profile in bundle_profiles({BOARDS[c].profile for c in cpus}, negative)}
        if "runs" not in SETTINGS["steps"]:  # --only cluster: the Pi 4 bundle, installed as a worker
            groups = {CLUSTER_PROFILE: []}
        with ThreadPoolExecutor(len(groups)) as pool:  # one bundle and rootfs copy per group, run side by side
            results = list(pool.map(lambda g: group_rows(pristine, g[0], g[1], arts, ref, work), groups.items()))
        rows = [r for group_rows_, _ in results for r in group_rows_]
        idle = next((m for _, m in results if m is not None), None)
        table = rss_table(rows, arts, idle.qemu_mib if idle else float("nan"))
        for t in table:
            rows.append(Row(t["cpu"], f"rss ctx {t['ctx']}", t["quant"], ok=abs(t["error_pct"]) <= 5.0,
                            answer=f"{t['measured_mib']} MiB vs est {t['estimate_mib']}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    leg_s = time.monotonic() - t0
    print_table(rows)
    failed = [r for r in rows if not r.ok and (rss_gate or not r.what.startswith("rss"))]
    over = [r for r in rows if not r.ok and r.what.startswith("rss")]
    if over and not rss_gate:
        log(f"{len(over)} memory rows are more than 5% off the estimate (reported, not gating: see --rss-gate)")
    summary = {"leg_seconds": round(leg_s), "rootfs_build_seconds": round(rootfs_s), "cold_rootfs": rootfs_s > 0,
               "prompt": PROMPT, "n_tokens": SETTINGS["tokens"], "x86_reference": ref,
               "rows": [asdict(r) for r in rows], "failed": len(failed)}
    cluster_s = [r.extra["seconds"] for r in rows if r.what.startswith("cluster") and "seconds" in r.extra]
    summary["cluster_step_seconds"] = cluster_s[0] if cluster_s else None
    if tuple(SETTINGS["steps"]) != STEPS:
        summary = merge_partial(out, summary)
    qemu_idle = {"qemu_idle_python_mib": round(idle.qemu_mib, 1),
                 "idle_python_guest_mib": round(idle.guest_peak_mib, 1)} if idle else {}
    outputs = ((out, summary), (rss_out, {**qemu_idle, "rows": table})) if "runs" in SETTINGS["steps"] else \
        ((out, summary),)
    for path, data in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    log(f"{len(rows) - len(failed)}/{len(rows)} passed in {leg_s:.0f} s (rootfs {'built' if rootfs_s else 'cached'})")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.arm_check", description=__doc__.split("\n")[0])
    ap.add_argument("--cpus", default=",".join(BOARDS), help=f"emulated CPUs (default {','.join(BOARDS)})")
    ap.add_argument("--out", type=Path, default=Path("results/arm_check.json"))
    ap.add_argument("--rss-out", type=Path, default=Path("results/arm_rss.json"))
    ap.add_argument("--tokens", type=int, default=N_TOKENS, help="tokens generated per answer run")
    ap.add_argument("--rss-ctx", default=",".join(map(str, RSS_CTX)),
                    help="contexts of the memory runs; the first is also the answer runs' context")
    ap.add_argument("--rss-gate", action="store_true",
                    help="fail the leg when a memory row is more than 5%% off the estimate (default: report it)")
    ap.add_argument("--no-negative", action="store_true",
                    help="skip the Pi 5 build on cortex-a72 check (it needs the Pi 5 bundle too)")
    ap.add_argument("--only", help=f"one step of {', '.join(STEPS)} (with the installs it needs); its rows replace "
                                   "the same rows in --out")
    args = ap.parse_args(argv)
    if args.only is not None and args.only not in STEPS:
        print(f"error: --only {args.only!r} is not a step. choose from {', '.join(STEPS)}", file=sys.stderr)
        return 2
    SETTINGS["steps"] = (args.only,) if args.only else STEPS
    cpus = [c.strip() for c in args.cpus.split(",") if c.strip()]
    try:
        SETTINGS["rss_ctx"] = tuple(int(c) for c in args.rss_ctx.split(","))
    except ValueError:
        print(f"error: --rss-ctx {args.rss_ctx!r} is not a comma-separated list of integers. e.g. 512,2048",
              file=sys.stderr)
        return 2
    SETTINGS["tokens"] = args.tokens
    unknown = [c for c in cpus if c not in BOARDS]
    if unknown:
        print(f"error: unknown cpu {', '.join(unknown)}. choose from {', '.join(BOARDS)}", file=sys.stderr)
        return 2
    try:
        return leg(cpus, args.out, args.rss_out, negative=not args.no_negative, rss_gate=args.rss_gate)
    except EdgeRunError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except subprocess.CalledProcessError as e:
        print(f"error: {' '.join(map(str, e.cmd))[:200]} failed with exit {e.returncode}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
