"""The benchmark harness itself (``python -m udpio.bench``): it runs, reports every backend and workload,
survives a crashing backend, cleans up on Ctrl-C. No test here asserts a speed: the figures only have to be
real (non-zero, consistent with each other) or come with a reason."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from udpio.bench import _harness, _native, _report
from udpio.bench._harness import Run, Settings, Suite
from udpio.bench._workloads import BACKEND_NAMES, WORKLOAD_NAMES, Backend, backend, workload

BENCH = [sys.executable, "-m", "udpio.bench"]
#: Whether this machine can build the C load generator and reference server (cc on Linux).
HAVE_CC = sys.platform.startswith("linux") and _native.compiler() is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler (cc) here, or not Linux")
#: The workloads the C load generator runs (skipped with a reason without a compiler).
C_WORKLOADS = ("many-peer", "request-response")


def _command(process: psutil.Process) -> str:
    """Its command line, or "" for a process that just exited (a short-lived child such as
    ``cc --version`` can be a zombie, or gone, by the time it is looked at)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _descendants_alive(pids: set[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:  # gone between listing and looking: not alive
            continue
    return alive


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--quick`` run of every backend and workload, with JSON and plot (shared by several tests)."""
    out = tmp_path_factory.mktemp("bench")
    json_path, png_path = out / "bench.json", out / "bench.png"
    done = subprocess.run(
        [*BENCH, "--quick", "--json", str(json_path), "--plot", str(png_path)],
        check=False, capture_output=True, text=True, timeout=150,
    )
    return {"done": done, "json": json.loads(json_path.read_text()) if json_path.exists() else None, "png": png_path}


@pytest.mark.timeout(160)
def test_quick_run_exits_0_and_prints_a_row_per_backend(quick: dict[str, Any]) -> None:
    done = quick["done"]
    assert done.returncode == 0, done.stderr[-2000:]
    for name in BACKEND_NAMES:
        assert f"| {name} " in done.stdout
    assert "x asyncio / x twisted-epoll" in done.stdout
    assert "Pinning:" in done.stdout


@pytest.mark.timeout(160)
def test_quick_json_has_every_backend_and_workload_with_real_figures(quick: dict[str, Any]) -> None:
    doc = quick["json"]
    assert doc is not None, quick["done"].stderr[-2000:]
    cells = {(c["backend"], c["workload"]): c for c in doc["summary"]}
    assert set(cells) == {(b, w) for b in BACKEND_NAMES for w in WORKLOAD_NAMES}
    ran = 0
    for (back, load), cell in cells.items():
        if cell["status"] == "unavailable":
            assert cell["reason"], (back, load)
            continue
        assert cell["status"] == "ok", (back, load, cell["reason"])
        ran += 1
        figures = {k: v["median"] for k, v in cell["figures"].items()}
        assert figures[workload(load).headline] > 0, (back, load)
        assert figures["rss_idle_mb"] > 1 and figures["rss_peak_mb"] >= figures["rss_idle_mb"]
        if load == "latency":
            assert 0 < figures["rtt_min_us"] <= figures["rtt_p50_us"] <= figures["rtt_p99_us"] <= figures["rtt_max_us"]
        if load in ("sink", "multicast"):
            assert figures["offered_per_s"] > 0 and 0 <= figures["loss"] < 1
            assert 0 < figures["server_cpu"] <= 1.5  # CPU seconds per second, one busy thread (+ control)
        if load in C_WORKLOADS:
            assert figures["replies_per_s"] > 0 and figures["server_received_per_s"] > 0, (back, load)
            assert 0 < figures["rtt_min_us"] <= figures["rtt_p50_us"] <= figures["rtt_p90_us"], (back, load)
            assert figures["rtt_p90_us"] <= figures["rtt_p99_us"] <= figures["rtt_max_us"], (back, load)
            assert 0 <= figures["loss"] < 1
            expected = (256, 4) if load == "many-peer" else (1, 1)
            assert (figures["sockets"], figures["in_flight"]) == expected
            assert figures["in_flight_mean"] > 0
            assert cell["generator"] == "C"
    # The backends that need nothing beyond udpio's own dependencies always run.
    for back in ("udpio-asyncio", "udpio-asyncio-nogro", "asyncio", "raw"):
        for load in ("latency", "throughput", "sink", *(C_WORKLOADS if HAVE_CC else ())):
            assert cells[(back, load)]["status"] == "ok", (back, load)
    # rloop comes with the test extra wherever it has wheels; udpio's transport runs on it.
    if importlib.util.find_spec("rloop") is not None:
        for back in ("rloop", "udpio-rloop", "udpio-rloop-nogro"):
            for load in ("latency", "throughput", "sink"):
                assert cells[(back, load)]["status"] == "ok", (back, load)
    else:
        assert "rloop is not installed" in cells[("rloop", "sink")]["reason"]
    # The C reference server serves echo and sink, and says why it does not serve multicast.
    if HAVE_CC:
        for load in ("latency", "throughput", "sink", *C_WORKLOADS):
            assert cells[("c-ref", load)]["status"] == "ok", load
        assert cells[("c-ref", "sink")]["generator"] == "C"
    else:
        assert "no C compiler" in cells[("c-ref", "sink")]["reason"]
        assert cells[("asyncio", "sink")]["generator"] == "Python"  # the fallback flooder
    assert cells[("c-ref", "multicast")]["status"] == "unavailable"
    assert "echo and sink workloads only" in cells[("c-ref", "multicast")]["reason"]
    assert ran >= 12
    # Raw figures and the machine description are all there.
    assert {r["status"] for r in doc["runs"]} <= {"ok", "unavailable"}
    machine = doc["machine"]
    for key in ("cpu_model", "cores", "python", "uvloop", "twisted", "kernel"):
        assert machine[key], key
    assert "rloop" in machine and "cc" in machine
    assert doc["settings"]["peers"] == 256 and doc["settings"]["peer_window"] == 4
    assert doc["pinning"]["note"]
    assert doc["command"].startswith("python -m udpio.bench --quick")


@pytest.mark.timeout(160)
def test_quick_plot_is_a_png(quick: dict[str, Any]) -> None:
    pytest.importorskip("matplotlib")
    assert quick["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_list_names_every_backend_and_workload() -> None:
    done = subprocess.run([*BENCH, "--list"], check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    for name in (*BACKEND_NAMES, *WORKLOAD_NAMES):
        assert name in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "asyncio,nope"], "unknown backend 'nope'"),
        (["--workloads", "pingpong"], "unknown workload 'pingpong'"),
        (["--size", "70000"], "payload sizes must be in 0..65507"),
        (["--duration", "-1"], "--duration must be >= 0.01"),
        (["--quick", "--full"], "not allowed with argument"),
        (["--peers", "0"], "--peers must be in 1..4096, got '0'"),
        (["--peer-window", "2000"], "--peer-window must be in 1..1024, got '2000'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_value(args: list[str], message: str) -> None:
    done = subprocess.run([*BENCH, *args], check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr


def test_missing_extra_is_named() -> None:
    """Without psutil (hidden from the import system) the harness says which extra to install."""
    code = "import sys; sys.modules['psutil'] = None; from udpio.bench import main; sys.exit(main(['--quick']))"
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "pip install 'udpio[bench]'" in done.stderr


def test_server_scripts_and_c_sources_are_found_inside_the_package() -> None:
    scripts = _harness.servers_dir()
    assert scripts.parent == Path(_harness.__file__).resolve().parent  # udpio/bench/servers, any install
    for name in ("_common.py", "udpio_server.py", "asyncio_server.py", "twisted_server.py", "raw_server.py"):
        assert (scripts / name).is_file()
    for name in (*_native.PROGRAMS.values(), *_native.HEADERS):
        assert (_native.SOURCE_DIR / name).is_file()


# -- the C programs ---------------------------------------------------------------------------------------


def _lines(process: subprocess.Popen[str]) -> dict[str, dict[str, Any]]:
    """The JSON lines a C program printed, by event."""
    out, _ = process.communicate(timeout=30)
    return {event["event"]: event for event in map(json.loads, out.splitlines())}


@needs_cc
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("server_mode", "client"), [("echo", ["echo", "--sockets", "8", "--inflight", "2"]),
                                                     ("sink", ["flood"])])
def test_c_programs_compile_and_drive_the_reference_server(server_mode: str, client: list[str]) -> None:
    """The C load generator against the C reference server, both built from the package's sources: the
    window's edges, a result with real figures, and the server's counts agree with the client's."""
    server = subprocess.Popen(
        [str(_native.build("refserver")), "--workload", server_mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        ready = json.loads(server.stdout.readline())
        assert ready["event"] == "ready" and ready["port"] > 0
        done = subprocess.run(
            [str(_native.build("loadgen")), *client, "--port", str(ready["port"]), "--size", "64",
             "--warmup", "0.02", "--duration", "0.1"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in done.stdout.splitlines()]
        assert [e["event"] for e in events] == ["measure-start", "measure-end", "result"]
        result = events[-1]
        assert 0.09 < result["window_s"] < 5 and result["t0"] == events[0]["t"]
        server.stdin.write("snap\n")
        server.stdin.flush()
        snap = json.loads(server.stdout.readline())
        if server_mode == "echo":
            assert result["sockets"] == 8 and result["inflight"] == 2
            assert result["replies_per_s"] > 0 and result["replies"] <= result["sent"] + 16
            assert result["rtt_samples"] == result["replies"]
            assert 0 < result["rtt_min_us"] <= result["rtt_p50_us"] <= result["rtt_p90_us"]
            assert result["rtt_p90_us"] <= result["rtt_p99_us"] <= result["rtt_max_us"]
            assert snap["received"][0] >= result["replies"]  # every reply was a request the server counted
        else:
            assert result["gso"] is True and result["segments"] == 64  # Linux >= 4.18 on loopback
            assert result["sent_per_s"] > 0 and result["sent"] % 64 == 0
            assert snap["received"][0] > 0
        server.stdin.write("stop\n")
        server.stdin.flush()
        lines = _lines(server)
        assert lines["final"]["received"][0] >= snap["received"][0]
        assert server.returncode == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


@needs_cc
def test_reference_server_says_multicast_is_unavailable() -> None:
    done = subprocess.run(
        [str(_native.build("refserver")), "--workload", "multicast", "--group", "239.255.1.1", "--members", "2"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 3  # _common.EXIT_UNAVAILABLE, as the Python servers exit
    assert json.loads(done.stdout)["reason"] == "the C reference server serves the echo and sink workloads only"


@needs_cc
@pytest.mark.parametrize("host", ["10.0.0.1", "::1", "localhost"])
def test_load_generator_refuses_any_destination_but_ipv4_loopback(host: str) -> None:
    """The generator checks the address before it makes a socket: nothing can be sent off the machine."""
    done = subprocess.run(
        [str(_native.build("loadgen")), "flood", "--host", host, "--port", "9", "--duration", "0.01"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 2
    assert f"only an IPv4 loopback address (127.x.x.x) is accepted: {host}" in done.stderr
    assert done.stdout == ""


@needs_cc
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [["flood"], ["echo", "--sockets", "4", "--inflight", "1"]])
def test_load_generator_stops_when_its_harness_vanishes(mode: list[str]) -> None:
    """Given --parent-stdin (the harness always gives it), end-of-file on stdin ends a 60-second load at once:
    a harness killed outright leaves no flood running behind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target:
        target.bind(("127.0.0.1", 0))
        loadgen = subprocess.Popen(
            [str(_native.build("loadgen")), *mode, "--port", str(target.getsockname()[1]), "--warmup", "0",
             "--duration", "60", "--parent-stdin", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert loadgen.stdout is not None and loadgen.stdin is not None
            assert json.loads(loadgen.stdout.readline())["event"] == "measure-start"  # the load is on
            loadgen.stdin.close()
            assert loadgen.wait(timeout=10) == 1
            assert loadgen.stdout.read() == ""  # no result: nobody is left to read it
        finally:
            if loadgen.poll() is None:
                loadgen.kill()
            loadgen.wait()
            for pipe in (loadgen.stdin, loadgen.stdout):
                if pipe is not None:
                    pipe.close()


@needs_cc
def test_build_is_cached_by_source_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built once into the cache, then reused; an edited source gets a binary of its own."""
    monkeypatch.setenv(_native.CACHE_ENV, str(tmp_path / "cache"))
    first = _native.build("refserver")
    assert first.parent == tmp_path / "cache" and os.access(first, os.X_OK)
    stamp = first.stat().st_mtime_ns
    _native._outcomes.clear()  # a new process would find the binary on disk, without compiling again
    assert _native.build("refserver") == first and first.stat().st_mtime_ns == stamp
    sources = tmp_path / "src"
    shutil.copytree(_native.SOURCE_DIR, sources)
    (sources / "refserver.c").write_text((sources / "refserver.c").read_text() + "\n/* edited */\n")
    monkeypatch.setattr(_native, "SOURCE_DIR", sources)
    _native._outcomes.clear()
    edited = _native.build("refserver")
    assert edited != first and edited.parent == first.parent
    _native._outcomes.clear()


@pytest.mark.parametrize(
    ("compiler", "reason"),
    [
        ("/nonexistent/cc", "no C compiler: /nonexistent/cc is not on the PATH"),
        ("false", "the C compiler failed on loadgen.c (status 1)"),
    ],
)
def test_no_or_broken_compiler_is_a_reason(
    compiler: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", compiler)
    monkeypatch.setenv(_native.CACHE_ENV, str(tmp_path))
    try:
        assert reason in (_native.unavailable("loadgen") or "")
        with pytest.raises(_native.NativeUnavailable, match="C compiler"):
            _native.build("loadgen")
    finally:
        _native._outcomes.clear()


@pytest.mark.timeout(90)
def test_without_a_compiler_c_rows_are_skipped_and_the_sink_falls_back(tmp_path: Path) -> None:
    """No C compiler: the C-client workloads and the c-ref row are "not available" with the reason, the run
    still exits 0, and the flood sink is offered by the Python flooder instead (the report says which)."""
    json_path = tmp_path / "bench.json"
    env = {**os.environ, "CC": "/nonexistent/cc", _native.CACHE_ENV: str(tmp_path / "cache")}
    done = subprocess.run(
        [*BENCH, "--quick", "--backends", "raw,c-ref", "--workloads", "sink,many-peer,request-response",
         "--json", str(json_path)],
        check=False, capture_output=True, text=True, timeout=80, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cells = {(c["backend"], c["workload"]): c for c in json.loads(json_path.read_text())["summary"]}
    for load in ("sink", "many-peer", "request-response"):
        assert cells[("c-ref", load)]["status"] == "unavailable"
        assert "no C compiler: /nonexistent/cc is not on the PATH" in cells[("c-ref", load)]["reason"]
    for load in C_WORKLOADS:
        assert cells[("raw", load)]["status"] == "unavailable"
        assert "no C compiler" in cells[("raw", load)]["reason"]
    assert cells[("raw", "sink")]["status"] == "ok" and cells[("raw", "sink")]["generator"] == "Python"
    assert "sink: Python (udpio.bench._generator)" in done.stdout
    assert "not available: no C compiler" in done.stdout


CRASHING_SERVER = textwrap.dedent(
    """
    import json, socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    print(json.dumps({"event": "ready", "port": sock.getsockname()[1]}), flush=True)
    sock.recv(65536)  # the first datagram of the load
    print("boom: the server fell over", file=sys.stderr, flush=True)
    sys.exit(7)
    """
)


@pytest.mark.timeout(60)
def test_crashing_backend_fails_its_row_and_the_rest_still_run(tmp_path: Path) -> None:
    script = tmp_path / "crashing_server.py"
    script.write_text(CRASHING_SERVER)
    broken = Backend("broken", str(script), (), "falls over on the first datagram")
    missing = Backend("missing", str(tmp_path / "no_such_server.py"), (), "cannot even start")
    asyncio_row = backend("asyncio")
    settings = Settings(
        backends=(broken, missing, asyncio_row), workloads=(workload("sink"),), sizes=(64,),
        duration=0.1, warmup=0.05, window=0, repeat=1, members=2,
    )
    with Suite(settings) as suite:
        runs = {run.backend: run for run in suite.run_all()}
    assert runs["broken"].status == "failed"
    assert "exited (status 7)" in runs["broken"].reason and "boom" in runs["broken"].reason
    assert runs["missing"].status == "failed"
    assert "no_such_server.py" in runs["missing"].reason
    assert runs["asyncio"].status == "ok", runs["asyncio"].reason
    assert runs["asyncio"].figures["received_per_s"] > 0


@pytest.mark.timeout(60)
def test_ctrl_c_stops_every_child_and_reports_what_ran() -> None:
    bench = subprocess.Popen(
        [*BENCH, "--backends", "asyncio,raw", "--workloads", "sink", "--duration", "20", "--no-pin"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        me = psutil.Process(bench.pid)
        children: set[int] = set()
        deadline = time.monotonic() + 30
        # Wait until both the generator and a server run (a flood is under way), remembering every child.
        while time.monotonic() < deadline:
            found = me.children(recursive=True)
            children |= {p.pid for p in found}
            # The flood comes from the C load generator, or from the Python one where cc is missing.
            generators = [p for p in found if any(m in _command(p) for m in ("_generator", "loadgen-"))]
            if generators and len(found) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the benchmark never started its generator and a server")
        bench.send_signal(signal.SIGINT)
        out, err = bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
    assert bench.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert "### Notes" in out  # the report of what ran so far still comes out
    deadline = time.monotonic() + 5
    while _descendants_alive(children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _descendants_alive(children) == []


# -- the report, on figures made up for the purpose ------------------------------------------------------


def _run(backend: str, load: str, rep: int, value: float, *, status: str = "ok", reason: str = "") -> Run:
    key = workload(load).headline
    return Run(backend, load, 64, rep, status, reason, {key: value, "limited_by": "server"} if status == "ok" else {})


def test_summary_takes_the_median_and_spread_and_a_failure_wins() -> None:
    cells = _report.summarise(
        [
            _run("asyncio", "sink", 0, 40e3), _run("asyncio", "sink", 1, 50e3), _run("asyncio", "sink", 2, 45e3),
            _run("raw", "sink", 0, 500e3),
            _run("raw", "sink", 1, 0, status="failed", reason="server exited (status 1)"),
        ]
    )
    by_name = {c.backend: c for c in cells}
    stat = by_name["asyncio"].stats["received_per_s"]
    assert (stat.median, stat.low, stat.high) == (45e3, 40e3, 50e3)
    assert stat.spread == pytest.approx(5e3 / 45e3)
    assert by_name["raw"].status == "failed"
    assert "1 of 2 runs failed" in by_name["raw"].reason


def test_ratios_read_better_than_reference_for_rates_and_latency() -> None:
    cells = _report.summarise(
        [
            _run("asyncio", "sink", 0, 50e3), _run("udpio-asyncio", "sink", 0, 500e3),
            _run("asyncio", "latency", 0, 60.0), _run("udpio-asyncio", "latency", 0, 30.0),
        ]
    )
    by_key = {(c.backend, c.workload): c for c in cells}
    assert _report.ratio(by_key[("udpio-asyncio", "sink")], by_key[("asyncio", "sink")]) == pytest.approx(10.0)
    assert _report.ratio(by_key[("udpio-asyncio", "latency")], by_key[("asyncio", "latency")]) == pytest.approx(2.0)
    text = _report.render(
        cells, _report.machine_info(),
        {"duration": 1.0, "warmup": 0.1, "window": 0, "members": 2, "repeat": 1, "sizes": [64]},
        {"note": "not pinned"},
    )
    assert "10.00x" in text and "2.00x" in text
