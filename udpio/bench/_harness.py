"""Running the suite: server and generator processes, CPU pinning, RSS sampling, and cleaning up.

Every child runs in its own session (so its own process group) with pipes to the harness. Cleaning up is
one path for every outcome, Ctrl-C included: ask politely (``stop`` on stdin), then SIGTERM to the group,
then SIGKILL. Should the harness itself be killed outright, its children see end-of-file on stdin and stop
by themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from . import _native
from ._workloads import PEER_WINDOW, PEERS, Backend, Figures, Workload, generator_job, loadgen_args

#: A server has this long to bind and say ``ready`` (Twisted's imports on a loaded 2-core machine).
STARTUP_TIMEOUT = 30.0
#: Time for a snapshot or a stop to be answered.
REPLY_TIMEOUT = 5.0
#: A generator job may overrun its warm-up + duration by this much before it counts as hung.
JOB_SLACK = 15.0
#: How often the server's RSS is sampled while a job runs.
RSS_INTERVAL = 0.1
#: Grace between SIGTERM and SIGKILL.
KILL_GRACE = 2.0
#: Lines of a failed child's stderr quoted in the report.
STDERR_TAIL = 6


class BenchError(Exception):
    """A run failed: the message says which process and why (quoted into the report)."""


def servers_dir() -> Path:
    """Where the server scripts are: ``udpio/bench/servers/``, next to this module in any install (they
    are an ordinary subpackage, so a regular ``pip install`` ships them as it ships this file)."""
    scripts = Path(__file__).resolve().parent / "servers"
    if not (scripts / "_common.py").is_file():
        raise BenchError(f"the benchmark server scripts are missing from {scripts}; reinstall udpio")
    return scripts


#: Optional modules that come with ``udpio[bench]`` (the others are named as they are installed).
_BENCH_EXTRA = ("twisted", "rloop")


def missing_requirement(back: Backend) -> str | None:
    """Why ``back`` cannot run here (a module it needs is not installed, or its C server cannot be
    compiled), or ``None``."""
    for module in back.requires:
        if importlib.util.find_spec(module) is None:
            extra = "udpio[bench]" if module in _BENCH_EXTRA else module
            return f"{module} is not installed (pip install '{extra}')"
    if back.native:
        return _native.unavailable(back.script)
    return None


@dataclasses.dataclass(frozen=True)
class Pinning:
    """Which cores the server and the generator run on (``None``: not pinned, ``reason`` says why)."""

    server: frozenset[int] | None
    generator: frozenset[int] | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": sorted(self.server) if self.server is not None else None,
            "generator": sorted(self.generator) if self.generator is not None else None,
            "harness": sorted(self.generator) if self.generator is not None else None,
            "note": self.reason,
        }


def plan_pinning(enabled: bool = True) -> Pinning:
    """Server on the first usable core, generator (and this harness, which mostly sleeps) on the second."""
    if not enabled:
        return Pinning(None, None, "pinning disabled (--no-pin)")
    if not hasattr(os, "sched_setaffinity"):
        return Pinning(None, None, "not pinned: os.sched_setaffinity is not available on this platform")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return Pinning(None, None, f"not pinned: only {len(cores)} usable core")
    return Pinning(
        frozenset({cores[0]}),
        frozenset({cores[1]}),
        f"server on core {cores[0]}, generator and harness on core {cores[1]}",
    )


_EOF = object()


class Child:
    """A child process speaking JSON lines, in its own process group, always cleaned up by :meth:`close`."""

    def __init__(self, name: str, argv: Sequence[str], cores: frozenset[int] | None) -> None:
        self.name = name
        # Lives as long as the child (quoted when it fails), closed in close(): no ``with`` block fits.
        self._stderr: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._events: queue.Queue[Any] = queue.Queue()
        self._reported = False  # its final line came: see close()
        try:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                bufsize=1,
                start_new_session=True,  # its own process group: killed as a whole, deaf to our Ctrl-C
            )
        except BaseException:
            self._stderr.close()
            raise
        try:
            if cores is not None:
                # Threads the child starts later inherit this; it has not started any yet.
                os.sched_setaffinity(self.process.pid, cores)
            self._reader = threading.Thread(target=self._read, name=f"bench-{name}", daemon=True)
            self._reader.start()
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None  # created with stdout=PIPE
        for line in stdout:
            try:
                self._events.put(json.loads(line))
            except ValueError:
                self._events.put({"event": "text", "line": line.rstrip()})
        self._events.put(_EOF)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, line: str) -> None:
        stdin = self.process.stdin
        assert stdin is not None  # created with stdin=PIPE
        try:
            stdin.write(line + "\n")
            stdin.flush()
        except OSError:  # EPIPE: it exited
            raise BenchError(self._exited()) from None

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line, or ``None`` after ``timeout``; raises :class:`BenchError` once the child exits."""
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event is _EOF:
            self._events.put(_EOF)  # keep reporting the exit
            raise BenchError(self._exited())
        result: dict[str, Any] = event
        return result

    def expect(self, events: Sequence[str], timeout: float) -> dict[str, Any]:
        """Wait for one of ``events`` (other lines are skipped); :class:`BenchError` on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no {'/'.join(events)} within {timeout:g} s{self.stderr_tail()}")
            event = self.next_event(left)
            if event is not None and event.get("event") in events:
                return event

    def _exited(self) -> str:
        try:
            code: int | None = self.process.wait(timeout=REPLY_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None  # stdout closed but still running: reported as such
        return f"{self.name} exited (status {code}){self.stderr_tail()}"

    def stderr_tail(self) -> str:
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            lines = [line.rstrip() for line in self._stderr.read().splitlines() if line.strip()]
        except (OSError, ValueError):
            return ""
        return ("; stderr: " + " | ".join(lines[-STDERR_TAIL:])) if lines else ""

    def stop(self) -> dict[str, Any]:
        """Ask the child to stop and return its ``final`` line."""
        self.send("stop")
        final = self.expect(("final",), REPLY_TIMEOUT)
        self._reported = True
        return final

    def close(self) -> None:
        """End the child: closed stdin (it stops by itself), then SIGTERM, then SIGKILL to its group. A child
        that has already sent its ``final`` line (its sockets are closed, its figures are in) is killed at
        once: waiting for an interpreter's teardown (0.1-0.3 s, more for Twisted) measures nothing and, run
        after run, was a large part of the suite's time."""
        process = self.process
        try:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(timeout=0.0 if self._reported else 0.5)
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGKILL,) if self._reported else (signal.SIGTERM, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, sig)
                    try:
                        process.wait(timeout=KILL_GRACE)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        finally:
            # The group may hold grandchildren even after the leader exited.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            if process.stdout is not None:
                with contextlib.suppress(OSError):
                    process.stdout.close()
            self._stderr.close()


@dataclasses.dataclass
class Run:
    """One measurement: a backend under a workload at one payload size (one of ``--repeat`` runs)."""

    backend: str
    workload: str
    size: int
    repeat: int
    status: str  # "ok", "failed" or "unavailable"
    reason: str = ""
    figures: Figures = dataclasses.field(default_factory=dict)
    server: Figures = dataclasses.field(default_factory=dict)
    generator: Figures = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one suite runs (the CLI fills it from the command line)."""

    backends: tuple[Backend, ...]
    workloads: tuple[Workload, ...]
    sizes: tuple[int, ...]
    duration: float
    warmup: float
    window: int
    repeat: int
    members: int
    pin: bool = True
    #: Many-peer echo: client sockets and requests in flight on each.
    peers: int = PEERS
    peer_window: int = PEER_WINDOW
    #: Keep a server running across consecutive runs that need the same one (same backend and server
    #: mode): the echo workloads of a backend then share one process. Only ``--quick`` does this, to keep the
    #: smoke test short (interpreter start-up is most of a quick run's time); measured runs start a fresh
    #: server each, so no run inherits another's state.
    reuse_servers: bool = False


def _rss(pid: int) -> int | None:
    # Optional extra, checked by the CLI before the suite starts; psutil ships no type information.
    import psutil  # type: ignore[import-untyped]  # noqa: PLC0415

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _random_group() -> str:
    """An administratively scoped group (RFC 2365) per run, unlikely to collide with anything else here."""
    return f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}"


class Suite:
    """Runs every (size, workload, repeat, backend) combination; use as a context manager so the generator
    and any server still running are cleaned up on every path."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pinning = plan_pinning(settings.pin)
        self.scripts = servers_dir()
        self._generator: Child | None = None
        self._capabilities: dict[str, Any] = {}
        self._unavailable: dict[tuple[str, str], str] = {}
        self._saved_affinity: set[int] | None = None
        # With reuse_servers: the server kept from the previous run, its command line and its ready line.
        self._kept: tuple[tuple[str, ...], Child, dict[str, Any]] | None = None

    def __enter__(self) -> Suite:
        if self.pinning.generator is not None:
            self._saved_affinity = os.sched_getaffinity(0)
            os.sched_setaffinity(0, self.pinning.generator)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            try:
                self._release_server()
            finally:
                self._close_generator()
        finally:
            if self._saved_affinity is not None:
                os.sched_setaffinity(0, self._saved_affinity)

    def plan(self) -> list[tuple[int, Workload, int, Backend]]:
        """Every run, in order. Repeats interleave the backends, so a slow spell of a shared machine
        spreads over all rows instead of hitting one. With ``reuse_servers`` a backend's workloads run back
        to back instead (so they can share its server)."""
        s = self.settings
        if s.reuse_servers:
            # Workloads that need the same server mode next to each other (a stable sort), so each mode
            # starts one server per backend.
            modes = [w.server for w in s.workloads]
            loads = sorted(s.workloads, key=lambda w: modes.index(w.server))
            return [
                (size, load, rep, back)
                for size in s.sizes
                for rep in range(s.repeat)
                for back in s.backends
                for load in loads
            ]
        return [
            (size, load, rep, back)
            for size in s.sizes
            for load in s.workloads
            for rep in range(s.repeat)
            for back in s.backends
        ]

    def run_all(self, progress: Callable[[str], None] | None = None) -> Iterator[Run]:
        """Run the plan, yielding each run as it completes; ``progress(label)`` is called before each."""
        for size, load, rep, back in self.plan():
            if progress is not None:
                progress(f"{back.name} {load.name} {size}B")
            yield self.run_one(back, load, size, rep)

    # -- the generator ------------------------------------------------------------------------------

    def generator(self) -> Child:
        if self._generator is None or not self._generator.alive():
            self._close_generator()
            argv = [sys.executable, "-m", "udpio.bench._generator"]
            self._generator = Child("generator", argv, self.pinning.generator)
            self._capabilities = self._generator.expect(("hello",), STARTUP_TIMEOUT)
        return self._generator

    def _close_generator(self) -> None:
        if self._generator is not None:
            generator, self._generator = self._generator, None
            generator.close()

    # -- one run ------------------------------------------------------------------------------------

    def run_one(self, back: Backend, load: Workload, size: int, rep: int) -> Run:
        """Start the server, drive it with the generator, collect figures; never raises for a failed run."""
        run = Run(back.name, load.name, size, rep, "ok")
        reason = missing_requirement(back) or self._unavailable.get((back.name, load.name))
        if reason is None and load.native_client and not load.python_fallback:
            reason = _native.unavailable("loadgen")
        elif reason is None and not self._native_client(load):
            try:
                self.generator()
            except BenchError as exc:
                run.status, run.reason = "failed", str(exc)
                return run
            if load.name == "multicast" and self._capabilities.get("multicast"):
                reason = self._capabilities["multicast"]
        if reason is not None:
            run.status, run.reason = "unavailable", reason
            return run
        try:
            self._measure(run, back, load, size)
        except BenchError as exc:
            run.status, run.reason = "failed", str(exc)
            # A generator that failed mid-job may still be flooding: start a fresh one next time.
            self._close_generator()
        except (ValueError, KeyError, IndexError, ZeroDivisionError) as exc:
            run.status, run.reason = "failed", f"unusable figures: {type(exc).__name__}: {exc}"
        if run.status == "unavailable":
            self._unavailable[(back.name, load.name)] = run.reason
        return run

    def _measure(self, run: Run, back: Backend, load: Workload, size: int) -> None:
        s = self.settings
        group = _random_group() if load.name == "multicast" else None
        if back.native:
            argv = [str(_native.build(back.script)), "--workload", load.server, *back.args]
        else:
            argv = [sys.executable, str(self.scripts / back.script), "--workload", load.server, *back.args]
        if group is not None:
            argv += ["--group", group, "--members", str(s.members)]
        if load.rcvbuf is not None:
            argv += ["--rcvbuf", str(load.rcvbuf)]
        # A multicast server is joined to this run's group: never shared.
        server, ready = self._server(back, argv, s.reuse_servers and group is None)
        kept = self._kept is not None and self._kept[1] is server
        try:
            if ready["event"] == "unavailable":
                run.status, run.reason = "unavailable", str(ready.get("reason", "unavailable"))
                return
            run.server = {"ready": ready, "pid": server.pid, "rss_idle": _rss(server.pid), "shared": kept}
            job = generator_job(
                load, back, port=int(ready["port"]), size=size, warmup=s.warmup, duration=s.duration,
                window=s.window, group=group, peers=s.peers, peer_window=s.peer_window,
            )
            with self._job(load, job) as generator:
                snaps, result, peak = self._drive(server, generator, s.warmup + s.duration + JOB_SLACK)
            run.server["rss_peak"] = max(peak, run.server["rss_idle"] or 0)
            run.server["rss_after"] = _rss(server.pid)
            run.server["snaps"] = snaps
            run.server["final"] = None if kept else server.stop()
            run.generator = result
            if len(snaps) != 2:
                raise BenchError(f"expected 2 server snapshots, got {len(snaps)}")
            run.figures = load.figures(result, snaps, s.members)
            run.figures["generator"] = "C" if self._native_client(load) else "Python"
            run.figures["rss_idle_mb"] = (run.server["rss_idle"] or 0) / 2**20
            run.figures["rss_peak_mb"] = run.server["rss_peak"] / 2**20
        except BaseException:
            if kept:
                self._release_server()  # a server that saw a failed run is not handed to the next one
            raise
        finally:
            if not kept:
                server.close()

    def _server(self, back: Backend, argv: list[str], reusable: bool) -> tuple[Child, dict[str, Any]]:
        """A server started with ``argv`` and its ``ready`` (or ``unavailable``) line: the kept one if it was
        started with the same command and still runs, else a new one (kept for the next run if
        ``reusable``). The caller closes a server that is not kept."""
        if self._kept is not None and self._kept[0] == tuple(argv) and self._kept[1].alive():
            return self._kept[1], self._kept[2]
        self._release_server()
        server = Child(f"{back.name} server", argv, self.pinning.server)
        try:
            ready = server.expect(("ready", "unavailable"), STARTUP_TIMEOUT)
        except BaseException:
            server.close()
            raise
        if reusable and ready["event"] == "ready":
            self._kept = (tuple(argv), server, ready)
        return server, ready

    def _release_server(self) -> None:
        """Stop and close the kept server, if any (its final line is not needed: each run took its own
        snapshots)."""
        if self._kept is None:
            return
        server, self._kept = self._kept[1], None
        try:
            with contextlib.suppress(BenchError):
                server.stop()
        finally:
            server.close()

    @staticmethod
    def _native_client(load: Workload) -> bool:
        """Whether the C load generator runs ``load``'s job (else the Python generator does)."""
        return load.native_client and (not load.python_fallback or _native.unavailable("loadgen") is None)

    @contextlib.contextmanager
    def _job(self, load: Workload, job: Figures) -> Iterator[Child]:
        """Start ``job`` on the generator it needs: the long-lived Python one, or a C load generator of its
        own (one process per run, ended when the run is)."""
        if not self._native_client(load):
            generator = self.generator()
            generator.send(json.dumps(job))
            yield generator
            return
        argv = [str(_native.build("loadgen")), *loadgen_args(job)]
        loadgen = Child("C load generator", argv, self.pinning.generator)
        try:
            yield loadgen
        finally:
            loadgen.close()

    def _drive(self, server: Child, generator: Child, timeout: float) -> tuple[list[Figures], Figures, int]:
        """Follow the generator's job: snapshot the server at the window's edges, sample its RSS."""
        deadline = time.monotonic() + timeout
        snaps: list[Figures] = []
        peak = 0
        while True:
            if not server.alive():
                server.expect(("never",), REPLY_TIMEOUT)  # raises with the exit status and stderr
            rss = _rss(server.pid)
            if rss is not None:
                peak = max(peak, rss)
            event = generator.next_event(RSS_INTERVAL)
            if event is None:
                if time.monotonic() > deadline:
                    raise BenchError(f"generator: job did not finish within {timeout:g} s")
                continue
            kind = event.get("event")
            if kind in ("measure-start", "measure-end"):
                server.send("snap")
                snaps.append(server.expect(("snap",), REPLY_TIMEOUT))
            elif kind == "result":
                return snaps, event, peak
            elif kind == "error":
                raise BenchError(f"generator: {event.get('error')}")
