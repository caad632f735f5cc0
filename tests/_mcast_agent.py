"""A multicast endpoint driven line by line, for the namespace tests (run with ``ip netns exec NS python ...``).

Reads JSON commands on stdin, writes JSON events on stdout, one per line, flushed::

    {"op": "open", "port": 5000, "interface": "eth0", "host": null, "ttl": 1, "loopback": true}  -> opened
    {"op": "join", "group": "239.1.2.3", "source": null}                                         -> joined
    {"op": "leave", "group": "239.1.2.3", "source": null}                                        -> left
    {"op": "send", "data": "hello", "to": ["239.1.2.3", 5000]}                                   -> sent
    {"op": "set", "ttl": 0, "loopback": false}                                                   -> set
    {"op": "quit"}                                                                               -> closed

and ``{"event": "datagram", "data": ..., "from": ...}`` for each datagram, ``{"event": "error", ...}`` when
a command fails. The process pins itself to one CPU: two datagrams it sends back to back then pass through
the same CPU's receive backlog in the kernel and cannot overtake each other, which the tests' "nothing
before the marker" checks rely on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from typing import Any

import udpio


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        emit("datagram", data=data.decode(errors="replace"), sender=addr[0])

    def error_received(self, exc: Exception) -> None:
        emit("network_error", message=str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def main(family: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport: Any = None
    protocol: Recorder | None = None
    emit("started", loop=udpio.loop_kind())
    while line := await reader.readline():
        command = json.loads(line)
        op = command.pop("op")
        try:
            if op == "open":
                transport, protocol = await udpio.listen_multicast(Recorder, family=family, **command)
                emit("opened", port=transport.get_extra_info("sockname")[1])
            elif op == "join":
                udpio.multicast(transport).join_group(command["group"], source=command.get("source"))
                emit("joined")
            elif op == "leave":
                udpio.multicast(transport).leave_group(command["group"], source=command.get("source"))
                emit("left")
            elif op == "send":
                transport.sendto(command["data"].encode(), tuple(command["to"]))
                emit("sent")
            elif op == "set":
                control = udpio.multicast(transport)
                for name, value in command.items():
                    setattr(control, name, value)
                emit("set", ttl=control.ttl, loopback=control.loopback)
            elif op == "quit":
                break
            else:
                emit("error", type="ValueError", message=f"unknown op {op!r}")
        except Exception as exc:
            emit("error", type=type(exc).__name__, message=str(exc))
    if transport is not None and protocol is not None:
        udpio.multicast(transport).close()
        await protocol.lost
    emit("closed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--loop", default="asyncio")
    parser.add_argument("--family", type=int, choices=(4, 6), default=4)
    args = parser.parse_args()
    udpio.run(main(socket.AF_INET if args.family == 4 else socket.AF_INET6), loop=args.loop)
