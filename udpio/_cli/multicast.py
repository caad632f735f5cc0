"""``udpio multicast``: join a group, optionally send to it, print what arrives, answer Notify.

The tutorial's scenario from two shells (the sender binds its own port, so the answers come back to it)::

    udpio multicast 239.255.0.1 8001 --answer                      # a member
    udpio multicast 239.255.0.1 8001 --notify --local-port 0 -c 1  # sends Notify, prints the Acknowledge

Multicast goes out of ``--interface`` only (default ``lo``: nothing leaves the host). ``--answer`` answers
through the member's :class:`~udpio.SafetyPolicy` (``udpio._notify.notify_policy``), as ``NotifyProtocol``
does: a forged Notify cannot turn the member into an amplifier.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from .. import _sockopts
from .._addr import Address, format_address
from .._interfaces import InterfaceSpec
from .._loop import wait_within
from .._multicast import DEFAULT_INTERFACE, MulticastEndpoint, open_multicast
from .._notify import NotifyLogic
from . import count, err, payload_of, seconds
from .listen import render

#: The tutorial's port; the group is an organisation-local one (RFC 2365), never the all-hosts 224.0.0.1
#: the tutorial used (every host on a link is in it).
DEFAULT_GROUP = "239.255.0.1"
DEFAULT_PORT = 8001


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "multicast", help="join a multicast group, send to it, print what arrives",
        description="Join GROUP on an interface (default lo), send messages to GROUP:PORT, print each "
        "datagram that arrives; --answer makes this a Notify/Acknowledge member.",
    )
    parser.add_argument("group", nargs="?", default=DEFAULT_GROUP, help=f"group address (default {DEFAULT_GROUP})")
    parser.add_argument("port", nargs="?", type=int, default=DEFAULT_PORT, help=f"UDP port (default {DEFAULT_PORT})")
    parser.add_argument(
        "-i", "--interface", default=DEFAULT_INTERFACE,
        type=_interface,
        help=f"interface name, index (all digits) or address to join and send on (default {DEFAULT_INTERFACE})",
    )
    parser.add_argument("--source", default=None, help="join source-specifically: receive only from SOURCE")
    parser.add_argument("--bind", default=None, metavar="HOST", help="address to bind (default the wildcard)")
    parser.add_argument(
        "--local-port", type=int, default=None, metavar="N",
        help="port to bind (default PORT; 0: any, for a sender that wants the answers to itself)",
    )
    parser.add_argument("--send", action="append", default=[], metavar="MESSAGE", help="send MESSAGE to the group")
    parser.add_argument("--notify", action="store_true", help='send b"Notify" to the group and count Acknowledges')
    parser.add_argument("--answer", action="store_true", help='answer b"Notify" with b"Acknowledge" to its sender')
    parser.add_argument("--hex", action="store_true", help="print payloads as hex")
    parser.add_argument("-c", "--count", type=count, default=0, help="stop after N datagrams (0: never)")
    parser.add_argument(
        "--timeout", type=seconds(zero=True), default=0.0, metavar="SECONDS", help="stop after SECONDS (0: never)"
    )
    parser.add_argument("--ttl", type=int, default=1, help="multicast TTL / hop limit (default 1)")
    parser.add_argument("--no-loopback", action="store_true", help="do not deliver own sends to this host")
    parser.add_argument("--listen-multiple", action="store_true", help="share the port (SO_REUSEADDR/SO_REUSEPORT)")
    parser.set_defaults(func=run)


def _interface(text: str) -> InterfaceSpec:
    """``-i 1`` is interface index 1, as documented; other text is a name or an address."""
    return int(text) if text.isascii() and text.isdigit() else text


async def _receive(ep: MulticastEndpoint, args: argparse.Namespace, logic: NotifyLogic, tally: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    async for data, addr in ep:
        tally["received"] += 1
        print(f"{format_address(addr)}\t{len(data)}\t{render(data, args.hex)}", flush=True)
        step = logic.feed(data, addr, loop.time())
        for payload, to in step.sends:
            await ep.send(payload, to)
            err(f"udpio multicast: answered Notify from {format_address(to)}")
        if args.count and tally["received"] >= args.count:
            return


async def run(args: argparse.Namespace) -> int:
    local_port = args.port if args.local_port is None else args.local_port
    logic = NotifyLogic(answer=args.answer)  # the member's default policy
    tally = {"received": 0, "sent": 0}
    ep = await open_multicast(
        local_port,
        group=args.group,
        interface=args.interface,
        source=args.source,
        host=args.bind,
        listen_multiple=args.listen_multiple,
        ttl=args.ttl,
        loopback=not args.no_loopback,
    )
    membership = next(iter(ep.multicast.groups))
    target: Address = (membership.group, args.port)
    logic.bind(ep.local_address, dual_stack=_sockopts.is_dual_stack(ep.transport.get_extra_info("socket")))
    try:
        where = f"{membership.group} on {membership.interface.name}"
        if membership.source is not None:
            where += f" from {membership.source}"
        err(f"udpio multicast: joined {where}, listening on port {ep.local_address[1]}")
        loop = asyncio.get_running_loop()
        messages = [payload_of(m) for m in args.send]
        if args.notify:
            messages += [payload for payload, _ in logic.notify(target, loop.time()).sends]
        for message in messages:
            await ep.send(message, target)
            tally["sent"] += 1
        receiving = _receive(ep, args, logic, tally)
        if args.timeout > 0:
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await wait_within(receiving, args.timeout)
        else:
            await receiving
    finally:
        ep.close()
        sent = f"{tally['sent']} sent to {format_address(target)}, " if tally["sent"] else ""
        refused = f" ({logic.refused} refused by the policy)" if logic.refused else ""
        err(
            f"udpio multicast: {sent}{tally['received']} received, {logic.acknowledges_sent} Notify answered{refused}, "
            f"{logic.acknowledgements} Acknowledge received, {ep.counters.dropped} dropped; left {membership.group}"
        )
        await ep.wait_closed()
    sys.stdout.flush()
    if args.notify and not logic.acknowledgements:
        return 1
    return 0
