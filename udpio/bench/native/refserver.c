/* udpio.bench's C reference server (the "c-ref" row): what one core does with recvmmsg(2) + sendmmsg(2)
 * and no interpreter, the limit the Python rows' ratios are read against.
 *
 *   refserver --workload echo|sink [--rcvbuf BYTES]
 *
 * It speaks the same line protocol as the Python servers (udpio/bench/servers/_common.py): a "ready" line
 * with the port once bound to 127.0.0.1:0; then "snap" on stdin answered with the clock, CPU time and the
 * count received; "stop" or end of stdin ends it with a "final" line. The measured loop is a blocking
 * recvmmsg of up to BATCH datagrams (MSG_WAITFORONE: wait for the first, take what else is queued) and, for
 * echo, one sendmmsg of the same messages back to their senders. A second thread serves stdin, as the
 * Python servers' control thread does; it only reads the counter the main thread stores once per batch.
 */
#include "common.h"

#include <limits.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

/* Large enough for any IPv4 datagram (the Python servers receive 65536 bytes too). */
#define SLOT 65536

static uint64_t received;     /* written by the main thread once per batch, read by the control thread */
static uint64_t send_errors;  /* likewise: echo replies the kernel refused (counted, skipped) */
static int stopping;       /* set by the control thread; the main thread checks it after every receive */
static int server_port;

static void print_counts(const char *event) {
    double wait = runq_wait_s();
    char wait_text[32];
    if (wait < 0)
        snprintf(wait_text, sizeof wait_text, "null");
    else
        snprintf(wait_text, sizeof wait_text, "%.9f", wait);
    emit("{\"event\": \"%s\", \"t\": %.9f, \"cpu\": %.9f, \"runq_wait\": %s, \"received\": [%llu], "
         "\"send_errors\": %llu}",
         event, mono_s(), cpu_s(), wait_text, (unsigned long long)__atomic_load_n(&received, __ATOMIC_RELAXED),
         (unsigned long long)__atomic_load_n(&send_errors, __ATOMIC_RELAXED));
}

/* One empty datagram to our own socket, so a main thread blocked in recvmmsg sees the stop flag. */
static void wake(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) return;
    struct sockaddr_in self = loopback_address("refserver", "127.0.0.1", server_port);
    (void)sendto(fd, "", 0, 0, (struct sockaddr *)&self, sizeof self);
    close(fd);
}

static void *control(void *unused) {
    (void)unused;
    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (strncmp(line, "snap", 4) == 0)
            print_counts("snap");
        else if (strncmp(line, "stop", 4) == 0)
            break;
    }
    __atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
    wake();
    return NULL;
}

int main(int argc, char **argv) {
    const char *workload = NULL;
    int rcvbuf = 0; /* 0: the system's default (the Python servers' --rcvbuf likewise) */
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) usage_error("refserver", "option needs a value", argv[i]);
        if (strcmp(argv[i], "--workload") == 0)
            workload = argv[i + 1];
        else if (strcmp(argv[i], "--rcvbuf") == 0) {
            char *end = NULL;
            long value = strtol(argv[i + 1], &end, 10);
            if (end == argv[i + 1] || *end != '\0' || value < 1 || value > INT_MAX)
                usage_error("refserver", "value out of range", argv[i]);
            rcvbuf = (int)value;
        }
        else if (strcmp(argv[i], "--members") != 0 && strcmp(argv[i], "--group") != 0)
            usage_error("refserver", "unknown option", argv[i]);
    }
    if (workload == NULL) usage_error("refserver", "--workload is required", NULL);
    int echo = strcmp(workload, "echo") == 0;
    if (!echo && strcmp(workload, "sink") != 0) {
        emit("{\"event\": \"unavailable\", \"reason\": \"the C reference server serves the echo and sink "
             "workloads only\"}");
        return EXIT_UNAVAILABLE;
    }

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) fail("socket");
    /* socket(7): the kernel doubles the value and caps it at net.core.rmem_max; the ready line says what
     * it gave. */
    if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) < 0) fail("SO_RCVBUF");
    socklen_t rcvbuf_length = sizeof rcvbuf;
    if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &rcvbuf_length) < 0) fail("SO_RCVBUF");
    struct sockaddr_in local = loopback_address("refserver", "127.0.0.1", 0);
    if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) fail("bind");
    socklen_t length = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &length) < 0) fail("getsockname");
    server_port = ntohs(local.sin_port);

    static struct mmsghdr msgs[BATCH];
    static struct iovec iovs[BATCH];
    static struct sockaddr_storage peers[BATCH];
    char *buffers = malloc((size_t)BATCH * SLOT);
    if (buffers == NULL) fail("malloc");
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = buffers + (size_t)i * SLOT;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &peers[i];
    }

    emit("{\"event\": \"ready\", \"port\": %d, \"transport\": \"C recvmmsg/sendmmsg (blocking, %d per call)\", "
         "\"rcvbuf\": %d}",
         server_port, BATCH, rcvbuf);
    pthread_t thread;
    if (pthread_create(&thread, NULL, control, NULL) != 0) fail("pthread_create");

    uint64_t count = 0, refused = 0;
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iovs[i].iov_len = SLOT;
            msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (__atomic_load_n(&stopping, __ATOMIC_ACQUIRE)) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            fail("recvmmsg");
        }
        count += (uint64_t)n;
        __atomic_store_n(&received, count, __ATOMIC_RELAXED);
        if (!echo) continue;
        for (int i = 0; i < n; i++) iovs[i].iov_len = msgs[i].msg_len;
        for (int sent = 0; sent < n;) {
            int k = sendmmsg(fd, msgs + sent, (unsigned)(n - sent), 0);
            if (k < 0) {
                if (errno == EINTR) continue;
                /* The first message failed (e.g. its peer is gone): count it, skip it, send the rest. */
                __atomic_store_n(&send_errors, ++refused, __ATOMIC_RELAXED);
                k = 1;
            }
            sent += k;
        }
    }
    pthread_join(thread, NULL);
    close(fd);
    free(buffers);
    print_counts("final");
    return 0;
}
