"""Run Twisted's own UDP test suites on udpio's drop-in reactor, inside a private network namespace.

    python tests/run_twisted_udp_suite.py legacy  [--loop auto|uvloop|asyncio] [TRIAL OPTIONS...]
    python tests/run_twisted_udp_suite.py builder [--loop auto|uvloop|asyncio] [TRIAL OPTIONS...]

``legacy`` is ``trial --reactor=udpio twisted.test.test_udp``: the reactor comes through the Twisted plugin
(``compat/twisted_plugin/``), exactly as a user's ``trial --reactor=udpio`` gets it from an install.
``builder`` is ``twisted.internet.test.test_udp`` with its ``ReactorBuilder`` pointed at the udpio reactor
only: every test builds a fresh :class:`~udpio.compat.UdpioReactor` on a fresh loop of the chosen kind.
Trial's exit status is the runner's; its summary line (``PASSED (skips=1, successes=26)``) says what ran.

Why a namespace: Twisted's multicast tests join groups on "any interface" and send to them, and
``twisted.test.test_udp`` probes multicast that way when it is imported; on the host that would follow the
default route off the machine. So the runner re-executes itself under ``unshare --net`` (a namespace that
dies with the process: nothing to clean up) where the only links are ``lo`` and a veth pair ``mc0``/``mc1``
with both ends inside. Multicast is routed to ``mc0``: Linux does not loop IPv6 multicast back on ``lo``,
and on ``lo`` ``IP_MULTICAST_LOOP=0`` cannot stop local delivery (the datagram comes back in through ``lo``),
which Twisted's ``test_loopback`` checks. Exit status 77 (and a line saying why) when no namespace can be made.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any

#: Exit status when the suite cannot run here (no root, no ``unshare``/``ip``): the caller skips, saying why.
EXIT_UNAVAILABLE = 77
_INSIDE_FLAG = "--inside-netns"
#: ``ip`` commands that build the namespace's network. 198.18.0.0/15 is the benchmarking range (RFC 2544):
#: an IPv4 address on mc0 so multicast sent there has a source; it exists only inside this namespace.
_NETWORK = (
    ("link", "set", "lo", "up"),
    ("link", "add", "mc0", "type", "veth", "peer", "name", "mc1"),
    ("link", "set", "mc1", "up"),
    ("link", "set", "mc0", "up"),
    ("addr", "add", "198.18.0.1/24", "dev", "mc0"),
    ("route", "add", "224.0.0.0/4", "dev", "mc0"),
    ("-6", "route", "add", "multicast", "ff00::/8", "dev", "mc0", "table", "local", "metric", "1"),
)
SUITES = {"legacy": "twisted.test.test_udp", "builder": "twisted.internet.test.test_udp"}


def unavailable() -> str | None:
    """Why the suites cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return "needs root to make a network namespace (unshare --net)"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool!r} (util-linux / iproute2)"
    return None


def _configure_namespace() -> None:
    # Refuse to touch a network that is not a fresh namespace of our own: only "lo" may exist here.
    links = [name for _, name in socket.if_nameindex()]
    if links != ["lo"]:
        raise SystemExit(f"refusing to configure the network: expected a fresh namespace, found links {links}")
    # No duplicate address detection: IPv6 link-local addresses are usable at once instead of after ~1 s.
    for scope in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{scope}/accept_dad", "w", encoding="ascii") as knob:
            knob.write("0")
    for command in _NETWORK:
        subprocess.run(["ip", *command], check=True, capture_output=True, timeout=30)


def _trial(arguments: list[str]) -> int:
    """Run trial in this process with a throwaway ``_trial_temp``; return its exit status."""
    from twisted.scripts.trial import run  # after the reactor choice

    with tempfile.TemporaryDirectory(prefix="udpio-trial-") as scratch:
        sys.argv = ["trial", f"--temp-directory={os.path.join(scratch, '_trial_temp')}", *arguments]
        try:
            run()
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def _loop_kind() -> str | None:
    return os.environ.get("UDPIO_LOOP") or None


def UdpioReactor(case: Any) -> Any:  # the name becomes the test classes' "UdpioReactorTests"
    """ReactorBuilder's factory: a new udpio reactor on a new loop, closed when the test ends."""
    from udpio.compat import UdpioReactor as Reactor

    from udpio import new_event_loop

    loop = new_event_loop(_loop_kind())
    case.addCleanup(loop.close)
    return Reactor(loop)


def _run_builder(trial_options: list[str]) -> int:
    from twisted.internet.test import reactormixins
    from udpio.compat import install

    install(loop=_loop_kind())  # trial's own reactor: udpio too
    # makeTestCaseClasses() reads this list when the test module is imported, below: udpio only.
    reactormixins.ReactorBuilder._reactors = [f"{__name__}.UdpioReactor"]
    return _trial([*trial_options, SUITES["builder"]])


def _run_legacy(trial_options: list[str]) -> int:
    # Nothing added to sys.path: the plugin must come from the installed udpio (wheel or editable), as it does
    # for a user's trial. .ci/check_package runs this with a wheel's interpreter to test exactly that.
    return _trial(["--reactor=udpio", *trial_options, SUITES["legacy"]])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run_twisted_udp_suite.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default=None)
    parser.add_argument(_INSIDE_FLAG, action="store_true", help=argparse.SUPPRESS)
    args, trial_options = parser.parse_known_args(argv)
    if args.loop is not None:
        os.environ["UDPIO_LOOP"] = args.loop  # read by the plugin's install() and by the builder's factory
    if not args.inside_netns:
        reason = unavailable()
        if reason is not None:
            print(f"UNAVAILABLE: {reason}", flush=True)
            return EXIT_UNAVAILABLE
        command = ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__), *argv, _INSIDE_FLAG]
        os.execvp(command[0], command)  # the namespace lives exactly as long as this process
    _configure_namespace()
    status = _run_builder(trial_options) if args.suite == "builder" else _run_legacy(trial_options)
    from twisted.internet import reactor  # the one trial ran on

    # Proof for whoever reads the output (and for tests/test_compat_reactor.py) of what really ran.
    print(f"global reactor: {reactor!r}", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
