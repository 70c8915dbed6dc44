"""What every bad-input test checks: one `error:` line naming the problem and the fix, the documented exit code,
no traceback, and (with ``snapshot``) not a byte changed on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .conftest import CliResult


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: size, mtime and digest (a partial artifact or a touched input shows up)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_clean_failure(res: CliResult, code: int, what: str, todo: str = "") -> None:
    assert res.code == code, f"exit {res.code}, expected {code}: {res.stderr}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got: {res.stderr!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in res.stderr and "internal error" not in line, line
    assert what.lower() in line.lower(), f"{what!r} not in {line!r}"
    assert todo.lower() in line.lower(), f"{todo!r} not in {line!r}"
