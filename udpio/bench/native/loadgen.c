/* udpio.bench's C load generator: the clients a Python generator cannot be fast enough to be.
 *
 *   loadgen echo  --port P [--host 127.0.0.1] --sockets N --inflight K --size S --warmup W --duration D
 *   loadgen flood --port P [--host 127.0.0.1] --size S --warmup W --duration D
 *
 * echo: N client sockets, each bound to its own port on 127.0.0.1 and connected to the server, each keeping
 *   K requests in flight: the many-peer workload (N=256, K=4: datagrams from unrelated peers, which the
 *   kernel never coalesces) and the request/response workload (N=1, K=1). One epoll(7) set over the
 *   sockets, level-triggered; per ready socket one recvmmsg(2) of what is queued and one sendmmsg(2) of as
 *   many new requests. Each request carries (socket, epoch, send time) in its first 16 bytes, so every reply
 *   gives a round-trip time (kept in a log-linear histogram: < 0.8 % error, fixed memory). A socket that
 *   hears nothing for a stall timeout (16 mean round trips, at least STALL_MIN_NS) counts what it had in
 *   flight as lost, starts a new epoch (later replies of the old one are "late" and ignored) and sends K new
 *   requests. K is the most a socket has in flight: a request dropped at the server's full receive queue
 *   leaves its socket one short until the socket falls silent and is refilled, so a server that cannot keep
 *   ~N*K datagrams queued (a default 208 KiB buffer holds 256 of 64 bytes) sees fewer in flight; the
 *   harness reports the mean actually in flight (rate x mean round trip, Little's law) and the loss.
 * flood: one socket, datagrams as fast as the kernel takes them: UDP GSO (udp(7) UDP_SEGMENT) sends up to
 *   GSO_SEGMENTS equal datagrams per message and sendmmsg BURST messages per call; where GSO is refused,
 *   plain sendmmsg of BATCH datagrams per call.
 *
 * Like the Python generator it prints JSON lines: "measure-start" and "measure-end" at the edges of the
 * measuring window (the harness snapshots the server then), then "result" with its figures and exits.
 * With "--parent-stdin 1" (the harness passes it) it also exits when its stdin reaches end-of-file: the
 * harness was killed outright, and no load may outlive it. Destinations are restricted to 127.0.0.0/8
 * (common.h): nothing leaves the machine.
 */
#include "common.h"

#include <netinet/udp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* udp(7), Linux >= 4.18; older C headers lack the name */
#endif

/* Datagrams per GSO message: udpio's own GSO_MAX_SEGMENTS (the kernel's UDP_MAX_SEGMENTS is 64 before
 * Linux 6.9, 128 since). */
#define GSO_SEGMENTS 64
/* GSO messages per sendmmsg call in the flood. */
#define BURST 8
/* Send buffer asked for (capped by net.core.wmem_max), as the Python generator does: a slow receiver's
 * surplus is dropped at its full queue, where the loss is visible, instead of slowing the sender. */
#define SOCKET_BUFFER (4 * 1024 * 1024)
/* Echo: the request header (socket index, epoch, send time); payloads shorter than this carry no header,
 * give no round-trip times and tell late replies only by count. */
#define HEADER 16
/* Echo: the stall timeout is STALL_RTTS mean round trips, never less than STALL_MIN_NS (a shared machine
 * pauses a process for milliseconds) nor more than STALL_MAX_NS. */
#define STALL_RTTS 16
#define STALL_MIN_NS 20000000ull
#define STALL_MAX_NS 1000000000ull
/* Echo: how often the sockets are scanned for stalls, and the longest epoll_wait (ms). */
#define SCAN_NS 5000000ull
#define WAIT_MS 2

/* How often the flood looks at its stdin for the end-of-file of a vanished harness. */
#define STDIN_CHECK_NS 10000000ull
/* The epoll tag of stdin in the echo loop (socket indexes are below 4096). */
#define STDIN_TAG UINT32_MAX

/* The harness is gone when stdin (a pipe from it) reads end-of-file or fails: then exit at once, quietly
 * (there is nobody to report to). Called when stdin is readable, or polled. */
static void exit_if_orphaned(void) {
    char scratch[256];
    ssize_t n = read(STDIN_FILENO, scratch, sizeof scratch);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) exit(1);
}

static void poll_stdin(void) {
    struct pollfd fd = {.fd = STDIN_FILENO, .events = POLLIN};
    if (poll(&fd, 1, 0) > 0) exit_if_orphaned();
}

/* -- the measuring window ------------------------------------------------------------------------------ */

struct window {
    uint64_t opens, closes; /* ns; closes is set when the window opens */
    double duration;
    int phase;              /* 0: warming up, 1: measuring, 2: done */
    double t0, t1, cpu0, cpu1, wait0, wait1;
};

static void window_open(struct window *w) {
    w->t0 = mono_s();
    w->cpu0 = cpu_s();
    w->wait0 = runq_wait_s();
    w->closes = now_ns() + (uint64_t)(w->duration * 1e9);
    w->phase = 1;
    emit("{\"event\": \"measure-start\", \"t\": %.9f}", w->t0);
}

static void window_close(struct window *w) {
    w->t1 = mono_s();
    w->cpu1 = cpu_s();
    w->wait1 = runq_wait_s();
    w->phase = 2;
    emit("{\"event\": \"measure-end\", \"t\": %.9f}", w->t1);
}

/* Moves the window along; returns 1 when it changed phase (the caller reads its counters then). */
static int window_tick(struct window *w, uint64_t now) {
    if (w->phase == 0 && now >= w->opens) {
        window_open(w);
        return 1;
    }
    if (w->phase == 1 && now >= w->closes) {
        window_close(w);
        return 1;
    }
    return 0;
}

/* The window's own fields of the result line (no braces): elapsed, CPU and run-queue wait shares. */
static void window_fields(const struct window *w, char *out, size_t size) {
    double elapsed = w->t1 - w->t0;
    double wait = (w->wait0 >= 0 && w->wait1 >= 0 && elapsed > 0) ? (w->wait1 - w->wait0) / elapsed : 0.0;
    snprintf(out, size,
             "\"window_s\": %.9f, \"t0\": %.9f, \"t1\": %.9f, \"generator_cpu\": %.6f, \"generator_wait\": %.6f",
             elapsed, w->t0, w->t1, elapsed > 0 ? (w->cpu1 - w->cpu0) / elapsed : 0.0, wait);
}

/* -- round-trip times: a log-linear histogram ----------------------------------------------------------- */

/* Values below 2^(SUB_BITS+1) ns are kept exactly; above, each power of two is cut into 2^SUB_BITS buckets,
 * so a bucket is at most 1/128 of its value wide. 64-bit values need 256 + 56 * 128 buckets. */
#define SUB_BITS 7
#define SUB (1u << SUB_BITS)
#define EXACT (2u * SUB)
#define BUCKETS (EXACT + (64u - SUB_BITS - 1u) * SUB)

struct histogram {
    uint64_t counts[BUCKETS];
    uint64_t total, min, max;
    double sum;
};

static unsigned bucket_of(uint64_t v) {
    if (v < EXACT) return (unsigned)v;
    unsigned shift = (unsigned)(63 - __builtin_clzll(v)) - SUB_BITS;
    return EXACT + (shift - 1u) * SUB + (unsigned)((v >> shift) - SUB);
}

/* The middle of a bucket (its exact value below EXACT). */
static double bucket_value(unsigned index) {
    if (index < EXACT) return (double)index;
    unsigned k = index - EXACT, shift = k / SUB + 1u;
    uint64_t low = (uint64_t)(k % SUB + SUB) << shift;
    return (double)low + (double)(1ull << shift) / 2.0;
}

static void histogram_add(struct histogram *h, uint64_t v) {
    h->counts[bucket_of(v)]++;
    if (h->total == 0 || v < h->min) h->min = v;
    if (v > h->max) h->max = v;
    h->total++;
    h->sum += (double)v;
}

/* The value at quantile q as Python's sorted(values)[int(q * (n - 1))] would pick it (nearest rank below),
 * within the bucket's width. */
static double histogram_quantile(const struct histogram *h, double q) {
    uint64_t rank = (uint64_t)(q * (double)(h->total - 1)) + 1, seen = 0;
    for (unsigned i = 0; i < BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            double v = bucket_value(i);
            return v < (double)h->min ? (double)h->min : v > (double)h->max ? (double)h->max : v;
        }
    }
    return (double)h->max;
}

/* -- echo: N sockets, K requests in flight on each ------------------------------------------------------ */

struct peer {
    int fd;
    uint32_t epoch;
    int inflight;
    uint64_t last; /* ns: last reply, or last (re)fill */
};

struct header {
    uint32_t socket, epoch;
    uint64_t sent;
};

struct echo_state {
    struct peer *peers;
    int sockets, inflight;
    size_t size;
    int tagged;
    struct mmsghdr tx[BATCH], rx[BATCH];
    struct iovec txv[BATCH], rxv[BATCH];
    char *txbuf, *rxbuf;
    size_t rxslot;
    uint64_t sent, replies, lost, late, send_errors, recv_errors;
    double rtt_mean; /* ns, moving average over every reply, warm-up included */
    struct histogram *rtts;
    int measuring;
};

/* Sends up to `count` requests on peer `index`; those the kernel refused are retried after a stall. */
static void send_requests(struct echo_state *s, int index, int count, uint64_t now) {
    struct peer *p = &s->peers[index];
    while (count > 0) {
        int n = count < BATCH ? count : BATCH;
        for (int i = 0; i < n && s->tagged; i++) {
            struct header h = {(uint32_t)index, p->epoch, now};
            memcpy(s->txbuf + (size_t)i * s->size, &h, sizeof h);
        }
        int sent = sendmmsg(p->fd, s->tx, (unsigned)n, MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EINTR) continue;
            /* EAGAIN/ENOBUFS (a full send queue) or ECONNREFUSED (an ICMP error from an earlier send, e.g.
             * before the server bound): nothing went; the stall scan refills this socket later. */
            s->send_errors++;
            return;
        }
        p->inflight += sent;
        s->sent += (uint64_t)sent;
        if (sent < n) return;
        count -= n;
    }
}

static void read_replies(struct echo_state *s, int index) {
    struct peer *p = &s->peers[index];
    for (int i = 0; i < BATCH; i++) s->rxv[i].iov_len = s->rxslot;
    int n = recvmmsg(p->fd, s->rx, BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        if (errno == ECONNREFUSED) { /* the server's port was closed when a request arrived: counted */
            s->recv_errors++;
            return;
        }
        fail("recvmmsg");
    }
    uint64_t now = now_ns();
    int fresh = 0;
    for (int i = 0; i < n; i++) {
        if (s->tagged) {
            struct header h;
            if (s->rx[i].msg_len < HEADER) {
                s->late++;
                continue;
            }
            memcpy(&h, s->rxbuf + (size_t)i * s->rxslot, sizeof h);
            if (h.socket != (uint32_t)index || h.epoch != p->epoch || h.sent > now) {
                s->late++; /* a reply to a request already counted as lost (or not ours) */
                continue;
            }
            uint64_t rtt = now - h.sent;
            s->rtt_mean += ((double)rtt - s->rtt_mean) / 64.0;
            if (s->measuring) histogram_add(s->rtts, rtt);
        } else if (fresh >= p->inflight) {
            s->late++;
            continue;
        }
        fresh++;
    }
    if (fresh == 0) return;
    p->inflight -= fresh;
    p->last = now;
    s->replies += (uint64_t)fresh;
    send_requests(s, index, fresh, now);
}

static void scan_stalls(struct echo_state *s, uint64_t now) {
    uint64_t stall = (uint64_t)(STALL_RTTS * s->rtt_mean);
    stall = stall < STALL_MIN_NS ? STALL_MIN_NS : stall > STALL_MAX_NS ? STALL_MAX_NS : stall;
    for (int i = 0; i < s->sockets; i++) {
        struct peer *p = &s->peers[i];
        if (now - p->last < stall) continue;
        s->lost += (uint64_t)p->inflight;
        p->inflight = 0;
        p->epoch++;
        p->last = now;
        send_requests(s, i, s->inflight, now);
    }
}

static int run_echo(int argc, char **argv) {
    const char *host = "127.0.0.1";
    double port = 0, sockets = 256, inflight = 4, size = 64, warmup = 0.25, duration = 1.0, parent = 0;
    const struct option_spec specs[] = {
        {"--port", &port, 1, 65535},         {"--sockets", &sockets, 1, 4096}, {"--inflight", &inflight, 1, 1024},
        {"--size", &size, 0, MAX_PAYLOAD},   {"--warmup", &warmup, 0, 3600},   {"--duration", &duration, 0.001, 3600},
        {"--parent-stdin", &parent, 0, 1},   {NULL, NULL, 0, 0},
    };
    parse_options("loadgen echo", argc, argv, &host, specs);
    struct sockaddr_in server = loopback_address("loadgen echo", host, (int)port);
    struct sockaddr_in local = loopback_address("loadgen echo", host, 0);

    static struct echo_state s;
    s.sockets = (int)sockets;
    s.inflight = (int)inflight;
    s.size = (size_t)size;
    s.tagged = s.size >= HEADER;
    s.rxslot = s.size + 1; /* one byte more than a request: a longer reply shows as such, not truncated */
    s.rtts = calloc(1, sizeof *s.rtts);
    s.peers = calloc((size_t)s.sockets, sizeof *s.peers);
    s.txbuf = calloc(BATCH, s.size ? s.size : 1);
    s.rxbuf = calloc(BATCH, s.rxslot);
    if (!s.rtts || !s.peers || !s.txbuf || !s.rxbuf) fail("calloc");
    for (int i = 0; i < BATCH; i++) {
        s.txv[i] = (struct iovec){s.txbuf + (size_t)i * s.size, s.size};
        s.tx[i].msg_hdr = (struct msghdr){.msg_iov = &s.txv[i], .msg_iovlen = 1};
        s.rxv[i] = (struct iovec){s.rxbuf + (size_t)i * s.rxslot, s.rxslot};
        s.rx[i].msg_hdr = (struct msghdr){.msg_iov = &s.rxv[i], .msg_iovlen = 1};
    }

    int ep = epoll_create1(0);
    if (ep < 0) fail("epoll_create1");
    for (int i = 0; i < s.sockets; i++) {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fd < 0) fail("socket");
        /* Its own port on the loopback address, then connected: the server sees N distinct peers, and
         * each socket only hears its own replies (and the ICMP errors of its own requests). */
        if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) fail("bind");
        if (connect(fd, (struct sockaddr *)&server, sizeof server) < 0) fail("connect");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) fail("epoll_ctl");
        s.peers[i].fd = fd;
    }
    if (parent) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, STDIN_FILENO, &ev) < 0) fail("epoll_ctl(stdin)");
    }

    struct window w = {.duration = duration};
    uint64_t start = now_ns();
    w.opens = start + (uint64_t)(warmup * 1e9);
    uint64_t replies0 = 0, sent0 = 0, lost0 = 0, late0 = 0;
    for (int i = 0; i < s.sockets; i++) {
        s.peers[i].last = start;
        send_requests(&s, i, s.inflight, start);
    }
    int capacity = s.sockets + 1;
    struct epoll_event *events = calloc((size_t)capacity, sizeof *events);
    if (events == NULL) fail("calloc");
    uint64_t next_scan = start + SCAN_NS;
    while (w.phase < 2) {
        int n = epoll_wait(ep, events, capacity, WAIT_MS);
        if (n < 0 && errno != EINTR) fail("epoll_wait");
        for (int i = 0; i < n; i++) {
            if (events[i].data.u32 == STDIN_TAG)
                exit_if_orphaned();
            else
                read_replies(&s, (int)events[i].data.u32);
        }
        uint64_t now = now_ns();
        if (now >= next_scan) {
            scan_stalls(&s, now);
            next_scan = now + SCAN_NS;
        }
        if (window_tick(&w, now)) {
            if (w.phase == 1) {
                replies0 = s.replies, sent0 = s.sent, lost0 = s.lost, late0 = s.late;
                s.measuring = 1;
            } else {
                s.measuring = 0;
            }
        }
    }
    uint64_t replies = s.replies - replies0;
    char common[512];
    window_fields(&w, common, sizeof common);
    double elapsed = w.t1 - w.t0;
    char rtt[512] = "";
    if (s.rtts->total > 0)
        snprintf(rtt, sizeof rtt,
                 ", \"rtt_min_us\": %.3f, \"rtt_p50_us\": %.3f, \"rtt_p90_us\": %.3f, \"rtt_p99_us\": %.3f, "
                 "\"rtt_max_us\": %.3f, \"rtt_mean_us\": %.3f, \"rtt_samples\": %llu",
                 (double)s.rtts->min / 1e3, histogram_quantile(s.rtts, 0.50) / 1e3,
                 histogram_quantile(s.rtts, 0.90) / 1e3, histogram_quantile(s.rtts, 0.99) / 1e3,
                 (double)s.rtts->max / 1e3, s.rtts->sum / (double)s.rtts->total / 1e3,
                 (unsigned long long)s.rtts->total);
    emit("{\"event\": \"result\", \"replies\": %llu, \"replies_per_s\": %.3f, \"sent\": %llu, \"lost\": %llu, "
         "\"late\": %llu, \"sockets\": %d, \"inflight\": %d, \"send_errors\": %llu, \"recv_errors\": %llu, %s%s}",
         (unsigned long long)replies, elapsed > 0 ? (double)replies / elapsed : 0.0,
         (unsigned long long)(s.sent - sent0), (unsigned long long)(s.lost - lost0),
         (unsigned long long)(s.late - late0), s.sockets, s.inflight, (unsigned long long)s.send_errors,
         (unsigned long long)s.recv_errors, common, rtt);
    for (int i = 0; i < s.sockets; i++) close(s.peers[i].fd);
    close(ep);
    return 0;
}

/* -- flood: as fast as the kernel takes it ------------------------------------------------------------- */

static int run_flood(int argc, char **argv) {
    const char *host = "127.0.0.1";
    double port = 0, size = 64, warmup = 0.25, duration = 1.0, parent = 0;
    const struct option_spec specs[] = {
        {"--port", &port, 1, 65535},     {"--size", &size, 0, MAX_PAYLOAD},
        {"--warmup", &warmup, 0, 3600},  {"--duration", &duration, 0.001, 3600},
        {"--parent-stdin", &parent, 0, 1}, {NULL, NULL, 0, 0},
    };
    parse_options("loadgen flood", argc, argv, &host, specs);
    struct sockaddr_in server = loopback_address("loadgen flood", host, (int)port);
    size_t n = (size_t)size;

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) fail("socket");
    int buffer = SOCKET_BUFFER;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer); /* best effort: capped anyway */
    /* A blocking socket (the kernel paces us when the send queue is full), but never for long: the window
     * edges must be seen on time even if the receiver's side stalls. */
    struct timeval timeout = {0, 100000};
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    if (connect(fd, (struct sockaddr *)&server, sizeof server) < 0) fail("connect");

    /* GSO: segments of n bytes, as many per message as fit in one UDP datagram and GSO_SEGMENTS. */
    int segments = n > 0 ? (int)(MAX_PAYLOAD / n) : 0;
    segments = segments > GSO_SEGMENTS ? GSO_SEGMENTS : segments;
    int gso = 0;
    if (segments >= 2) {
        int segment = (int)n;
        gso = setsockopt(fd, SOL_UDP, UDP_SEGMENT, &segment, sizeof segment) == 0;
    }
    if (!gso) segments = 1;
    int messages = gso ? BURST : BATCH;
    size_t length = n * (size_t)segments;
    char *payload = calloc(1, length ? length : 1);
    struct mmsghdr *msgs = calloc((size_t)messages, sizeof *msgs);
    struct iovec iov = {payload, length};
    if (payload == NULL || msgs == NULL) fail("calloc");
    for (int i = 0; i < messages; i++) msgs[i].msg_hdr = (struct msghdr){.msg_iov = &iov, .msg_iovlen = 1};

    struct window w = {.duration = duration};
    w.opens = now_ns() + (uint64_t)(warmup * 1e9);
    uint64_t sent = 0, sent0 = 0, send_errors = 0, paced = 0, next_check = 0;
    while (w.phase < 2) {
        int k = sendmmsg(fd, msgs, (unsigned)messages, 0);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
                paced++; /* the send timeout expired with the queue still full */
            else if (errno == ECONNREFUSED)
                send_errors++; /* ICMP port unreachable from an earlier send: no server yet, or any more */
            else if (errno != EINTR)
                fail("sendmmsg");
        } else {
            sent += (uint64_t)k * (uint64_t)segments;
        }
        uint64_t now = now_ns();
        if (window_tick(&w, now) && w.phase == 1) sent0 = sent;
        if (parent && now >= next_check) {
            poll_stdin();
            next_check = now + STDIN_CHECK_NS;
        }
    }
    char common[512];
    window_fields(&w, common, sizeof common);
    double elapsed = w.t1 - w.t0;
    emit("{\"event\": \"result\", \"sent\": %llu, \"sent_per_s\": %.3f, \"gso\": %s, \"segments\": %d, "
         "\"send_errors\": %llu, \"pauses\": %llu, %s}",
         (unsigned long long)(sent - sent0), elapsed > 0 ? (double)(sent - sent0) / elapsed : 0.0,
         gso ? "true" : "false", segments, (unsigned long long)send_errors, (unsigned long long)paced, common);
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "echo") == 0) return run_echo(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "flood") == 0) return run_flood(argc - 2, argv + 2);
    usage_error("loadgen", "the first argument must be echo or flood", argc >= 2 ? argv[1] : NULL);
    return 2;
}
