"""Tables generated from the code's own registries, the CLI and the tests' case tables (see tools/gen_docs.py).

    archs          src/edge_run/converters/architectures.py ARCHITECTURES (one row per architecture)
    quants         src/edge_run/core/quants.py QUANTS (one row per quant type); quant-names: the names in one line
    onnx-schemes   src/edge_run/converters/onnx/quantize.py SCHEMES
    profiles       the shipped profiles (src/edge_run/profiles/*.toml)
    baselines      src/edge_run/runtime/bundle/baselines.py BASELINES, with the profiles each one serves
    exit-codes     src/edge_run/core/errors.py: the documented codes and the error classes that exit with each
    bad-inputs     the CASES rows of every tests/**/test_bad_inputs*.py (imported, not copied)
    serve-bad-requests  the CASES rows of tests/**/test_serve_bad_input*.py
    commands       one row per command of `edge-run` (its usage and the first line of its help)
    cli            every command's help, usage and options, read from the command tree
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        """One line; pipes escaped; outside code spans, ``<`` too (markdown would read ``pp<N>`` as a tag)."""
        parts = re.split(r"(`+[^`]*`+)", text.replace("|", "\\|").replace("\n", " "))
        return "".join(p if p.startswith("`") else p.replace("<", "&lt;") for p in parts)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
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
    return table(["architecture", "key", "llama.cpp graph", "rope scaling (GGUF; ONNX: any)", "row's hooks"], rows)


def quants() -> str:
    from edge_run.core.quants import QUANTS

    rows = []
    for q in QUANTS:
        rows.append([q.name, f"{q.bpw:g}", "yes" if q.needs_imatrix else "",
                     "" if q.ppl_delta is None else f"+{q.ppl_delta:.4f}", "yes" if q.planned else "",
                     "yes" if q.kv_cache else "", "yes" if q.mix is not None else ""])
    return table(["type", "bits/weight", "needs imatrix", "PPL vs F16 (Llama-3-8B)", "planned", "KV cache",
                  "mix predicted"], rows)


def quant_names() -> str:
    from edge_run.converters.onnx.quantize import SCHEMES
    from edge_run.core.quants import PLANNED_QUANTS, QUANTS

    return (f"GGUF, {len(QUANTS)} llama.cpp types: {', '.join(q.name for q in QUANTS)} (the picker plans "
            f"{', '.join(PLANNED_QUANTS)}). ONNX: {', '.join(SCHEMES)}.\n")


def onnx_schemes() -> str:
    from edge_run.converters.onnx.quantize import SCHEMES

    return table(["scheme", "weights"], [[f"`{s.name}`", s.description] for s in SCHEMES.values()])


def _shipped_profiles() -> list[Any]:
    from importlib import resources

    from edge_run.profiles.devices import load_profile_file

    folder = Path(str(resources.files("edge_run.profiles")))
    return [load_profile_file(p) for p in sorted(folder.glob("*.toml"))]


def profiles() -> str:
    rows = [[f"`{p.name}`", p.description, f"{p.ram_mb}", f"{p.physical_cores} x {p.core_type}",
             ", ".join(p.simd), f"{p.memory_bandwidth_gbs:g}"] for p in _shipped_profiles()]
    return table(["profile", "device", "RAM MB", "cores", "SIMD", "GB/s"], rows)


def baselines() -> str:
    from edge_run.runtime.bundle.baselines import BASELINES, BUNDLE_ARCH, baseline_for_profile

    served: dict[str, list[str]] = {b.name: [] for b in BASELINES}
    for p in _shipped_profiles():
        if p.arch == BUNDLE_ARCH:
            served[baseline_for_profile(p).name].append(p.name)
    rows = [[f"`{b.march}`", " ".join(b.cpu_features), f"`+{b.wheel_tag}`", ", ".join(served[b.name]) or "-",
             b.boards] for b in BASELINES]
    return table(["baseline (`-march`)", "install.sh requires (cpuinfo Features)", "wheel tag", "shipped profiles",
                  "boards"], rows)


def _kind_detail(text: str) -> tuple[str, str]:
    """``usage error      bad option value`` -> ("usage error", "bad option value"): the docstring's two columns."""
    parts = re.split(r"\s{2,}", text.strip(), maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def exit_codes() -> str:
    """The codes errors.py documents, each with the classes that exit with it."""
    from edge_run.core import errors

    doc = (errors.__doc__ or "").split("Exit codes", 1)[1]
    meaning = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\s+(\d+)\s+(.+)$", doc, re.M)}
    classes: list[type[errors.EdgeRunError]] = [
        c for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.EdgeRunError) and c is not errors.EdgeRunError]
    rows = []
    for code, text in sorted(meaning.items()):
        names = sorted(c.__name__ for c in classes if c.exit_code == code)
        kind, detail = _kind_detail(text)
        rows.append([str(code), f"{kind}: {detail}" if detail else kind, ", ".join(f"`{n}`" for n in names) or "-"])
    return table(["exit", "meaning", "raised as (`edge_run.core.errors`)"], rows)


def _test_modules(pattern: str) -> list[Any]:
    """The test modules under tests/ whose file name matches ``pattern``, imported as the tests import them."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    modules = []
    for path in sorted((ROOT / "tests").rglob(pattern)):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules.append(importlib.import_module(name))
    return modules


def _code(text: str) -> str:
    """``text`` as an inline code span, even when it holds backticks."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def bad_inputs() -> str:
    rows = []
    for module in _test_modules("test_bad_inputs*.py"):
        for case in getattr(module, "CASES", []):
            says = " ... ".join(_code(part) for part in (case.what, case.todo) if part)
            rows.append([case.id, f"`{case.command}`", str(case.code), says])
    return table(["bad input", "command", "exit", "the one error line contains"], rows)


def serve_bad_requests() -> str:
    rows = []
    for module in _test_modules("test_serve_bad_input*.py"):
        for name, method, path, _headers, _body, status, code in module.CASES:
            rows.append([name, f"`{method} {path}`", str(status), f"`{code}`"])
    return table(["request", "endpoint", "status", "`error.code`"], rows)


# Runs in a child, so that the help does not depend on the generating machine's home folder or environment. It reads
# the click command tree typer builds (help, usage, and each parameter's help record, which is click's text with
# its defaults and ranges), not the rich-rendered --help, whose layout depends on the terminal and the rich version.
_HELP_SCRIPT = """
import json
import typer.main
from edge_run.cli.main import build_app

out = []

def walk(cmd, path, parent):
    ctx = cmd.context_class(cmd, info_name=" ".join(["edge-run", *path]), parent=parent)  # typer's own click
    group = hasattr(cmd, "list_commands")
    params = [p.get_help_record(ctx) for p in cmd.get_params(ctx)]
    out.append({"path": path, "help": cmd.help or "", "summary": cmd.get_short_help_str(limit=300),
                "usage": " ".join(cmd.collect_usage_pieces(ctx)), "group": group,
                "params": [r for r in params if r is not None and r[0] != "--help"]})
    if group:
        for name in cmd.list_commands(ctx):
            walk(cmd.get_command(ctx, name), [*path, name], ctx)

walk(typer.main.get_command(build_app()), [], None)
print(json.dumps(out))
"""


def _help_pages() -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_RUN_")}
    env.update(EDGE_RUN_PROFILES="~/.config/edge-run/profiles",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", _HELP_SCRIPT], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    if res.returncode != 0:
        raise SystemExit(f"error: could not read the CLI: {res.stderr.strip()}")
    pages: list[dict[str, Any]] = json.loads(res.stdout)
    for page in pages:  # rich markup escapes (`edge-run\\[serve]`) are for the terminal
        page["help"], page["summary"] = (t.replace("\\[", "[") for t in (page["help"], page["summary"]))
    return pages


_help_cache: list[list[dict[str, Any]]] = []


def help_pages() -> list[dict[str, Any]]:
    if not _help_cache:
        _help_cache.append(_help_pages())
    return _help_cache[0]


def _anchor(path: list[str]) -> str:
    return "-".join(["edge-run", *path])


def _usage(page: dict[str, Any]) -> str:
    """`[OPTIONS] {checkpoint} [artifact]` -> `[OPTIONS] CHECKPOINT [ARTIFACT]`."""
    pieces = re.sub(r"[{\[]([a-z_]+)[}\]]", lambda m: m.group(0)[0].replace("{", "") + m.group(1).upper()
                    + m.group(0)[-1].replace("}", ""), page["usage"])
    return " ".join(["edge-run", *page["path"], pieces])


def commands() -> str:
    rows = [[f"[`{' '.join(page['path'])}`](docs/reference/cli.md#{_anchor(page['path'])})", _code(_usage(page)),
             page["summary"]] for page in help_pages()[1:] if not page["group"]]
    return table(["command", "usage", "what it does"], rows)


def cli() -> str:
    pages = help_pages()
    parts = []
    for page in pages:
        title = " ".join(["edge-run", *page["path"]])
        text = "\n\n".join(" ".join(para.split()) for para in page["help"].split("\n\n") if para.strip())
        part = f'<a id="{_anchor(page["path"])}"></a>\n\n## `{title}`\n\n{text}\n\n{_code(_usage(page))}\n'
        if page["group"]:
            subs = [p for p in pages if p["path"][:-1] == page["path"] and len(p["path"]) == len(page["path"]) + 1]
            part += "\n" + table(["command", "what it does"], [
                [f"[`{' '.join(['edge-run', *p['path']])}`](#{_anchor(p['path'])})", p["summary"]] for p in subs])
        if page["params"]:
            part += "\n" + table(["argument / option", "what"], [[_code(opts), text] for opts, text in page["params"]])
        parts.append(part)
    return "\n".join(parts)


GENERATORS: dict[str, Callable[[], str]] = {
    "archs": archs, "quants": quants, "quant-names": quant_names, "onnx-schemes": onnx_schemes,
    "profiles": profiles, "baselines": baselines, "exit-codes": exit_codes, "bad-inputs": bad_inputs,
    "serve-bad-requests": serve_bad_requests, "commands": commands, "cli": cli,
}
