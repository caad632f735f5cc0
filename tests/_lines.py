"""Reading a child process's output line by line with bounded waits (no sleeps, no polling)."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
from typing import IO


class Lines:
    """Every line a stream produces, collected by a thread; :meth:`expect` waits for one matching a regex."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first new line matching ``pattern``; AssertionError (with what came) on timeout or EOF."""
        regex = re.compile(pattern)
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got {self.seen}") from None
            if line is None:
                raise AssertionError(f"stream ended before a line matching {pattern!r}; got {self.seen}")
            self.seen.append(line)
            found = regex.search(line)
            if found:
                return found

    def rest(self, timeout: float = 20.0) -> list[str]:
        """Every remaining line until the stream ends (the process exited)."""
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"stream did not end within {timeout} s; got {self.seen}") from None
            if line is None:
                return self.seen
            self.seen.append(line)


def stop(process: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """End a child we started: terminate, wait (bounded), kill if it does not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()
