"""Multi-core echo: N worker processes serving one UDP port, spread by the kernel through SO_REUSEPORT.

One Python process uses one core. With ``SO_REUSEPORT`` (socket(7), Linux >= 3.9) several sockets bind the
same address and port and the kernel spreads incoming datagrams across them by a hash of the 4-tuple, so each
peer sticks to one socket. Here the **parent** creates and binds the N sockets and keeps them open for the
whole life of the server; worker ``i`` inherits socket ``i`` (``pass_fds``) and serves it with
:func:`udpio.adopt`. Two things follow from the parent owning the sockets:

* port 0 works: the parent binds the first socket, reads the real port, binds the others to it;
* a worker that dies (crash, ``SIGKILL``) loses no socket: datagrams keep queueing in its socket's receive
  buffer (the kernel's hash does not move peers elsewhere), and the replacement adopts the same socket and
  answers them. Only datagrams the dead worker had already read are lost.

Workers report their counters as JSON lines on a pipe (every ``report_interval`` seconds and on exit); the
parent sums them (:attr:`EchoWorkers.counters`) and reads the kernel's drop counts from its own copies of the
sockets. A worker that exits without being asked is restarted with a growing back-off and counted in
:attr:`EchoWorkers.restarts`. Workers run in their own session (a terminal's Ctrl-C reaches the parent only;
the parent stops them) and watch their stdin pipe, so they also stop if the parent dies without stopping them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Literal

from . import _sockopts
from ._addr import Address, check_family, check_port, format_address, resolve
from ._counters import Counters, proc_net_drops
from ._echo import DEFAULT_ECHO_PORT, EchoProtocol, EchoServer
from ._errors import EndpointClosedError, InvalidArgumentError, bind_error
from ._factories import adopt
from ._loop import loop_kind, resolve_loop_kind, run, wait_within
from ._options import TransportOptions
from ._policy import PolicyArg, PolicyConfig, SafetyPolicy, make_policy

logger = logging.getLogger("udpio")

#: Upper bound on ``workers``: far more than cores on any machine this runs on; a typo (``--workers 4000``)
#: is refused instead of forking the machine to death.
MAX_WORKERS = 256
#: Seconds a worker gets to become ready at start, and to stop after SIGTERM before it is killed.
WORKER_START_TIMEOUT = 30.0
WORKER_STOP_TIMEOUT = 5.0
#: Restart back-off: the first restart waits RESTART_BACKOFF_MIN, each quick failure doubles it up to
#: RESTART_BACKOFF_MAX, and a worker that ran RESTART_STABLE_AFTER seconds resets it. A worker that crashes at
#: once (bad config, a bug hit by every datagram) thus costs a restart every few seconds, not a fork storm.
RESTART_BACKOFF_MIN = 0.05
RESTART_BACKOFF_MAX = 5.0
RESTART_STABLE_AFTER = 10.0
#: How often workers report their counters: the most a SIGKILLed worker's counts can be out of date.
DEFAULT_REPORT_INTERVAL = 1.0

#: Run by each worker process (``-c`` rather than ``-m udpio._workers``: running a module of an imported
#: package as ``__main__`` imports it twice).
_WORKER_CODE = "import sys; from udpio._workers import worker_main; sys.exit(worker_main(sys.argv[1:]))"


def check_workers(value: object) -> int:
    """Return ``value`` if it is an int in 1..:data:`MAX_WORKERS`, else raise
    :class:`~udpio.InvalidArgumentError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise InvalidArgumentError("workers", f"an int in 1..{MAX_WORKERS}", value)
    return value


def _check_interval(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise InvalidArgumentError(what, "a finite number of seconds > 0", value)
    return float(value)


def worker_policy_config(policy: SafetyPolicy | None, workers: int) -> PolicyConfig | None:
    """The config each worker builds its own policy from. The global rate is the whole server's, so each of
    ``workers`` gets its share; per-source limits stay as they are (a peer's datagrams all hash to one
    worker, unless it sends from several ports)."""
    if policy is None:
        return None
    config = policy.config
    if config.global_rate is None or config.global_burst is None:
        return config
    return dataclasses.replace(
        config,
        global_rate=config.global_rate / workers,
        global_burst=max(1.0, config.global_burst / workers),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What a worker process is told (as JSON on its command line): checked on both sides, so a field that is
    misspelt or missing fails at once with its name, in the parent's tests as in the worker."""

    policy: PolicyConfig | None
    max_size: int | None
    report_interval: float
    loop: Literal["uvloop", "asyncio"]
    index: int = 0

    def __post_init__(self) -> None:
        if self.policy is not None and not isinstance(self.policy, PolicyConfig):
            raise InvalidArgumentError("worker policy", "a PolicyConfig or None", self.policy)
        if self.max_size is not None:
            TransportOptions(max_size=self.max_size)
        _check_interval(self.report_interval, "report_interval")
        if self.loop not in ("uvloop", "asyncio"):
            raise InvalidArgumentError("worker loop", "'uvloop' or 'asyncio'", self.loop)
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < MAX_WORKERS:
            raise InvalidArgumentError("worker index", f"an int in 0..{MAX_WORKERS - 1}", self.index)

    def to_json(self) -> str:
        """One JSON object (the policy as :meth:`PolicyConfig.to_dict`)."""
        return json.dumps(
            {
                "policy": None if self.policy is None else self.policy.to_dict(),
                "max_size": self.max_size,
                "report_interval": self.report_interval,
                "loop": self.loop,
                "index": self.index,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        """Read :meth:`to_json`'s output; unknown or missing keys and bad values raise
        :class:`~udpio.InvalidArgumentError` naming them."""
        try:
            data = json.loads(text)
        except ValueError:
            raise InvalidArgumentError("worker config", "a JSON object", text) from None
        if not isinstance(data, Mapping):
            raise InvalidArgumentError("worker config", "a JSON object", data)
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(data) != fields:
            raise InvalidArgumentError("worker config keys", f"exactly {sorted(fields)}", sorted(data))
        policy = data["policy"]
        return cls(
            policy=None if policy is None else PolicyConfig.from_dict(policy),
            max_size=data["max_size"],
            report_interval=data["report_interval"],
            loop=data["loop"],
            index=data["index"],
        )


@dataclasses.dataclass(slots=True)
class _Slot:
    """Worker ``index``: its socket (owned by the parent), current process and last report."""

    index: int
    sock: socket.socket
    process: asyncio.subprocess.Process | None = None
    last: dict[str, int] = dataclasses.field(default_factory=dict)
    serving: bool = False  # the current process reported "ready" and has not exited


class EchoWorkers:
    """A running multi-process echo server (from :func:`start_echo_workers`); ``async with`` or :meth:`stop`.

    Not thread-safe; use it from the loop that started it.
    """

    def __init__(self, slots: list[_Slot], config: WorkerConfig) -> None:
        self._slots = slots
        self._config = config
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._kernel_drops_at_stop: int | None = None
        self._stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._retired: dict[str, int] = {}
        self._changed = asyncio.Condition()  # notified when a worker starts serving or exits
        self._starting = True
        self._start_error: RuntimeError | None = None
        #: Workers that exited without being asked (crash, kill) and were restarted.
        self.restarts = 0
        #: Exit codes of those workers, oldest first (negative: killed by that signal).
        self.exit_codes: list[int] = []

    def __repr__(self) -> str:
        return f"<udpio.EchoWorkers {len(self._slots)} workers {format_address(self.address)}>"

    @property
    def address(self) -> Address:
        """The bound address (the real port when 0 was asked for)."""
        return self._slots[0].sock.getsockname()  # type: ignore[no-any-return]

    @property
    def port(self) -> int:
        """The bound port."""
        return self.address[1]

    @property
    def workers(self) -> int:
        """How many worker processes serve the port."""
        return len(self._slots)

    @property
    def pids(self) -> list[int | None]:
        """The current process id of each worker (``None`` while one is being restarted)."""
        return [
            s.process.pid if s.process is not None and s.process.returncode is None else None for s in self._slots
        ]

    @property
    def evictions(self) -> int:
        """Per-source policy states forgotten, all workers together (see ``SafetyPolicy.evictions``)."""
        return self._retired.get("evictions", 0) + sum(s.last.get("evictions", 0) for s in self._slots)

    @property
    def counters(self) -> Counters:
        """All workers' counters summed (a fresh :class:`~udpio.Counters`): each worker's last report, plus
        the final reports of workers that have exited, plus ``kernel_drops`` read now from the sockets.

        A worker's report is at most ``report_interval`` seconds old; the counts of a killed worker since its
        last report are lost (its restart is counted in :attr:`restarts`).
        """
        totals = dict(self._retired)
        for slot in self._slots:
            for key, value in slot.last.items():
                totals[key] = totals.get(key, 0) + value
        out = Counters()
        names = {f.name for f in dataclasses.fields(Counters)} - {"policy_drops", "kernel_drops"}
        for key, value in totals.items():
            if key in names:
                setattr(out, key, value)
            elif key.startswith("policy:"):
                out.policy_drops[key.removeprefix("policy:")] = value
        out.kernel_drops = self._kernel_drops() if self._kernel_drops_at_stop is None else self._kernel_drops_at_stop
        return out

    def _kernel_drops(self) -> int:
        # The sockets outlive their workers, so the kernel's per-socket count is read here, once per socket.
        return sum(proc_net_drops(s.sock) or 0 for s in self._slots if s.sock.fileno() != -1)

    def _signal_workers(self, signum: int) -> None:
        for slot in self._slots:
            process = slot.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    # -- running workers ---------------------------------------------------------------------------

    def _start(self) -> None:
        for slot in self._slots:
            self._tasks.append(asyncio.create_task(self._supervise(slot), name=f"udpio-worker-{slot.index}"))

    async def _wait_ready(self) -> None:
        try:
            await wait_within(self.wait_serving(), WORKER_START_TIMEOUT)
        finally:
            self._starting = False

    async def wait_serving(self, restarts: int = 0) -> None:
        """Wait until every worker is serving and at least ``restarts`` restarts have happened (e.g. after
        killing one: ``await pool.wait_serving(pool.restarts + 1)``). Raises :class:`RuntimeError` if a
        worker failed to start, :class:`~udpio.EndpointClosedError` once stopped."""

        def settled() -> bool:
            return (
                self._start_error is not None
                or self._stopping
                or (self.restarts >= restarts and all(s.serving for s in self._slots))
            )

        async with self._changed:
            await self._changed.wait_for(settled)
        if self._start_error is not None:
            raise self._start_error
        if self._stopping:
            raise EndpointClosedError("echo workers")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        config = dataclasses.replace(self._config, index=slot.index)
        fd = slot.sock.fileno()
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER_CODE,
            "--fd",
            str(fd),
            "--config",
            config.to_json(),
            pass_fds=(fd,),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # stderr is inherited: a worker's log lines and tracebacks reach the same place as the parent's.
            # Own session: a terminal's SIGINT goes to the parent alone, which then stops the workers in order.
            start_new_session=True,
        )

    async def _supervise(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        backoff = RESTART_BACKOFF_MIN
        while not self._stopping:
            started = loop.time()
            try:
                slot.process = process = await self._spawn(slot)
            except OSError as exc:  # EMFILE, EAGAIN (process limit), ENOMEM: try again after the back-off
                logger.error("udpio: cannot start echo worker %d: %r", slot.index, exc)
                if self._starting:
                    self._start_error = RuntimeError(f"cannot start echo worker {slot.index}: {exc}")
                    await self._notify()
                    return
                with contextlib.suppress(asyncio.TimeoutError):
                    await wait_within(self._stop_requested.wait(), backoff)
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
                continue
            if self._stopping:
                # stop() ran while this one was being forked, so it did not see it.
                process.terminate()
            ever_served = False
            try:
                ever_served = await self._read_reports(slot, process)
            finally:
                code = await process.wait()
                if process.stdin is not None:
                    process.stdin.close()
                slot.serving = False
                self._retire(slot)
            if self._starting and not ever_served:
                self._start_error = RuntimeError(
                    f"echo worker {slot.index} exited with code {code} before it was ready"
                )
                await self._notify()
                return
            if self._stopping:
                await self._notify()
                return
            self.restarts += 1
            self.exit_codes.append(code)
            logger.warning("udpio: echo worker %d (pid %d) exited with code %d; restarting it",
                           slot.index, process.pid, code)
            if loop.time() - started >= RESTART_STABLE_AFTER:
                backoff = RESTART_BACKOFF_MIN
            # Pacing on purpose: a worker that fails at once must not be re-forked in a tight loop; stop()
            # ends the wait early.
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_within(self._stop_requested.wait(), backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)

    async def _read_reports(self, slot: _Slot, process: asyncio.subprocess.Process) -> bool:
        """Read the worker's reports until it exits; ``True`` if it said it was ready."""
        assert process.stdout is not None  # created with stdout=PIPE
        ready = False
        while line := await process.stdout.readline():
            try:
                report = json.loads(line)
                counters = {str(k): int(v) for k, v in report["counters"].items()}
                counters["evictions"] = int(report["evictions"])
                state = report["state"]
            except (ValueError, KeyError, TypeError, AttributeError):
                logger.warning("udpio: echo worker %d wrote an unreadable report: %r", slot.index, line[:200])
                continue
            slot.last = counters
            if state == "ready":
                ready = slot.serving = True
                await self._notify()
        return ready

    def _retire(self, slot: _Slot) -> None:
        """Fold an exited worker's last report into the totals (its successor starts from zero)."""
        for key, value in slot.last.items():
            self._retired[key] = self._retired.get(key, 0) + value
        slot.last = {}

    # -- stopping ----------------------------------------------------------------------------

    async def stop(self, timeout: float = WORKER_STOP_TIMEOUT) -> None:
        """Stop every worker (SIGTERM: each stops receiving, flushes its replies, reports, exits; killed if it
        takes longer than ``timeout`` seconds), then close the sockets. Idempotent."""
        if self._stopping:
            await asyncio.shield(self._stopped)
            return
        self._stopping = True
        self._stop_requested.set()
        await self._notify()
        try:
            self._signal_workers(signal.SIGTERM)
            if self._tasks:
                _, pending = await asyncio.wait(self._tasks, timeout=timeout)
                if pending:
                    logger.warning(
                        "udpio: %d echo workers did not stop within %gs; killing them", len(pending), timeout
                    )
                    self._signal_workers(signal.SIGKILL)
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self._kernel_drops_at_stop = self._kernel_drops()
            for slot in self._slots:
                slot.sock.close()
            if not self._stopped.done():
                self._stopped.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until :meth:`stop` has finished."""
        await asyncio.shield(self._stopped)

    async def serve_forever(self) -> None:
        """Wait until stopped; cancelling this stops the workers (see :meth:`stop`)."""
        try:
            await asyncio.shield(self._stopped)
        except asyncio.CancelledError:
            await self.stop()
            raise

    async def __aenter__(self) -> EchoWorkers:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def start_echo_workers(
    workers: int,
    host: str = "127.0.0.1",
    port: int = DEFAULT_ECHO_PORT,
    *,
    family: int = 0,
    max_size: int | None = None,
    policy: PolicyArg = "default",
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    loop: str | None = None,
    report_interval: float = DEFAULT_REPORT_INTERVAL,
) -> EchoWorkers:
    """Start ``workers`` echo processes sharing ``(host, port)`` through ``SO_REUSEPORT``; return once every
    one is serving.

    ``policy`` as :func:`udpio.start_echo` (each worker builds its own from ``policy.options()``; the global
    rate is split evenly between workers). ``loop`` picks the workers' event loop (default: the same kind as
    the caller's). ``rcvbuf``/``sndbuf`` size each socket. Raises what :func:`udpio.listen` raises for bad
    arguments or a port in use, :class:`NotImplementedError` where ``SO_REUSEPORT`` is missing, and
    :class:`RuntimeError` if a worker fails to start (the others are stopped).
    """
    count = check_workers(workers)
    check_port(port)
    check_family(family)
    interval = _check_interval(report_interval, "report_interval")
    policy_config = worker_policy_config(make_policy(policy), count)
    kind = resolve_loop_kind(loop) if loop is not None else loop_kind()
    TransportOptions(max_size=max_size)  # validated before any worker starts
    fam, address = await resolve(host, port, family)
    slots: list[_Slot] = []
    try:
        for index in range(count):
            sock = _sockopts.open_socket(fam, reuse_port=True, rcvbuf=rcvbuf, sndbuf=sndbuf)
            slots.append(_Slot(index, sock))
            try:
                sock.bind(address)
            except OSError as exc:
                raise bind_error(exc, address) from exc
            # Port 0: the first bind picked the port; the other sockets join it.
            address = sock.getsockname()
    except BaseException:
        for slot in slots:
            slot.sock.close()
        raise
    config = WorkerConfig(policy=policy_config, max_size=max_size, report_interval=interval, loop=kind)
    pool = EchoWorkers(slots, config)
    pool._start()
    try:
        await pool._wait_ready()
    except BaseException:
        await pool.stop()
        raise
    return pool


async def serve_echo_workers(
    workers: int,
    host: str = "127.0.0.1",
    port: int = DEFAULT_ECHO_PORT,
    *,
    family: int = 0,
    max_size: int | None = None,
    policy: PolicyArg = "default",
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
    loop: str | None = None,
    report_interval: float = DEFAULT_REPORT_INTERVAL,
) -> None:
    """Run :func:`start_echo_workers` (same arguments) until cancelled, then stop the workers."""
    pool = await start_echo_workers(
        workers, host, port, family=family, max_size=max_size, policy=policy, rcvbuf=rcvbuf, sndbuf=sndbuf,
        loop=loop, report_interval=report_interval,
    )
    async with pool:
        await pool.serve_forever()


# -- the worker process ----------------------------------------------------------------------------


def _emit(state: str, server: EchoServer) -> None:
    policy = server.policy
    report = {
        "state": state,
        "pid": os.getpid(),
        "counters": server.transport.get_extra_info("counters").snapshot(),
        "evictions": policy.evictions if policy is not None else 0,
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


async def _serve_worker(fd: int, config: WorkerConfig) -> int:
    loop = asyncio.get_running_loop()
    policy = None if config.policy is None else SafetyPolicy.from_config(config.policy)
    try:
        transport, protocol = await adopt(lambda: EchoProtocol(policy), fd, max_size=config.max_size)
    finally:
        os.close(fd)  # adopt works on its own duplicate; the inherited descriptor is ours to close
    server = EchoServer(transport, protocol)
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop(why: str) -> None:
        if not stop.done():
            logger.debug("udpio: echo worker %d stopping: %s", config.index, why)
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signal.Signals(signum).name)

    def stdin_readable() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            request_stop("parent gone")

    loop.add_reader(0, stdin_readable)
    _emit("ready", server)
    interval = config.report_interval

    async def report() -> None:
        while True:
            # Pacing on purpose: reports are periodic.
            await asyncio.sleep(interval)
            _emit("running", server)

    reporter = asyncio.create_task(report())
    broken: asyncio.Future[None] = asyncio.ensure_future(server.wait_closed())
    try:
        await asyncio.wait([stop, broken], return_when=asyncio.FIRST_COMPLETED)
    finally:
        reporter.cancel()
        broken.cancel()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(0)
        await server.shutdown()
        _emit("final", server)
    # Asked to stop: 0. The socket failed under the worker: 1, and the parent starts another.
    return 0 if stop.done() else 1


def worker_main(argv: Sequence[str]) -> int:
    """Entry point of a worker process (started by :func:`start_echo_workers`, not by hand)."""
    parser = argparse.ArgumentParser(prog="udpio-echo-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    config = WorkerConfig.from_json(args.config)
    return run(_serve_worker(args.fd, config), loop=config.loop)
