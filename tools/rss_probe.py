"""A fresh process that loads an artifact and reports its memory, shared by the estimator checks.

The probe's body (a Python snippet run with ``python -c``) calls ``report(base)`` at the end, where ``base`` is
``rollup()`` taken right after the imports: it prints one JSON line with the baseline and final anonymous /
file-backed split (/proc/self/smaps_rollup) and the peak RSS (VmHWM: per address space, reset by exec, unlike
ru_maxrss, which survives it).
"""

from __future__ import annotations

import json
import subprocess
import sys

PRELUDE = r"""
import json, sys
def rollup():
    d = {}
    for line in open('/proc/self/smaps_rollup'):
        p = line.split()
        if p[0] in ('Anonymous:', 'Rss:'):
            d[p[0][:-1]] = int(p[1]) / 1024
    return d
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
def report(base):
    r = rollup()
    print(json.dumps({"baseline_anon_mib": base["Anonymous"], "baseline_file_mib": base["Rss"] - base["Anonymous"],
                      "peak_mib": hwm(), "anon_mib": r["Anonymous"], "file_mib": r["Rss"] - r["Anonymous"]}))
"""


def run_probe(body: str, *args: str) -> dict[str, float]:
    """Run PRELUDE + ``body`` with ``args`` as sys.argv[1:]; its last output line, parsed."""
    out = subprocess.run([sys.executable, "-c", PRELUDE + body, *args], capture_output=True, text=True, check=True)
    parsed: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return parsed
