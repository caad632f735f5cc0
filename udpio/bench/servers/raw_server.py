"""A blocking-socket loop in plain Python: the floor for "no framework" (one ``recv`` call per datagram).

Multicast: one blocking thread per member socket, which is how a program without an event loop serves
several sockets (they share the GIL, as they would there too).
"""

from __future__ import annotations

import socket
import threading

import _common


class State:
    __slots__ = ("running",)

    def __init__(self) -> None:
        self.running = True


def sink_loop(sock: socket.socket, count: _common.Count, state: State) -> None:
    buffer = bytearray(_common.RECV_SIZE)
    recv_into = sock.recv_into
    while state.running:
        recv_into(buffer)
        count.received += 1


def echo_loop(sock: socket.socket, count: _common.Count, state: State) -> None:
    recvfrom = sock.recvfrom
    sendto = sock.sendto
    size = _common.RECV_SIZE
    while True:
        data, addr = recvfrom(size)
        if not state.running:
            break
        count.received += 1
        sendto(data, addr)


def main() -> None:
    args = _common.parser(__doc__ or "").parse_args()
    state = State()
    if args.workload == "multicast":
        socks = _common.multicast_members(args.group, args.members)
        rcvbuf = _common.set_rcvbuf(socks[0], None)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rcvbuf = _common.set_rcvbuf(sock, args.rcvbuf)
            sock.bind((_common.HOST, 0))
        except BaseException:
            sock.close()
            raise
        socks = [sock]
    try:
        counts = [_common.Count() for _ in socks]
        port = socks[0].getsockname()[1]
        loop = echo_loop if args.workload == "echo" else sink_loop

        def stop() -> None:
            state.running = False
            # Each blocked recv needs a datagram to return and see the flag. For multicast members the
            # wake-up goes to the group: sent from loopback with TTL 0 it never leaves the machine.
            for _ in socks:
                if args.workload == "multicast":
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
                        waker.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
                        waker.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(_common.HOST))
                        waker.sendto(b"", (args.group, port))
                    break  # one datagram to the group reaches every member
                _common.wake(port)

        _common.emit("ready", port=port, transport="blocking socket", rcvbuf=rcvbuf)
        _common.serve_control(counts, stop)
        threads = [
            threading.Thread(target=loop, args=(s, c, state), name=f"member-{i}", daemon=True)
            for i, (s, c) in enumerate(zip(socks, counts, strict=True))
        ]
        for thread in threads[1:]:
            thread.start()
        loop(socks[0], counts[0], state)
        for thread in threads[1:]:
            thread.join(timeout=2.0)
    finally:
        for s in socks:
            s.close()
    _common.emit("final", **_common.snapshot(counts))


if __name__ == "__main__":
    main()
