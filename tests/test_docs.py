"""The README stays an entry page, every relative link in README.md and docs/ resolves, and every table is generated
from its source (tools/gen_docs.py --check: the code's registries, the CLI, the tests' case tables, results/*.json)."""

from __future__ import annotations

from pathlib import Path

from tools import gen_docs

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_at_most_250_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


def test_docs_exist_for_every_part() -> None:
    for part in ("guides", "reference", "development", "results"):
        assert list((ROOT / "docs" / part).glob("*.md")), f"docs/{part}/ has no page"


def test_every_relative_link_resolves() -> None:
    broken = {str(page.relative_to(ROOT)): gen_docs.broken_links(page, page.read_text(encoding="utf-8"))
              for page in gen_docs.doc_files(ROOT)}
    assert {page: links for page, links in broken.items() if links} == {}


def test_every_table_is_generated_and_up_to_date() -> None:
    """What `python -m tools.gen_docs --check` (run by CI) reports."""
    assert gen_docs.problems(ROOT) == []


def test_the_check_sees_drift_a_loose_table_a_broken_link_and_a_missing_path(tmp_path: Path) -> None:
    gens = {"rows": lambda: "| a | b |\n|---|---|\n| 1 | 2 |\n"}
    fresh = gen_docs.render("intro\n<!-- gen:rows -->\n<!-- /gen -->\n", gens)
    assert "| 1 | 2 |" in fresh and gen_docs.stale_blocks(fresh, gens) == []
    assert gen_docs.stale_blocks(fresh.replace("| 1 | 2 |", "| 1 | 3 |"), gens) == ["rows"]

    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("")
    loose = "text\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert gen_docs.loose_tables(fresh + loose, tmp_path) == [fresh.count("\n") + 3]
    checked = "<!-- checked by tests/test_x.py -->\n| a | b |\n|---|---|\n"
    assert gen_docs.loose_tables(checked, tmp_path) == []
    assert gen_docs.loose_tables(checked.replace("test_x", "test_gone"), tmp_path) == [2]
    assert gen_docs.loose_tables("```\n| a |\n|---|\n```\n", tmp_path) == []  # inside a code fence

    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    (tmp_path / "docs" / "there.md").write_text("")
    text = ("[ok](there.md#part) [gone](missing.md) [web](https://example.org/x.md) [anchor](#top) "
            "`[code](nope.md)` ![img](../img.png)\n")
    assert gen_docs.broken_links(page, text) == ["missing.md", "../img.png"]
    assert gen_docs.missing_paths("see `tests/test_x.py` and `tools/gone.py`, not `foo/bar.py`", tmp_path) == [
        "tools/gone.py"]
