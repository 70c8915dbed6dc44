"""Type check the edge_run packages with mypy (configuration: [tool.mypy] in pyproject.toml).

    python -m tools.typecheck

The import namespace edge_run.* maps onto top-level folders (pyproject's package-dir); an editable install
reaches them through an import hook mypy does not follow, so this lays the same tree out with symlinks in
build/typecheck/ and checks it there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"core": "core", "runtime": "runtime", "converters": "converters", "profiles": "profiles"}


def layout(dest: Path) -> Path:
    pkg = dest / "edge_run"
    pkg.mkdir(parents=True, exist_ok=True)
    for name, folder in PACKAGES.items():
        link = pkg / name
        if link.is_symlink() and link.resolve() == (ROOT / folder).resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT / folder, target_is_directory=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    tree = layout(ROOT / "build" / "typecheck")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "edge_run",
           *(argv if argv is not None else sys.argv[1:])]
    return subprocess.call(cmd, cwd=tree)


if __name__ == "__main__":
    sys.exit(main())
