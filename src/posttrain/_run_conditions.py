"""Was the machine free while speed was measured? Other work's CPU time and the load, around a run.

Speed measured while other work shares the CPUs is lower than the machine gives, and figures taken
under different loads do not compare (a ladder measured F16 at 156 tok/s pp512 against Q4_K_M's 441
on a busy 2-core machine, and said nothing). Around each speed run we read the machine's CPU time
(every process, `psutil.cpu_times`: /proc/stat on Linux) and this process's own (`psutil.Process()`,
all its threads). What the machine spent beyond this process is *others*: other processes,
interrupts, and time the hypervisor stole from this virtual machine (`steal`, Linux; recorded on its
own too). A run is *busy* when others took more than `BUSY_OTHERS_PCT` of the machine's CPU time:
on 2 cores, half a core of someone else's work, enough to move a llama.cpp run that uses every core
by tens of percent. The 1-minute load average at the end is recorded for context (it counts this
run's own threads, so it is not the test).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    import psutil

# psutil is imported where it is used: the record (RunConditions) is read at every llama.cpp load
# (the machine profile's), and `import posttrain` must stay cheap and work without POSIX-only modules.

BUSY_OTHERS_PCT = 25.0
# Fields of psutil.cpu_times() that make up the machine's time; guest time is already inside `user` on
# Linux, so it is not counted twice. Absent fields (other platforms) count as 0.
_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_IDLE = ("idle", "iowait")


@dataclass(frozen=True)
class RunConditions:
    """The machine during one measurement; percentages of all its CPUs' time over the run."""

    wall_s: float
    cpus: int
    own_cpu_pct: float
    others_cpu_pct: float  # everything not idle and not this process, steal included
    steal_pct: float | None  # None where the platform does not report it
    load_avg_1m: float
    busy: bool

    def to_json(self) -> dict:
        return asdict(self)


def _machine() -> tuple[float, float, float | None]:
    """(total, busy, steal) CPU seconds of the whole machine so far."""
    import psutil

    t = psutil.cpu_times()
    total = sum(getattr(t, f, 0.0) for f in _FIELDS)
    idle = sum(getattr(t, f, 0.0) for f in _IDLE)
    return total, total - idle, getattr(t, "steal", None)


def _own(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class CpuWatch:
    """`with CpuWatch() as watch: run()`, then `watch.conditions`."""

    conditions: RunConditions | None = None

    def __enter__(self) -> Self:
        import psutil

        self._proc = psutil.Process(os.getpid())
        psutil.getloadavg()  # on Windows the first call starts psutil's sampler (and returns zeros)
        self._machine0, self._own0 = _machine(), _own(self._proc)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t0
        import psutil

        (total1, busy1, steal1), own1 = _machine(), _own(self._proc)
        total0, busy0, steal0 = self._machine0
        cpus = psutil.cpu_count() or 1
        # The machine's own tick count is the denominator (≈ wall × CPUs); it is coarse (10 ms ticks), so
        # a run shorter than a few ticks falls back to wall time.
        span = total1 - total0 if total1 - total0 > 0.05 * cpus else wall * cpus
        own = own1 - self._own0
        others = max(0.0, (busy1 - busy0) - own)
        self.conditions = RunConditions(
            wall_s=round(wall, 3), cpus=cpus, own_cpu_pct=round(min(100.0, 100 * own / span), 1),
            others_cpu_pct=round(min(100.0, 100 * others / span), 1),
            steal_pct=None if steal1 is None else round(100 * max(0.0, steal1 - steal0) / span, 1),
            load_avg_1m=round(psutil.getloadavg()[0], 2), busy=100 * others / span > BUSY_OTHERS_PCT)
