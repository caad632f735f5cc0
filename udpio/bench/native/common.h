/* Shared by udpio.bench's C programs (loadgen.c, refserver.c): clocks, CPU accounting, argument parsing,
 * the loopback-only address check, and the JSON lines both programs print for the harness.
 *
 * Linux only (recvmmsg(2), sendmmsg(2), epoll(7), UDP_SEGMENT): udpio.bench._native compiles these only
 * there, with the system C compiler, at first use (see that module for the cache and the flags).
 */
#ifndef UDPIO_BENCH_COMMON_H
#define UDPIO_BENCH_COMMON_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Exit status of a program that cannot serve what it was asked (it printed an "unavailable" line first):
 * the same value as udpio.bench.servers._common.EXIT_UNAVAILABLE. */
#define EXIT_UNAVAILABLE 3
/* Messages per recvmmsg/sendmmsg call: as many as one readiness event is worth draining before the other
 * sockets get their turn (udpio's transport drains at most 256 per event; 64 keeps the buffers small). */
#define BATCH 64
/* Largest UDP payload over IPv4 (65535 - 8 - 20): the receive slot size, so nothing is truncated. */
#define MAX_PAYLOAD 65507

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CLOCK_MONOTONIC in seconds: the clock Python's time.monotonic() reads, so the harness can compare them. */
static inline double mono_s(void) { return (double)now_ns() / 1e9; }

/* This process's CPU time in seconds (every thread), what Python's time.process_time() reports. */
static inline double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Seconds the main thread spent runnable but waiting for a CPU: the second field of /proc/self/schedstat,
 * in ns (Documentation/scheduler/sched-stats.rst). On a shared machine, what other processes took from us.
 * Negative when unknown (printed as null). */
static inline double runq_wait_s(void) {
    FILE *f = fopen("/proc/self/schedstat", "r");
    unsigned long long run = 0, wait = 0;
    int got = 0;
    if (f != NULL) {
        got = fscanf(f, "%llu %llu", &run, &wait);
        fclose(f);
    }
    return got == 2 ? (double)wait / 1e9 : -1.0;
}

/* One JSON line on stdout, flushed: the harness reads stdout line by line. The format is the caller's
 * (numbers and the fixed strings of these programs only: nothing here needs escaping). */
static inline void emit(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

/* A fatal error: an "error" line for the harness (it quotes it), a copy on stderr, exit status 1. */
static inline void fail(const char *what) {
    int err = errno;
    emit("{\"event\": \"error\", \"error\": \"%s: %s\"}", what, strerror(err));
    fprintf(stderr, "%s: %s\n", what, strerror(err));
    exit(1);
}

static inline void usage_error(const char *program, const char *message, const char *value) {
    fprintf(stderr, "%s: %s%s%s\n", program, message, value ? ": " : "", value ? value : "");
    exit(2);
}

/* "--name value" options, parsed into doubles; an unknown option or a bad number is a usage error. */
struct option_spec {
    const char *name;
    double *value;
    double low, high;
};

static inline void parse_options(const char *program, int argc, char **argv, const char **host,
                                 const struct option_spec *specs) {
    for (int i = 0; i < argc; i += 2) {
        if (i + 1 >= argc) usage_error(program, "option needs a value", argv[i]);
        if (host != NULL && strcmp(argv[i], "--host") == 0) {
            *host = argv[i + 1];
            continue;
        }
        const struct option_spec *spec = specs;
        while (spec->name != NULL && strcmp(spec->name, argv[i]) != 0) spec++;
        if (spec->name == NULL) usage_error(program, "unknown option", argv[i]);
        char *end = NULL;
        double v = strtod(argv[i + 1], &end);
        if (end == argv[i + 1] || *end != '\0' || !(v >= spec->low && v <= spec->high))
            usage_error(program, "value out of range", argv[i]);
        *spec->value = v;
    }
}

/* The benchmark never sends a datagram off the machine: only 127.0.0.0/8 is accepted as a destination
 * (ip(7): the whole block is loopback). */
static inline struct sockaddr_in loopback_address(const char *program, const char *host, int port) {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1 || (ntohl(sin.sin_addr.s_addr) >> 24) != 127)
        usage_error(program, "only an IPv4 loopback address (127.x.x.x) is accepted", host);
    return sin;
}

#endif
