"""The benchmark harness itself (``python -m udpio.bench``): it runs, reports every backend and workload,
survives a crashing backend, cleans up on Ctrl-C. No test here asserts a speed: the figures only have to be
real (non-zero, consistent with each other) or come with a reason."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from udpio.bench import _harness, _report
from udpio.bench._harness import Run, Settings, Suite
from udpio.bench._workloads import BACKEND_NAMES, WORKLOAD_NAMES, Backend, backend, workload

BENCH = [sys.executable, "-m", "udpio.bench"]


def _descendants_alive(pids: set[int]) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


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
    # The backends that need nothing beyond udpio's own dependencies always run.
    for back in ("udpio-asyncio", "udpio-asyncio-nogro", "asyncio", "raw"):
        for load in ("latency", "throughput", "sink"):
            assert cells[(back, load)]["status"] == "ok", (back, load)
    assert ran >= 12
    # Raw figures and the machine description are all there.
    assert {r["status"] for r in doc["runs"]} <= {"ok", "unavailable"}
    machine = doc["machine"]
    for key in ("cpu_model", "cores", "python", "uvloop", "twisted", "kernel"):
        assert machine[key], key
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


def test_server_scripts_are_found() -> None:
    scripts = _harness.servers_dir()
    for name in ("_common.py", "udpio_server.py", "asyncio_server.py", "twisted_server.py", "raw_server.py"):
        assert (scripts / name).is_file()


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
            if any("_generator" in " ".join(p.cmdline()) for p in found) and len(found) >= 2:
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
