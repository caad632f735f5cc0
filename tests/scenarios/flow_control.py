"""Flow-control scenario, run inside a network namespace whose ``lo`` is rate-limited by a tbf qdisc.

On a plain loopback the kernel hands each datagram to the receiver at once, so a sender's buffer never
fills; behind a slow qdisc the socket's send buffer does fill (EAGAIN), which is what exercises udpio's
write buffer, ``pause_writing``/``resume_writing`` and the hard-limit drop counter. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys

import udpio


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.count = 0
        self.all_in: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.expected = -1

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.count += 1
        if self.count == self.expected and not self.all_in.done():
            self.all_in.set_result(None)


class Sender(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.resumed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")
        if not self.resumed.done():
            self.resumed.set_result(None)


async def main() -> dict[str, object]:
    sink_t, sink = await udpio.listen(Sink, "127.0.0.1", 0, rcvbuf=1 << 20)
    # A minimal send buffer (the kernel rounds it up to ~4.6 KiB): two 1000-byte datagrams fill it.
    sender_t, sender = await udpio.listen(Sender, "127.0.0.1", 0, sndbuf=1024, buffer_limit=20_000)
    sender_t.set_write_buffer_limits(high=8_000, low=2_000)
    dest = sink_t.get_extra_info("sockname")
    total = 40  # 40 KB: more than the 20 KB hard limit, so some must be dropped
    for _ in range(total):
        sender_t.sendto(b"d" * 1000, dest)
    buffered_peak = sender_t.get_write_buffer_size()
    dropped = sender_t.counters.dropped_send_buffer
    await asyncio.wait_for(sender.resumed, 30)
    sink.expected = total - dropped
    if sink.count < sink.expected:
        await asyncio.wait_for(sink.all_in, 30)
    result = {
        "loop": udpio.loop_kind(),
        "events": sender.events,
        "buffered_peak": buffered_peak,
        "dropped_send_buffer": dropped,
        "sent": sender_t.counters.datagrams_out,
        "received": sink.count,
        "buffer_after": sender_t.get_write_buffer_size(),
    }
    # close() sends what is buffered before connection_lost; abort() drops it and counts it.
    buffered = 0
    for _ in range(5):
        sender_t.sendto(b"c" * 1000, dest)
    buffered = sender_t.get_write_buffer_size() // 1000  # datagrams of 1000 bytes
    before = sink.count
    sink.expected = before + 5
    sink.all_in = asyncio.get_running_loop().create_future()
    sender_t.close()
    await asyncio.wait_for(sink.all_in, 30)
    result["close_flushed"] = sink.count - before
    result["close_had_buffered"] = buffered

    abort_t, _ = await udpio.listen(Sender, "127.0.0.1", 0, sndbuf=1024)
    for _ in range(10):
        abort_t.sendto(b"a" * 1000, dest)
    pending = abort_t.get_write_buffer_size() // 1000
    abort_t.abort()
    result["abort_pending"] = pending
    result["abort_dropped_on_close"] = abort_t.counters.dropped_on_close
    sink_t.close()
    return result


if __name__ == "__main__":
    print(json.dumps(udpio.run(main(), loop=sys.argv[1])), flush=True)
