"""`GET /metrics`: serve's counters in Prometheus' text exposition format (version 0.0.4), written by hand.

Requests are counted once, when they end, by status: ok (stop or length), cancelled (the client left), error,
shutdown (ended by SIGTERM), rejected (503: the queue was full). Time to first token runs from the request
entering the queue to its first generated token; inter-token latency between a request's consecutive tokens.
With --parallel N > 1 the engine reports every token; the one-at-a-time worker (--parallel 1, ONNX) reports
each streamed text piece, which is a token except where a stop string or a multi-byte character holds text back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STATUSES = ("ok", "cancelled", "error", "shutdown", "rejected")
PREFIX = "edge_run_"


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]
        return out


@dataclass
class JobClock:
    """One request's times, kept on its Job."""
    submitted: float = field(default_factory=time.perf_counter)
    last_token: float | None = None
    counted: bool = False


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = dict.fromkeys(STATUSES, 0)
        self.tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)

    def token(self, clock: JobClock) -> None:
        now = time.perf_counter()
        with self._lock:
            if clock.last_token is None:
                self.ttft.observe(now - clock.submitted)
            else:
                self.itl.observe(now - clock.last_token)
            clock.last_token = now

    def ended(self, clock: JobClock, status: str, tokens: int = 0) -> None:
        """A request ended (the first ending of a request counts; later ones are no-ops)."""
        with self._lock:
            if clock.counted:
                return
            clock.counted = True
            self.requests[status] += 1
            self.tokens += tokens

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition: ``gauges`` maps a name (without the prefix) to (help, value)."""
        with self._lock:
            lines = [f"# HELP {PREFIX}requests_total Requests ended, by status.",
                     f"# TYPE {PREFIX}requests_total counter"]
            lines += [f'{PREFIX}requests_total{{status="{s}"}} {n}' for s, n in self.requests.items()]
            lines += [f"# HELP {PREFIX}tokens_generated_total Tokens generated for requests that ended.",
                      f"# TYPE {PREFIX}tokens_generated_total counter", f"{PREFIX}tokens_generated_total {self.tokens}"]
            for name, what, hist in (("time_to_first_token_seconds", "Request queued to its first token.", self.ttft),
                                     ("inter_token_latency_seconds", "Between a request's tokens.", self.itl)):
                lines += [f"# HELP {PREFIX}{name} {what}", f"# TYPE {PREFIX}{name} histogram",
                          *hist.lines(PREFIX + name)]
        for name, (what, value) in gauges.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# HELP {PREFIX}{name} {what}", f"# TYPE {PREFIX}{name} {kind}", f"{PREFIX}{name} {_num(value)}"]
        return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else f"{float(value):.6g}"
