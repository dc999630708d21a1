"""Running ``pgchanges`` as a real subprocess and reading its output with bounded waits."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

PGCHANGES = [sys.executable, "-m", "pgchanges.cli"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PGCHANGES, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


class Running:
    """A pgchanges process whose stdout and stderr lines are collected by threads."""

    def __init__(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*PGCHANGES, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink) -> None:
        with stream:  # closed at the process's end of output: no pipe left for the garbage collector
            for line in stream:
                sink(line.rstrip("\n"))

    def wait_stderr(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in line for line in self.stderr_lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        pytest.fail(f"{needle!r} not seen on stderr within {timeout}s; stderr: {self.stderr_lines[-10:]}")

    def lines(self, count: int, timeout: float = 30) -> list[str]:
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                got.append(self.stdout.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"got {len(got)} of {count} lines in {timeout}s; stderr: {self.stderr_lines[-10:]}")
        return got

    def finish(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()  # reaped, so the failure is this test's alone (no warning in a later test)
            pytest.fail(f"process did not exit within {timeout}s; stderr: {self.stderr_lines[-10:]}")
