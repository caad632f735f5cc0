"""Load generators for the resilience tests, run as their own process (``python -m tests._flood MODE ...``)
so the sender never competes with the server under test for the GIL.

Every mode prints one JSON line when its sending is over, then (``--drain``) waits for a line on stdin,
reads every reply that is waiting on its socket and prints a second JSON line with what it received and what
the kernel dropped on its socket. Destinations are loopback or a loopback multicast group only.

* ``garbage``: random sizes 0..65507 and random bytes, at full speed, for ``--duration`` seconds;
* ``steady``: ``--rate`` datagrams/s of ``--size`` bytes, paced, for ``--duration`` seconds;
* ``sources``: like ``steady`` but each datagram from another source address of 127.0.0.0/8 (a raw socket
  with IP_HDRINCL writes the IP header; needs root), to fill a server's per-source state.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import time

from udpio._counters import proc_net_drops

MAX_IPV4_PAYLOAD = 65507
#: ``IP_MULTICAST_IF`` / ``IP_MULTICAST_TTL``: group floods leave by lo (127.0.0.1) only.
LOOPBACK_INTERFACE = socket.inet_aton("127.0.0.1")


def _udp_socket(dest: str, rcvbuf: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    if socket.inet_aton(dest)[0] >= 224:  # a multicast group: out of lo only, one hop
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, LOOPBACK_INTERFACE)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    return sock


def garbage(sock: socket.socket, dest: tuple[str, int], duration: float, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    pool = os.urandom(MAX_IPV4_PAYLOAD * 2)
    sent = nbytes = failed = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        for _ in range(64):
            size = rng.randint(0, MAX_IPV4_PAYLOAD)
            start = rng.randint(0, MAX_IPV4_PAYLOAD)
            try:
                sock.sendto(pool[start : start + size], dest)
            except OSError:  # ENOBUFS and the like: not sent, so not expected anywhere
                failed += 1
                continue
            sent += 1
            nbytes += size
    return {"sent": sent, "bytes": nbytes, "failed": failed}


def steady(sock: socket.socket, dest: tuple[str, int], duration: float, rate: float, size: int) -> dict[str, int]:
    payload = os.urandom(size)
    sent = 0
    start = time.monotonic()
    end = start + duration
    while (now := time.monotonic()) < end:
        due = int((now - start) * rate)
        while sent < due:
            sock.sendto(payload, dest)
            sent += 1
        # Pacing on purpose: this generator offers a steady rate.
        time.sleep(min(0.005, max(0.0, end - now)))
    return {"sent": sent, "bytes": sent * size, "failed": 0}


def sources(dest: tuple[str, int], duration: float, rate: float, size: int, seed: int) -> dict[str, int]:
    """Datagrams from ever new 127/8 source addresses: IP header written here (ip(7) IP_HDRINCL; the kernel
    fills in the IP checksum, total length and id), UDP checksum 0 (none, RFC 768)."""
    rng = random.Random(seed)
    payload = os.urandom(size)
    dst = socket.inet_aton(dest[0])
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        start = time.monotonic()
        end = start + duration
        while (now := time.monotonic()) < end:
            due = int((now - start) * rate)
            while sent < due:
                src = bytes((127, rng.randint(1, 254), rng.randint(0, 255), rng.randint(1, 254)))
                udp = struct.pack("!HHHH", rng.randint(1024, 65535), dest[1], 8 + size, 0) + payload
                ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0, src, dst)
                raw.sendto(ip + udp, (dest[0], 0))
                sent += 1
            # Pacing on purpose: a steady rate.
            time.sleep(min(0.005, max(0.0, end - now)))
    return {"sent": sent, "bytes": sent * size, "failed": 0}


def drain(sock: socket.socket) -> dict[str, int]:
    sock.setblocking(False)
    received = 0
    try:
        while True:
            sock.recvfrom(70000)
            received += 1
    except BlockingIOError:
        pass
    return {"received": received, "kernel_drops": proc_net_drops(sock) or 0}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["garbage", "steady", "sources"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rcvbuf", type=int, default=None)
    parser.add_argument("--drain", action="store_true")
    args = parser.parse_args(argv)
    dest = (args.host, args.port)
    assert args.host.startswith("127.") or socket.inet_aton(args.host)[0] >= 224  # never off the machine
    if args.mode == "sources":
        print(json.dumps(sources(dest, args.duration, args.rate, args.size, args.seed)), flush=True)
        return 0
    with _udp_socket(args.host, args.rcvbuf) as sock:
        if args.mode == "garbage":
            report = garbage(sock, dest, args.duration, args.seed)
        else:
            report = steady(sock, dest, args.duration, args.rate, args.size)
        print(json.dumps(report), flush=True)
        if args.drain:
            sys.stdin.readline()
            print(json.dumps(drain(sock)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
