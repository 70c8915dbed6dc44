"""Type check the edge_run package with mypy (configuration: [tool.mypy] in pyproject.toml).

    python -m tools.typecheck

src/ layout: the import path is the file path, so mypy checks src/edge_run as it is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "edge_run",
           *(argv if argv is not None else sys.argv[1:])]
    return subprocess.call(cmd, cwd=ROOT / "src")


if __name__ == "__main__":
    sys.exit(main())
