"""Size budget: no Python module in the project over MAX_LINES lines (the project's style rule).

    python -m tools.check_sizes            # exit 0, or 1 naming every module over the budget
    python -m tools.check_sizes --report   # every module's size, largest first
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MAX_LINES = 500
ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("src", "tools", "tests")


def module_sizes(root: Path = ROOT) -> dict[Path, int]:
    sizes = {}
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            with open(path, "rb") as f:
                sizes[path.relative_to(root)] = sum(1 for _ in f)
    return sizes


def over_budget(sizes: dict[Path, int], limit: int = MAX_LINES) -> list[tuple[Path, int]]:
    return sorted(((p, n) for p, n in sizes.items() if n > limit), key=lambda x: -x[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="print every module's line count")
    ap.add_argument("--max-lines", type=int, default=MAX_LINES)
    args = ap.parse_args(argv)
    sizes = module_sizes()
    if args.report:
        for path, n in sorted(sizes.items(), key=lambda x: -x[1]):
            print(f"{n:5d}  {path}")
    bad = over_budget(sizes, args.max_lines)
    for path, n in bad:
        print(f"error: {path} has {n} lines, over the budget of {args.max_lines}. split it into modules",
              file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
