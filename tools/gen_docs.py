"""Every table in README.md and docs/ is generated from the code, the tests' case tables or results/*.json.

    python -m tools.gen_docs           # rewrite the generated blocks in place
    python -m tools.gen_docs --check   # exit 1, naming each problem, when a page differs from its sources

A block is ``<!-- gen:NAME -->`` ... ``<!-- /gen -->``; NAME is a key of GENERATORS (tools/gen_docs_code.py: the
code's registries, the CLI, the bad-input cases; tools/gen_docs_results.py: the benchmark results). --check also
fails on a markdown table outside a block (unless the line before it is ``<!-- checked by PATH -->``, naming the
test that checks a hand-kept table), on a relative link to a file that does not exist, and on a repository path
in a code span (`src/...`, `tests/...`, `tools/...`) that does not exist.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- gen:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /gen -->)", re.S)
CHECKED_BY = re.compile(r"<!-- checked by (?P<path>\S+) -->")
TABLE_RULE = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")
REPO_PATH = re.compile(r"`(?P<path>(?:src|tests|tools|results|docs|profiles)/[\w./-]*)`")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)|!\[[^\]]*\]\((?P<image>[^)\s]+)\)")


def generators() -> dict[str, Callable[[], str]]:
    from tools import gen_docs_cluster, gen_docs_code, gen_docs_results, gen_docs_shapes

    both = {**gen_docs_code.GENERATORS, **gen_docs_results.GENERATORS, **gen_docs_shapes.GENERATORS,
            **gen_docs_cluster.GENERATORS}
    return {name: functools.cache(make) for name, make in both.items()}


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def render(text: str, gens: dict[str, Callable[[], str]]) -> str:
    def replace(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in gens:
            raise SystemExit(f"error: block gen:{name} has no generator. use one of {', '.join(sorted(gens))}")
        body = gens[name]()
        return m.group(1) + body + ("" if body.endswith("\n") else "\n") + m.group(4)

    return BLOCK.sub(replace, text)


def stale_blocks(text: str, gens: dict[str, Callable[[], str]]) -> list[str]:
    fresh = [m.group("body") for m in BLOCK.finditer(render(text, gens))]
    return [m.group("name") for m, body in zip(BLOCK.finditer(text), fresh, strict=True) if m.group("body") != body]


def _outside_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line outside generated blocks and code fences."""
    inside = fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("<!-- gen:"):
            inside = True
        elif line.startswith("<!-- /gen -->"):
            inside = False
        elif line.lstrip().startswith("```"):
            fenced = not fenced
        elif not inside and not fenced:
            yield number, line


def loose_tables(text: str, root: Path = ROOT) -> list[int]:
    """Line numbers of markdown tables outside generated blocks that no existing test is named as checking."""
    lines = list(_outside_blocks(text))
    loose = []
    for i, (_, line) in enumerate(lines):
        if not TABLE_RULE.match(line) or i == 0 or not lines[i - 1][1].startswith("|"):
            continue
        before = next((ln for _, ln in reversed(lines[: i - 1]) if ln.strip()), "")
        checked = CHECKED_BY.fullmatch(before.strip())
        if not (checked and (root / checked.group("path")).is_file()):
            loose.append(lines[i - 1][0])
    return loose


def broken_links(page: Path, text: str) -> list[str]:
    """Relative links (files, optionally with #anchor) that name no file or folder."""
    broken = []
    for _, line in _outside_blocks(text):
        line = re.sub(r"`[^`]*`", "", line)  # code spans hold example syntax, not links
        for m in LINK.finditer(line):
            target = (m.group("target") or m.group("image")).split("#", 1)[0]
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # an anchor on the page, or a URL
                continue
            if not (page.parent / target).exists():
                broken.append(target)
    return broken


def missing_paths(text: str, root: Path = ROOT) -> list[str]:
    """Repository paths named in code spans (`src/edge_run/...`) that do not exist."""
    return [m.group("path") for _, line in _outside_blocks(text) for m in REPO_PATH.finditer(line)
            if not (root / m.group("path")).exists()]


def problems(root: Path = ROOT, gens: dict[str, Callable[[], str]] | None = None) -> list[str]:
    gens = gens if gens is not None else generators()
    found = []
    for page in doc_files(root):
        rel = page.relative_to(root)
        text = page.read_text(encoding="utf-8")
        found += [f"{rel}: block gen:{name} differs from its source. run python -m tools.gen_docs"
                  for name in stale_blocks(text, gens)]
        found += [f"{rel}:{n}: a table that is neither generated (<!-- gen:NAME -->) nor checked by a test "
                  "(<!-- checked by tests/... -->)" for n in loose_tables(text, root)]
        found += [f"{rel}: link to {target}, which does not exist" for target in broken_links(page, text)]
        found += [f"{rel}: names {path}, which does not exist" for path in missing_paths(text, root)]
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail when a page differs from its sources")
    args = ap.parse_args(argv)
    gens = generators()
    if args.check:
        found = problems(ROOT, gens)
        for line in found:
            print(f"error: {line}", file=sys.stderr)
        return 1 if found else 0
    for page in doc_files():
        text = page.read_text(encoding="utf-8")
        new = render(text, gens)
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"rewrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
