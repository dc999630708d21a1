"""Consumer processes: started in their own process group, frozen and resumed, measured from /proc.

Each consumer prints lines of the clients' protocol (``HELLO``, ``READY``, ``DONE {json}``); a reader thread
stamps every line with the wall clock as it arrives. CPU is utime+stime of the whole process group (node's
worker threads and any child count), peak RSS the sum of the group's VmHWM: both from /proc, at the kernel's
clock tick (100 Hz), which the report states beside its figures.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses


def group_pids(pgrp: int) -> list[int]:
    """Every live process of the process group ``pgrp``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) and int(fields[2]) == pgrp:
            pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far."""
    ticks = 0
    for pid in pids:
        if fields := _stat_fields(pid):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def peak_rss_mb(pids: list[int]) -> float:
    """Summed VmHWM (peak resident set) of ``pids``, in MiB."""
    kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kib += int(line.split()[1])
    return kib / 1024


def wait_idle(pids: list[int], quiet: float = 0.6, cap: float = 120.0) -> float:
    """Wait until ``pids`` have used no CPU for ``quiet`` seconds (at most ``cap``); returns seconds waited.

    Used on the walsenders of frozen consumers: once idle, each has filled its socket and waits.
    """
    start = time.monotonic()
    last, still_since = cpu_seconds(pids), start
    while time.monotonic() - start < cap:
        time.sleep(0.2)
        used = cpu_seconds(pids)
        if used != last:
            last, still_since = used, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            break
    return time.monotonic() - start


class Consumer:
    """One running consumer process: its output lines (timestamped), signals to its group, its figures."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str], cwd: Path | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = log_dir / ("".join(c if c.isalnum() else "_" for c in name) + ".log")
        with self.log.open("a") as err:
            self.process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=err, cwd=cwd, env=env, start_new_session=True, text=True
            )
        self.lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
        self.walsender: int | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put((time.time(), line.rstrip("\n")))
        self.lines.put((time.time(), None))

    def wait_line(self, prefix: str, timeout: float) -> tuple[float, str]:
        """The first line starting with ``prefix`` (and when it arrived); raises if the process ends first."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                at, line = self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited ({self.process.poll()}) before {prefix}: see {self.log}")
            if line.startswith(prefix):
                return at, line[len(prefix) :].strip()
        raise TimeoutError(f"{self.name}: no {prefix} within {timeout:.0f} s (see {self.log})")

    def pids(self) -> list[int]:
        return group_pids(self.process.pid)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
