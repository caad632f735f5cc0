"""System calls per datagram (or per request/response) of one benchmark server, counted while the C load
generator drives it: the figure issue 14 asks for ("no more system calls per request than Twisted's epoll
reactor"), and the readiness model of issue 11 (epoll_wait / recvmmsg / sendmmsg calls per datagram).

    python benchmarks/syscalls.py --backends twisted-epoll,twisted-udpio --workload request-response
    python benchmarks/syscalls.py --backends udpio-uvloop-nogro,uvloop --workload many-peer --tracer perf

Each server runs as ``python -m udpio.bench`` runs it (same script and arguments, pinned to the first core; the
generator to the second). After the warm-up the tracer attaches to the server for ``--duration`` seconds:

* ``strace`` (default): ``strace -c -f -p PID``, what the issue quotes. strace stops the server at every
  system call, so it slows it down by several times; a server that reads until ``EAGAIN`` then often finds the
  next request already queued (the untraced client answered while the server was stopped), which strace's
  own counts show as fewer calls per request than an untraced run makes.
* ``perf``: ``perf stat`` on the ``raw_syscalls:sys_enter`` and ``syscalls:sys_enter_*`` tracepoints, which
  counts in the kernel without stopping the server (needs ``perf`` and tracefs; works where hardware counters
  do not, as on this VM).

Requests are counted with the server's own ``received`` counter (``snap`` lines) before the generator starts and
after it ended, inside the traced span; the control thread's reads and writes for those two lines, and the idle
moments at the edges, are in the totals (a handful of calls against tens of thousands of requests).
Not part of the test suite: a measuring tool, like ``python -m udpio.bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from udpio.bench import _native
from udpio.bench._harness import Child, plan_pinning, servers_dir
from udpio.bench._workloads import PEER_WINDOW, PEERS, backend, loadgen_args

#: The system calls shown per request (the others are summed in "other").
SHOWN = ("epoll_wait", "epoll_pwait", "recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg", "ioctl",
         "poll", "getsockopt")


def _jobs(workload: str, port: int, size: int, warmup: float, duration: float) -> list[str]:
    sockets, inflight = (1, 1) if workload == "request-response" else (PEERS, PEER_WINDOW)
    kind = "flood" if workload == "sink" else "rr" if workload == "request-response" else "peers"
    job: dict[str, Any] = {"kind": kind, "host": "127.0.0.1", "port": port, "size": size, "warmup": warmup,
                           "duration": duration, "sockets": sockets, "inflight": inflight}
    return loadgen_args(job)


class _Strace:
    """``strace -c -f -p PID`` around the window: attached first (strace stops and resumes every thread,
    which takes a while), stopped with SIGINT after the window's closing snapshot."""

    def __init__(self, pid: int, out: str) -> None:
        self._out = out
        self._process = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pid)], stderr=subprocess.PIPE,
                                         text=True)

    def __enter__(self) -> _Strace:
        stderr = self._process.stderr
        assert stderr is not None  # created with stderr=PIPE
        stderr.readline()  # "strace: Process N attached" (then one line per thread, unread: a pipe's worth)
        time.sleep(0.2)  # the other threads
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.send_signal(signal.SIGINT)
        self._process.wait(timeout=30)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with open(self._out, encoding="utf-8") as summary:
            for line in summary:
                # % time, seconds, usecs/call, calls, [errors,] syscall
                fields = line.split()
                if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
                    counts[fields[-1]] = int(fields[3])
        shown = {k: v for k, v in counts.items() if k in SHOWN}
        shown["other"] = sum(v for k, v in counts.items() if k not in SHOWN)
        return shown


class _Perf:
    """``perf stat`` on the system-call tracepoints, started disabled and enabled exactly for the window
    (``--control``): it counts in the kernel, the server runs at full speed."""

    def __init__(self, pid: int, out: str) -> None:
        self._out = out
        self._ctl, self._ack = out + ".ctl", out + ".ack"
        os.mkfifo(self._ctl)
        os.mkfifo(self._ack)
        events = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{name}" for name in SHOWN]
        self._process = subprocess.Popen(
            ["perf", "stat", "-x,", "-o", out, "-D", "-1", "--control", f"fifo:{self._ctl},{self._ack}",
             "-e", ",".join(events), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._control = open(self._ctl, "w", encoding="ascii")  # noqa: SIM115  # closed in __exit__
        self._acks = open(self._ack, encoding="ascii")  # noqa: SIM115

    def _say(self, command: str) -> None:
        self._control.write(command + "\n")
        self._control.flush()
        self._acks.readline()

    def __enter__(self) -> _Perf:
        self._say("enable")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._say("disable")
        finally:
            self._control.close()
            self._acks.close()
            self._process.send_signal(signal.SIGINT)
            self._process.wait(timeout=30)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with open(self._out, encoding="utf-8") as summary:
            for line in summary:
                fields = line.strip().split(",")
                if len(fields) >= 3 and fields[0].isdigit():
                    name = fields[2].rsplit(":", 1)[-1].removeprefix("sys_enter_")
                    counts["total" if name == "sys_enter" else name] = int(fields[0])
        if "total" in counts:
            counts["other"] = counts.pop("total") - sum(counts.values())
        return counts


def measure(name: str, workload: str, *, size: int, warmup: float, duration: float, tracer: str) -> dict[str, Any]:
    """One server under one workload: system calls per request in the traced window."""
    back = backend(name)
    pinning = plan_pinning()
    if back.native:
        argv = [str(_native.build(back.script)), "--workload", "sink" if workload == "sink" else "echo", *back.args]
    else:
        argv = [sys.executable, str(servers_dir() / back.script), "--workload",
                "sink" if workload == "sink" else "echo", *back.args]
    server = Child(f"{name} server", argv, pinning.server)
    loadgen: Child | None = None
    try:
        ready = server.expect(("ready", "unavailable"), 30)
        if ready["event"] != "ready":
            return {"backend": name, "unavailable": ready.get("reason")}
        args = _jobs(workload, int(ready["port"]), size, warmup, duration)
        with tempfile.TemporaryDirectory() as scratch:
            out = os.path.join(scratch, "counts")
            traced = _Strace(server.pid, out) if tracer == "strace" else _Perf(server.pid, out)
            # The whole load runs inside the traced span, so every request's system calls are counted; the
            # idle moments at its edges add a few readiness waits (in the totals).
            with traced:
                server.send("snap")
                first = server.expect(("snap",), 5)
                loadgen = Child("loadgen", [str(_native.build("loadgen")), *args], pinning.generator)
                loadgen.expect(("result",), warmup + duration + 30)
                server.send("snap")
                last = server.expect(("snap",), 5)
            counts = traced.counts()
    finally:
        if loadgen is not None:
            loadgen.close()
        server.close()
    requests = last["received"][0] - first["received"][0]
    total = sum(counts.values())
    return {
        "backend": name, "workload": workload, "tracer": tracer, "requests": requests,
        "per_request": {k: v / requests for k, v in sorted(counts.items()) if v} if requests else {},
        "total_per_request": total / requests if requests else None,
        "rate": requests / (warmup + duration),
        "cpu_share": (last["cpu"] - first["cpu"]) / (warmup + duration),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backends", required=True, help="comma-separated benchmark backends")
    parser.add_argument("--workload", choices=("request-response", "many-peer", "sink"), default="request-response")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--tracer", choices=("strace", "perf"), default="strace")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if shutil.which(args.tracer) is None:
        parser.error(f"{args.tracer} is not installed")
    results = []
    for name in args.backends.split(","):
        result = measure(
            name.strip(), args.workload, size=args.size, warmup=args.warmup, duration=args.duration, tracer=args.tracer
        )
        results.append(result)
        if "unavailable" in result:
            print(f"{name}: unavailable ({result['unavailable']})")
            continue
        calls = "  ".join(f"{k} {v:.2f}" for k, v in result["per_request"].items())
        print(f"{name:22} {result['total_per_request']:.2f} calls per request ({calls}); "
              f"{result['requests']} requests, {result['rate']:.0f}/s traced, server CPU {result['cpu_share']:.0%}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
