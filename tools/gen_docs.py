"""README tables generated from the code's own tables, so they cannot drift.

    python -m tools.gen_docs           # rewrite the generated blocks of README.md in place
    python -m tools.gen_docs --check   # exit 1 (naming the block) when README.md differs from the code

A block is ``<!-- gen:NAME -->`` ... ``<!-- /gen -->`` in README.md; NAME is a key of GENERATORS:

    archs     src/edge_run/converters/architectures.py ARCHITECTURES (one row per architecture)
    quants    src/edge_run/core/quants.py QUANTS (one row per quant type)
    profiles  the shipped profiles/*.toml
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- gen:(?P<name>[a-z]+) -->\n)(?P<body>.*?)(<!-- /gen -->)", re.S)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def archs() -> str:
    from edge_run.converters.architectures import ARCHITECTURES

    rows = []
    for hf_name, spec in sorted(ARCHITECTURES.items()):
        quirks = []
        if spec.permute_qk:
            quirks.append("q/k rows permuted to llama.cpp's rope order")
        if spec.norm_offset:
            quirks.append(f"norm weights +{spec.norm_offset:g}")
        quirks += [f"fused `{f.fused.rsplit('.', 1)[0]}`" for f in spec.fused]
        onnx = spec.onnx
        quirks += [name.replace("_", " ") for name in ("qk_norm", "sandwich_norms", "window_all_layers")
                   if getattr(onnx, name)]
        if onnx.embed_scale != "none":
            quirks.append(f"embeddings x {onnx.embed_scale.replace('_', ' ')}")
        rows.append([f"`{hf_name}`", spec.key, spec.gguf_arch.name.lower(),
                     ", ".join(spec.rope_types), "; ".join(quirks) or "-"])
    return _table(["architecture", "key", "llama.cpp graph", "rope scaling (GGUF; ONNX: any)", "row's hooks"], rows)


def quants() -> str:
    from edge_run.core.quants import QUANTS

    rows = []
    for q in QUANTS:
        rows.append([q.name, f"{q.bpw:g}", "yes" if q.needs_imatrix else "",
                     "" if q.ppl_delta is None else f"+{q.ppl_delta:.4f}", "yes" if q.planned else "",
                     "yes" if q.kv_cache else "", "yes" if q.mix is not None else ""])
    return _table(["type", "bits/weight", "needs imatrix", "PPL vs F16 (Llama-3-8B)", "planned", "KV cache",
                   "mix predicted"], rows)


def profiles() -> str:
    from edge_run.runtime.profiles import load_profile_file

    rows = []
    for path in sorted((ROOT / "profiles").glob("*.toml")):
        p = load_profile_file(path)
        rows.append([f"`{p.name}`", p.description, f"{p.ram_mb}", f"{p.physical_cores} x {p.core_type}",
                     ", ".join(p.simd), f"{p.memory_bandwidth_gbs:g}"])
    return _table(["profile", "device", "RAM MB", "cores", "SIMD", "GB/s"], rows)


GENERATORS: dict[str, Callable[[], str]] = {"archs": archs, "quants": quants, "profiles": profiles}


def render(text: str) -> str:
    def replace(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in GENERATORS:
            raise SystemExit(f"error: README block gen:{name} has no generator. use one of {', '.join(GENERATORS)}")
        return m.group(1) + GENERATORS[name]() + m.group(4)

    return BLOCK.sub(replace, text)


def stale_blocks(text: str) -> list[str]:
    fresh = {m.group("name"): m.group("body") for m in BLOCK.finditer(render(text))}
    return [m.group("name") for m in BLOCK.finditer(text) if m.group("body") != fresh[m.group("name")]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail when README.md differs from the code")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    if args.check:
        stale = stale_blocks(text)
        for name in stale:
            print(f"error: README block gen:{name} differs from the code. run python -m tools.gen_docs",
                  file=sys.stderr)
        return 1 if stale else 0
    new = render(text)
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
