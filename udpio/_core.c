/*
 * udpio._core: the compiled I/O core (optional; the pure-Python path in udpio/_transport.py does the same).
 *
 * What the interpreter cannot do cheaply is the drain loop itself: per datagram a method call, a tuple, a
 * bytes object, and an exception at EAGAIN. Here one readiness event runs in C: recvmmsg(2) fills up to
 * RECV_BATCH datagrams at once, each becomes `bytes` plus the same address tuple socket.recvfrom would give
 * (and, for a handler that takes it, the udpio.LocalAddress its IP_PKTINFO / IPV6_PKTINFO message names), and
 * the protocol's handler is called through vectorcall. The only Python left per datagram is the handler.
 * send_pairs() is the send path's batch backend: many (data, destination) pairs, or (data, destination,
 * source) triples, in one sendmmsg(2), with consecutive pairs to one destination (from one source) joined
 * into UDP GSO runs (udp(7), UDP_SEGMENT).
 *
 * Both follow the contracts of SEAMS.md (ReceiveStrategy: read_event/stop; send_pairs). Error semantics are
 * those of the Python path: EAGAIN/EINTR end the event, every other receive error goes to
 * sink.receive_error(exc), a handler's Exception to sink.handler_failed(exc, addr), and a BaseException
 * that is not an Exception (KeyboardInterrupt, SystemExit) propagates, as `except Exception` lets it.
 *
 * The GIL: every function here runs with it held and never releases it. The sockets are non-blocking and
 * every call passes MSG_DONTWAIT, so no system call here can block. That is also what makes the shared
 * receive arena safe (see struct core_state).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if !defined(__linux__)
#error "udpio._core needs Linux (recvmmsg, sendmmsg, UDP_SEGMENT); elsewhere udpio runs its pure-Python path"
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* udp(7), Linux >= 4.18 */
#endif
#ifndef UDP_GRO
#define UDP_GRO 104 /* udp(7), Linux >= 5.0 */
#endif
#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40 /* socket(7), Linux >= 2.6.33 */
#endif

/* Datagrams asked of one recvmmsg(2). 64 amortises the system call (measured: 64-byte datagrams gain little
 * past 32) while keeping the stack arrays of one call under 16 KiB. */
#define RECV_BATCH 64
/* The first recvmmsg of a read event asks for at least this many (see drain). */
#define FIRST_BATCH_MIN 4
/* Messages per sendmmsg(2), and datagrams per call (a GSO message carries several). */
#define SEND_BATCH 64
#define SEND_MAX_DATAGRAMS 128
/* GSO: segments per message. UDP_MAX_SEGMENTS (include/linux/udp.h) was 64 until Linux 6.x raised it to 128;
 * 64 works everywhere (the transport's GSO_MAX_SEGMENTS, checked equal by tests/test_core.py). */
#define GSO_MAX_SEGMENTS 64
/* GSO: a super-datagram is one IP datagram until segmented, so it must fit the 16-bit IPv4 total length:
 * 0xFFFF minus the IPv4 and UDP headers (20 + 8), i.e. MAX_PAYLOAD_IPV4 (tests check they agree). The
 * transport uses the same bound for both families. */
#define GSO_MAX_BYTES (0xFFFF - 20 - 8)
/* A UDP length field is 16 bits (RFC 768), so no receive needs more than 64 KiB. */
#define MAX_BUFFER_SIZE (1 << 16)
/* Peers whose address tuple is remembered per Receiver (direct-mapped, a power of two). */
#define ADDR_CACHE_BITS 8
#define ADDR_CACHE_SIZE (1 << ADDR_CACHE_BITS)
/* Local addresses (LocalAddress objects) remembered per Receiver: a host has few addresses a socket is sent
 * to (direct-mapped, a power of two). */
#define LOCAL_CACHE_BITS 4
#define LOCAL_CACHE_SIZE (1 << LOCAL_CACHE_BITS)
/* Receive slots are this much apart beyond their size: with 64 KiB slots, a multiple of the page size
 * would put every small datagram in the same cache set. */
#define SLOT_PAD 64

/* Room for the control messages a receive may carry: UDP_GRO (an int, the segment size), SO_RXQ_OVFL (a
 * uint32, the kernel's drop count), IP_PKTINFO and IPV6_PKTINFO (the local address: an IPv4 peer of a
 * dual-stack socket brings both, see udpio/_sockopts.py, set_pktinfo). The room is always given, so that a
 * socket whose option is on while its handler does not take local addresses (datagrams queued before
 * set_protocol turned it off) never has its GRO segment size cut off (MSG_CTRUNC). */
#define RECV_CONTROL_SPACE                                                                                    \
    (CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint32_t)) + CMSG_SPACE(sizeof(struct in_pktinfo)) +       \
     CMSG_SPACE(sizeof(struct in6_pktinfo)))
/* A message's control messages: UDP_SEGMENT (a GSO run) and the source address (IP_PKTINFO, or IPV6_PKTINFO,
 * the larger, which also carries IPv4 sources on a dual-stack socket). */
#define SEND_CONTROL_SPACE (CMSG_SPACE(sizeof(uint16_t)) + CMSG_SPACE(sizeof(struct in6_pktinfo)))
#define SOURCE_MAX sizeof(struct in6_pktinfo)

/* ------------------------------------------------------------------------------------------------------ */
/* Module state                                                                                           */

typedef struct {
    PyTypeObject *receiver_type;
    /* The receive arena, shared by every Receiver of this module (one mmap, pages touched only where the
     * kernel writes: a per-Receiver arena of 64 x 64 KiB would keep 256 KiB resident per socket even for
     * small datagrams). Sharing is safe because it is used only between a recvmmsg and the copy of its
     * datagrams into bytes objects, and that stretch runs no Python code and keeps the GIL: no other
     * thread and no re-entrant call can run inside it. Python code (handlers, the garbage collector)
     * runs only once every datagram of the batch has been copied out. */
    char *arena;
    size_t arena_size;
    PyObject *str_counters;
    PyObject *str_receive_error;
    PyObject *str_handler_failed;
    PyObject *str_datagrams_in;
    PyObject *str_bytes_in;
    PyObject *str_dropped_oversize;
    PyObject *str_dropped_on_close;
    PyObject *str_gro_batches;
    PyObject *str_kernel_drops;
    PyObject *str_recv_size;
    PyObject *str_max_size;
    PyObject *str_per_event;
    PyObject *str_batch_bytes;
    /* _socket.socket and its `family` descriptor (see socket_family); NULL if _socket has neither. */
    PyTypeObject *socket_type;
    PyObject *family_getter;
} core_state;

static core_state *
module_state(PyObject *module)
{
    return (core_state *)PyModule_GetState(module);
}

/* Make the arena at least `size` bytes. Called only at the start of an event, when it holds nothing. */
static int
ensure_arena(core_state *st, size_t size)
{
    if (st->arena_size >= size) {
        return 0;
    }
    /* mmap, not malloc: untouched pages cost no memory, and the kernel writes only a datagram's bytes. */
    void *fresh = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (fresh == MAP_FAILED) {
        PyErr_NoMemory();
        return -1;
    }
#ifdef MADV_NOHUGEPAGE
    /* With transparent huge pages set to "always", the first small datagram in each slot would make 2 MiB
     * resident instead of 4 KiB (madvise(2)). Advisory: a failure changes nothing else. */
    (void)madvise(fresh, size, MADV_NOHUGEPAGE);
#endif
    if (st->arena != NULL) {
        munmap(st->arena, st->arena_size);
    }
    st->arena = fresh;
    st->arena_size = size;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Exceptions: the same calls on 3.10-3.13 (PyErr_Fetch is deprecated from 3.12 on).                     */

/* The raised exception as one object carrying its traceback; the error indicator is cleared. */
static PyObject *
take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
        Py_DECREF(tb);
    }
    Py_XDECREF(type);
    return value;
#endif
}

/* Raise `exc` again (steals the reference). */
static void
give_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyObject *tb = PyException_GetTraceback(exc);
    PyObject *type = (PyObject *)Py_TYPE(exc);
    Py_INCREF(type);
    PyErr_Restore(type, exc, tb);
#endif
}

/* ------------------------------------------------------------------------------------------------------ */
/* Addresses                                                                                              */

/* Room for an IPv4 or IPv6 address: 28 bytes, where sockaddr_storage takes 128 (times 64 on the stack). */
typedef union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
} ip_sockaddr;

/* A sender's address reduced to what its Python tuple shows, as four 64-bit words so that building,
 * hashing and comparing it are a few instructions each (this runs once per datagram):
 * word 0: family << 48 | port (network order) << 32 | scope_id; word 1: flowinfo (network order);
 * words 2-3: the address, IPv4 in the low 4 bytes of word 2 (the rest zero). */
typedef struct {
    uint64_t word[4];
} peer_key;

typedef struct {
    peer_key key;
    PyObject *addr; /* the tuple; NULL for an empty slot */
} addr_slot;

/* Fill `key` from a received sockaddr; 0 if it is neither IPv4 nor IPv6. */
static inline int
peer_key_from(peer_key *key, const ip_sockaddr *sa, socklen_t len)
{
    if (sa->sa.sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = &sa->in;
        key->word[0] = (uint64_t)AF_INET << 48 | (uint64_t)in->sin_port << 32;
        key->word[1] = 0;
        key->word[2] = in->sin_addr.s_addr;
        key->word[3] = 0;
        return 1;
    }
    if (sa->sa.sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = &sa->in6;
        key->word[0] = (uint64_t)AF_INET6 << 48 | (uint64_t)in6->sin6_port << 32 | in6->sin6_scope_id;
        key->word[1] = in6->sin6_flowinfo;
        memcpy(&key->word[2], &in6->sin6_addr, sizeof(in6->sin6_addr));
        return 1;
    }
    return 0;
}

static inline int
peer_key_equal(const peer_key *a, const peer_key *b)
{
    return ((a->word[0] ^ b->word[0]) | (a->word[1] ^ b->word[1]) | (a->word[2] ^ b->word[2]) |
            (a->word[3] ^ b->word[3])) == 0;
}

static inline size_t
peer_hash(const peer_key *key)
{
    /* Multiply-xor over the four words, the top bits taken (Fibonacci hashing): a few instructions, where
     * a byte-wise hash of the key cost more than the rest of the per-datagram work in C (callgrind). A peer
     * choosing colliding addresses only causes cache misses (a tuple built, as without the cache). */
    uint64_t h = key->word[0] * 0x9E3779B97F4A7C15ull;
    h = (h ^ key->word[1]) * 0xC2B2AE3D27D4EB4Full;
    h = (h ^ key->word[2]) * 0x165667B19E3779F9ull;
    h = (h ^ key->word[3]) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> (64 - ADDR_CACHE_BITS));
}

/* The tuple Python's socket module builds (Modules/socketmodule.c, makesockaddr): IPv4 (host, port); IPv6
 * (host, port, flowinfo, scope_id) with flowinfo in host order and the host as inet_ntop(3) writes it, so a
 * mapped address reads ::ffff:1.2.3.4. */
static PyObject *
build_address(const ip_sockaddr *sa)
{
    char host[INET6_ADDRSTRLEN];
    int v4 = sa->sa.sa_family == AF_INET;
    const void *raw = v4 ? (const void *)&sa->in.sin_addr : (const void *)&sa->in6.sin6_addr;
    if (inet_ntop(sa->sa.sa_family, raw, host, sizeof(host)) == NULL) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_ssize_t fields = v4 ? 2 : 4;
    PyObject *addr = PyTuple_New(fields);
    if (addr == NULL) {
        return NULL;
    }
    PyObject *item = PyUnicode_DecodeASCII(host, (Py_ssize_t)strlen(host), NULL);
    if (item == NULL) {
        goto fail;
    }
    PyTuple_SET_ITEM(addr, 0, item);
    if ((item = PyLong_FromLong(ntohs(v4 ? sa->in.sin_port : sa->in6.sin6_port))) == NULL) {
        goto fail;
    }
    PyTuple_SET_ITEM(addr, 1, item);
    if (!v4) {
        if ((item = PyLong_FromUnsignedLong(ntohl(sa->in6.sin6_flowinfo))) == NULL) {
            goto fail;
        }
        PyTuple_SET_ITEM(addr, 2, item);
        if ((item = PyLong_FromUnsignedLong(sa->in6.sin6_scope_id)) == NULL) {
            goto fail;
        }
        PyTuple_SET_ITEM(addr, 3, item);
    }
    return addr;
fail:
    Py_DECREF(addr); /* a tuple frees the items set so far and skips the NULL ones */
    return NULL;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Local addresses (IP_PKTINFO / IPV6_PKTINFO)                                                            */

/* A datagram's local address reduced to what its udpio.LocalAddress shows, as three 64-bit words:
 * word 0: family << 32 | interface index; words 1-2: the address (IPv4 in the first 4 bytes of word 1, the
 * rest zero). Family 0: the receive carried no usable pktinfo message (the wildcard stands in). */
typedef struct {
    uint64_t word[3];
} local_key;

typedef struct {
    local_key key;
    PyObject *local; /* the LocalAddress; NULL for an empty slot */
} local_slot;

/* ::ffff:0:0/96 (RFC 4291 2.5.5.2): how an IPv6 socket writes an IPv4 address. */
static const unsigned char mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};

static inline void
local_key_set(local_key *key, int family, int index, const void *addr, size_t addr_len)
{
    /* max(index, 0), as udpio/_sockopts.py's local_address (ipi6_ifindex is unsigned in glibc's header but
     * read as a C int there, so an index past INT_MAX reads 0 on both sides). */
    uint32_t interface = index > 0 ? (uint32_t)index : 0;
    key->word[0] = (uint64_t)(uint32_t)family << 32 | interface;
    key->word[1] = key->word[2] = 0;
    memcpy(&key->word[1], addr, addr_len);
}

/* The local address of an IP_PKTINFO message (ip(7)), exactly as udpio/_sockopts.py's local_address reads
 * it (see its docstring for the kernel's side): the host is ipi_spec_dst; when that is 0 (the datagram was
 * queued before the option was set) and the header's destination ipi_addr is unicast (first byte in
 * 1..223: not 0/8, a group or a broadcast), ipi_addr. `mapped`: the socket is IPv6, the address is written
 * ::ffff:a.b.c.d as the socket writes its IPv4 peers. */
static void
local_from_in_pktinfo(local_key *key, const struct cmsghdr *c, int mapped)
{
    struct in_pktinfo info;
    memcpy(&info, CMSG_DATA(c), sizeof(info));
    struct in_addr host = info.ipi_spec_dst;
    const unsigned char *header = (const unsigned char *)&info.ipi_addr;
    if (host.s_addr == 0 && header[0] > 0 && header[0] < 224) {
        host = info.ipi_addr;
    }
    if (mapped) {
        unsigned char addr[16];
        memcpy(addr, mapped_prefix, sizeof(mapped_prefix));
        memcpy(addr + sizeof(mapped_prefix), &host, sizeof(host));
        local_key_set(key, AF_INET6, info.ipi_ifindex, addr, sizeof(addr));
    }
    else {
        local_key_set(key, AF_INET, info.ipi_ifindex, &host, sizeof(host));
    }
}

/* The local address of an IPV6_PKTINFO message (ipv6(7), RFC 3542 6.1): the header's destination, ipi6_addr;
 * a group address (ff00::/8), which cannot be a source, reads :: (as in udpio/_sockopts.py). */
static void
local_from_in6_pktinfo(local_key *key, const struct cmsghdr *c)
{
    struct in6_pktinfo info;
    memcpy(&info, CMSG_DATA(c), sizeof(info));
    if (info.ipi6_addr.s6_addr[0] == 0xFF) {
        memset(&info.ipi6_addr, 0, sizeof(info.ipi6_addr));
    }
    local_key_set(key, AF_INET6, (int)info.ipi6_ifindex, &info.ipi6_addr, sizeof(info.ipi6_addr));
}

static inline size_t
local_hash(const local_key *key)
{
    uint64_t h = key->word[0] * 0x9E3779B97F4A7C15ull;
    h = (h ^ key->word[1]) * 0xC2B2AE3D27D4EB4Full;
    h = (h ^ key->word[2]) * 0x165667B19E3779F9ull;
    return (size_t)(h >> (64 - LOCAL_CACHE_BITS));
}

/* ------------------------------------------------------------------------------------------------------ */
/* Receiver                                                                                               */

typedef struct {
    PyObject_HEAD
    core_state *state;
    PyObject *sink;    /* ReceiveSink: counters, receive_error, handler_failed; NULL after stop() */
    PyObject *handler; /* datagram_received or datagrams_received; NULL after stop() */
    int batch;         /* the handler takes lists of (data, addr), or of (data, addr, local) */
    int local;         /* the handler takes local addresses: datagram(s)_received_on */
    int mapped;        /* local: the socket is IPv6 (its IPv4 local addresses are written mapped) */
    int fd;
    int stopped;
    int in_event;
    Py_ssize_t buffer_size; /* bytes asked of the kernel per datagram */
    Py_ssize_t max_size;    /* largest datagram delivered */
    Py_ssize_t per_event;
    Py_ssize_t batch_bytes;
    int last_count; /* datagrams the previous read event received: sizes its first recvmmsg */
    addr_slot cache[ADDR_CACHE_SIZE];
    /* local: udpio.LocalAddress, and the one that stands in when a receive carries no pktinfo message
     * (udpio._sockopts.UNKNOWN_LOCAL[family], the wildcard of the socket's family, as the Python strategies
     * use); NULL otherwise. */
    PyObject *local_type;
    PyObject *unknown_local;
    local_slot local_cache[LOCAL_CACHE_SIZE];
} Receiver;

/* One readiness event's running totals, added to sink.counters when it ends (or per list, in batch mode,
 * before the list is delivered, as the Python path does). */
typedef struct {
    PyObject *sink;
    PyObject *handler;
    long long datagrams; /* received and not counted yet: delivered one by one, or undelivered */
    long long bytes;
    long long undelivered; /* received, then dropped because the Receiver stopped (dropped_on_close) */
    long long oversize;
    long long gro_batches;
    long long kernel_drops; /* the last SO_RXQ_OVFL value seen, or -1 */
    PyObject *list;         /* batch mode: the list being filled, or NULL */
    long long list_bytes;
    long long received; /* messages recvmmsg returned in this event (GRO trains count one) */
} event;

/* The address tuple for a sender: from the cache when this peer was seen before (tuples are immutable, so
 * handing the same one out again is safe), else built and remembered. New reference. */
static PyObject *
peer_address(Receiver *self, const ip_sockaddr *sa, socklen_t len)
{
    peer_key key;
    if (len == 0 || !peer_key_from(&key, sa, len)) {
        /* recvfrom gives None for an empty address; UDP sockets only see IPv4/IPv6 senders. */
        Py_RETURN_NONE;
    }
    addr_slot *slot = &self->cache[peer_hash(&key)];
    if (slot->addr != NULL && peer_key_equal(&slot->key, &key)) {
        Py_INCREF(slot->addr);
        return slot->addr;
    }
    PyObject *addr = build_address(sa);
    if (addr == NULL) {
        return NULL;
    }
    slot->key = key;
    Py_INCREF(addr);
    Py_XSETREF(slot->addr, addr);
    return addr;
}

/* The LocalAddress for a receive's local address: the stand-in when it had none, else from the cache, else
 * built (LocalAddress(host, interface), as udpio/_sockopts.py builds it) and remembered. This runs Python code
 * (the dataclass's checks), so never between a recvmmsg and the copy-out of its datagrams. New reference. */
static PyObject *
local_for(Receiver *self, const local_key *key)
{
    int family = (int)(key->word[0] >> 32);
    if (family == 0) {
        return Py_NewRef(self->unknown_local);
    }
    local_slot *slot = &self->local_cache[local_hash(key)];
    if (slot->local != NULL && ((slot->key.word[0] ^ key->word[0]) | (slot->key.word[1] ^ key->word[1]) |
                                (slot->key.word[2] ^ key->word[2])) == 0) {
        return Py_NewRef(slot->local);
    }
    char host[INET6_ADDRSTRLEN];
    if (inet_ntop(family, &key->word[1], host, sizeof(host)) == NULL) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *args[3] = {NULL, NULL, NULL};
    if ((args[1] = PyUnicode_DecodeASCII(host, (Py_ssize_t)strlen(host), NULL)) == NULL) {
        return NULL;
    }
    if ((args[2] = PyLong_FromUnsignedLong((uint32_t)key->word[0])) == NULL) {
        Py_DECREF(args[1]);
        return NULL;
    }
    PyObject *local = PyObject_Vectorcall(self->local_type, args + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(args[1]);
    Py_DECREF(args[2]);
    if (local == NULL) {
        return NULL;
    }
    slot->key = *key;
    Py_XSETREF(slot->local, Py_NewRef(local));
    return local;
}

static int
add_counter(PyObject *counters, PyObject *name, long long amount)
{
    if (amount == 0) {
        return 0;
    }
    PyObject *old = PyObject_GetAttr(counters, name);
    if (old == NULL) {
        return -1;
    }
    PyObject *delta = PyLong_FromLongLong(amount);
    if (delta == NULL) {
        Py_DECREF(old);
        return -1;
    }
    PyObject *sum = PyNumber_Add(old, delta);
    Py_DECREF(old);
    Py_DECREF(delta);
    if (sum == NULL) {
        return -1;
    }
    int rc = PyObject_SetAttr(counters, name, sum);
    Py_DECREF(sum);
    return rc;
}

/* Add the event's totals to sink.counters and zero them. */
static int
flush_counters(core_state *st, event *ev)
{
    if (ev->datagrams == 0 && ev->bytes == 0 && ev->oversize == 0 && ev->gro_batches == 0 &&
        ev->undelivered == 0 && ev->kernel_drops < 0) {
        return 0;
    }
    PyObject *counters = PyObject_GetAttr(ev->sink, st->str_counters);
    if (counters == NULL) {
        return -1;
    }
    int rc = 0;
    if (add_counter(counters, st->str_datagrams_in, ev->datagrams) < 0 ||
        add_counter(counters, st->str_bytes_in, ev->bytes) < 0 ||
        add_counter(counters, st->str_dropped_oversize, ev->oversize) < 0 ||
        add_counter(counters, st->str_dropped_on_close, ev->undelivered) < 0 ||
        add_counter(counters, st->str_gro_batches, ev->gro_batches) < 0) {
        rc = -1;
    }
    else if (ev->kernel_drops >= 0) {
        /* SO_RXQ_OVFL carries the socket's cumulative count (socket(7)): set, not added. */
        PyObject *drops = PyLong_FromLongLong(ev->kernel_drops);
        rc = drops == NULL ? -1 : PyObject_SetAttr(counters, st->str_kernel_drops, drops);
        Py_XDECREF(drops);
    }
    Py_DECREF(counters);
    ev->datagrams = ev->bytes = ev->undelivered = ev->oversize = ev->gro_batches = 0;
    ev->kernel_drops = -1;
    return rc;
}

/* Datagrams read but never delivered because the Receiver stopped (or a handler's BaseException is on its
 * way out): counted as received and as dropped on close, as the Python strategies count them. */
static void
count_undelivered(event *ev, long long datagrams, long long bytes)
{
    ev->datagrams += datagrams;
    ev->bytes += bytes;
    ev->undelivered += datagrams;
}

/* A handler raised (the exception is set). An Exception goes to sink.handler_failed(exc, addr), called
 * as inside `except Exception` (sys.exc_info() is the exception, so one it raises chains to it); anything
 * else propagates. 0: handled, go on; -1: propagate. */
static int
handler_failed(core_state *st, event *ev, PyObject *addr)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *exc = take_exception();
    if (exc == NULL) {
        return -1;
    }
    PyObject *old_type, *old_value, *old_tb;
    PyErr_GetExcInfo(&old_type, &old_value, &old_tb);
    /* PyErr_SetExcInfo steals its three references. */
    Py_INCREF(Py_TYPE(exc));
    Py_INCREF(exc);
    PyErr_SetExcInfo((PyObject *)Py_TYPE(exc), exc, PyException_GetTraceback(exc));
    PyObject *result = PyObject_CallMethodObjArgs(ev->sink, st->str_handler_failed, exc,
                                                  addr != NULL ? addr : Py_None, NULL);
    PyErr_SetExcInfo(old_type, old_value, old_tb);
    Py_DECREF(exc);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* A receive failed with `err` (not EAGAIN/EINTR). 1: end the event; 0: read on; -1: exception set. */
static int
receive_error(core_state *st, event *ev, int err)
{
    /* OSError(errno, strerror) builds the matching subclass (ConnectionRefusedError...), as recvfrom's
     * exception would be. */
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
    if (exc == NULL) {
        return -1;
    }
    PyObject *result = PyObject_CallMethodOneArg(ev->sink, st->str_receive_error, exc);
    Py_DECREF(exc);
    if (result == NULL) {
        return -1;
    }
    int end = PyObject_IsTrue(result);
    Py_DECREF(result);
    return end;
}

/* Hand the current list to datagrams_received: counted first (the Python path's order), then delivered. */
static int
deliver_list(Receiver *self, event *ev)
{
    PyObject *list = ev->list;
    if (list == NULL) {
        return 0;
    }
    ev->list = NULL;
    core_state *st = self->state;
    PyObject *counters = PyObject_GetAttr(ev->sink, st->str_counters);
    if (counters == NULL || add_counter(counters, st->str_datagrams_in, PyList_GET_SIZE(list)) < 0 ||
        add_counter(counters, st->str_bytes_in, ev->list_bytes) < 0) {
        Py_XDECREF(counters);
        Py_DECREF(list);
        return -1;
    }
    Py_DECREF(counters);
    ev->list_bytes = 0;
    PyObject *result = PyObject_CallOneArg(ev->handler, list);
    int rc = 0;
    if (result != NULL) {
        Py_DECREF(result);
    }
    else {
        /* The handler may have emptied the list it was given: then there is no last address. */
        Py_ssize_t n = PyList_GET_SIZE(list);
        PyObject *last = n > 0 ? PyList_GET_ITEM(list, n - 1) : NULL;
        PyObject *addr = last != NULL && PyTuple_Check(last) && PyTuple_GET_SIZE(last) >= 2
                             ? PyTuple_GET_ITEM(last, 1)
                             : Py_None;
        Py_INCREF(addr);
        rc = handler_failed(st, ev, addr);
        Py_DECREF(addr);
    }
    Py_DECREF(list);
    return rc;
}

/* Deliver one datagram (a new reference to its bytes is stolen), with its local address (borrowed) when the
 * handler takes them. 0, or -1 with an exception set. */
static int
deliver(Receiver *self, event *ev, PyObject *data, const ip_sockaddr *sa, socklen_t salen, PyObject *local)
{
    PyObject *addr = peer_address(self, sa, salen);
    if (addr == NULL) {
        Py_DECREF(data);
        return -1;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (self->batch) {
        if (ev->list == NULL && (ev->list = PyList_New(0)) == NULL) {
            Py_DECREF(data);
            Py_DECREF(addr);
            return -1;
        }
        PyObject *item = PyTuple_New(self->local ? 3 : 2);
        if (item == NULL) {
            Py_DECREF(data);
            Py_DECREF(addr);
            return -1;
        }
        PyTuple_SET_ITEM(item, 0, data);
        PyTuple_SET_ITEM(item, 1, addr);
        if (self->local) {
            PyTuple_SET_ITEM(item, 2, Py_NewRef(local));
        }
        int rc = PyList_Append(ev->list, item);
        Py_DECREF(item);
        if (rc < 0) {
            return -1;
        }
        ev->list_bytes += size;
        return ev->list_bytes >= self->batch_bytes ? deliver_list(self, ev) : 0;
    }
    ev->datagrams += 1;
    ev->bytes += size;
    /* args[-1] is scratch space the callee may use (PY_VECTORCALL_ARGUMENTS_OFFSET): a bound method puts
     * its self there instead of allocating a new argument array. */
    PyObject *args[4] = {NULL, data, addr, local};
    size_t nargs = self->local ? 3 : 2;
    PyObject *result = PyObject_Vectorcall(ev->handler, args + 1, nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    int rc = 0;
    if (result != NULL) {
        Py_DECREF(result);
    }
    else {
        rc = handler_failed(self->state, ev, addr);
    }
    Py_DECREF(data);
    Py_DECREF(addr);
    return rc;
}

/* One recvmmsg's worth of receive buffers, on the stack: each read_event (even a re-entrant one on
 * another Receiver) has its own; only the payload arena is shared. */
typedef struct {
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iov[RECV_BATCH];
    ip_sockaddr names[RECV_BATCH];
    union {
        char buf[RECV_CONTROL_SPACE];
        struct cmsghdr align;
    } control[RECV_BATCH];
    PyObject *payload[RECV_BATCH]; /* the copied datagram (or GRO train), NULL if dropped */
    int segment[RECV_BATCH];       /* UDP_GRO segment size, 0 if none */
    local_key local[RECV_BATCH];   /* the local address (when the handler takes them) */
} recv_batch;

static Py_ssize_t
slot_stride(const Receiver *self)
{
    return ((self->buffer_size + 63) & ~(Py_ssize_t)63) + SLOT_PAD;
}

/* Read the control messages of one receive: the GRO segment size, the kernel's drop count, and, when `local`
 * is not NULL, the local address. IP_PKTINFO wins over IPV6_PKTINFO whatever their order (an IPv4 peer of a
 * dual-stack socket brings both, and only IP_PKTINFO carries ipi_spec_dst); a message too short to be one
 * is skipped; with neither, the key's family is 0. The same rules as the Python strategies
 * (udpio/_receive/_recvmsg.py). */
static void
parse_control(struct msghdr *msg, int *segment, long long *kernel_drops, local_key *local, int mapped)
{
    *segment = 0;
    int have_v4 = 0, have_v6 = 0;
    local_key v6;
    if (local != NULL) {
        memset(local, 0, sizeof(*local));
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (local != NULL && c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
            local_from_in_pktinfo(local, c, mapped);
            have_v4 = 1;
            continue;
        }
        if (local != NULL && c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
            local_from_in6_pktinfo(&v6, c);
            have_v6 = 1;
            continue;
        }
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int value;
            memcpy(&value, CMSG_DATA(c), sizeof(value));
            *segment = value > 0 ? value : 0;
        }
        else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL &&
                 c->cmsg_len >= CMSG_LEN(sizeof(uint32_t))) {
            uint32_t value;
            memcpy(&value, CMSG_DATA(c), sizeof(value));
            *kernel_drops = value;
        }
    }
    if (have_v6 && !have_v4) {
        *local = v6;
    }
}

/* Copy the `n` datagrams recvmmsg left in the arena into bytes objects. This runs no Python code (bytes
 * are not tracked by the garbage collector, so allocating them triggers no collection): see core_state.
 * Truncated (MSG_TRUNC) and oversized datagrams are counted here and not copied. -1: out of memory. */
static int
copy_out(Receiver *self, event *ev, recv_batch *rb, int n)
{
    for (int i = 0; i < n; i++) {
        struct msghdr *msg = &rb->msgs[i].msg_hdr;
        Py_ssize_t len = (Py_ssize_t)rb->msgs[i].msg_len;
        rb->payload[i] = NULL;
        parse_control(msg, &rb->segment[i], &ev->kernel_drops, self->local ? &rb->local[i] : NULL, self->mapped);
        if (msg->msg_flags & MSG_TRUNC) {
            /* Longer than buffer_size: the kernel dropped the rest (udp(7)); never delivered cut short. */
            ev->oversize += 1;
            continue;
        }
        int train = rb->segment[i] > 0 && len > rb->segment[i];
        if (!train && len > self->max_size) {
            ev->oversize += 1;
            continue;
        }
        rb->payload[i] = PyBytes_FromStringAndSize((const char *)msg->msg_iov->iov_base, len);
        if (rb->payload[i] == NULL) {
            for (int j = 0; j < i; j++) {
                Py_XDECREF(rb->payload[j]);
            }
            return -1;
        }
    }
    return 0;
}

/* Deliver message `i` of a batch (its payload reference is consumed). -1: exception set. */
static int
deliver_message(Receiver *self, event *ev, recv_batch *rb, int i)
{
    PyObject *payload = rb->payload[i];
    rb->payload[i] = NULL;
    if (payload == NULL) {
        return 0;
    }
    const ip_sockaddr *sa = &rb->names[i];
    socklen_t salen = rb->msgs[i].msg_hdr.msg_namelen;
    Py_ssize_t len = PyBytes_GET_SIZE(payload);
    Py_ssize_t segment = rb->segment[i];
    int train = segment > 0 && len > segment;
    /* One local address per receive: every piece of a GRO train has the train's (the kernel coalesces
     * datagrams of one flow only). */
    PyObject *local = NULL;
    if (self->local && (local = local_for(self, &rb->local[i])) == NULL) {
        count_undelivered(ev, train ? (len + segment - 1) / segment : 1, len);
        Py_DECREF(payload);
        return -1;
    }
    if (!train) {
        int rc = deliver(self, ev, payload, sa, salen, local);
        Py_XDECREF(local);
        return rc;
    }
    /* UDP GRO: the kernel coalesced equal-sized datagrams from one sender; the last may be shorter. */
    ev->gro_batches += 1;
    int rc = 0;
    Py_ssize_t start = 0;
    while (start < len && rc == 0 && !self->stopped) {
        Py_ssize_t size = len - start < segment ? len - start : segment;
        if (size > self->max_size) {
            ev->oversize += 1;
        }
        else {
            PyObject *piece = PyBytes_FromStringAndSize(PyBytes_AS_STRING(payload) + start, size);
            rc = piece == NULL ? -1 : deliver(self, ev, piece, sa, salen, local);
        }
        start += size;
    }
    if (start < len) {
        count_undelivered(ev, (len - start + segment - 1) / segment, len - start);
    }
    Py_XDECREF(local);
    Py_DECREF(payload);
    return rc;
}

/* The drain loop of one readiness event. 0, or -1 with an exception set. */
static int
drain(Receiver *self, event *ev)
{
    core_state *st = self->state;
    Py_ssize_t stride = slot_stride(self);
    recv_batch rb;
    Py_ssize_t budget = self->per_event;

    int ready = 0; /* slots whose constant fields are set (the kernel never writes those) */
    /* The first recvmmsg of an event asks for about twice what the previous event got (at least
     * FIRST_BATCH_MIN): setting up RECV_BATCH slots costs more than the rest of a one-datagram event
     * (callgrind: ~1500 instructions of ~2500 in C per request/response), and request/response traffic
     * brings one datagram per event. A flood then makes one more recvmmsg per event at most. */
    int first = self->last_count < RECV_BATCH / 2 ? 2 * self->last_count : RECV_BATCH;
    first = first < FIRST_BATCH_MIN ? FIRST_BATCH_MIN : first;
    int calls = 0;
    while (budget > 0 && !self->stopped) {
        int vlen = budget < RECV_BATCH ? (int)budget : RECV_BATCH;
        if (calls++ == 0 && vlen > first) {
            vlen = first;
        }
        for (int i = ready; i < vlen; i++) {
            struct msghdr *msg = &rb.msgs[i].msg_hdr;
            rb.iov[i].iov_base = st->arena + (size_t)i * (size_t)stride;
            rb.iov[i].iov_len = (size_t)self->buffer_size;
            msg->msg_name = &rb.names[i];
            msg->msg_iov = &rb.iov[i];
            msg->msg_iovlen = 1;
            msg->msg_control = rb.control[i].buf;
        }
        ready = vlen > ready ? vlen : ready;
        /* recvmmsg rewrites msg_namelen, msg_controllen, msg_flags and msg_len of what it fills. */
        for (int i = 0; i < vlen; i++) {
            struct msghdr *msg = &rb.msgs[i].msg_hdr;
            msg->msg_namelen = sizeof(rb.names[i]);
            msg->msg_controllen = sizeof(rb.control[i].buf);
            msg->msg_flags = 0;
            rb.msgs[i].msg_len = 0;
        }
        int n = recvmmsg(self->fd, rb.msgs, (unsigned int)vlen, MSG_DONTWAIT, NULL);
        if (n < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) {
                return 0;
            }
            /* ICMP errors (ECONNREFUSED...) are consumed by the failing call (udp(7)); the sink decides
             * whether the event goes on (it reads the error queue, and ends it for EBADF). One unit of the
             * budget per error, so a socket that keeps failing cannot hold the loop. */
            budget -= 1;
            int end = receive_error(st, ev, err);
            if (end != 0) {
                return end < 0 ? -1 : 0;
            }
            continue;
        }
        budget -= n;
        ev->received += n;
        if (copy_out(self, ev, &rb, n) < 0) {
            return -1;
        }
        for (int i = 0; i < n; i++) {
            int rc = self->stopped ? 0 : deliver_message(self, ev, &rb, i);
            if (rc < 0 || self->stopped) {
                /* stop() came from a handler, or one raised what must propagate: drop the rest. */
                for (int j = i; j < n; j++) {
                    PyObject *rest = rb.payload[j];
                    if (rest != NULL) {
                        Py_ssize_t len = PyBytes_GET_SIZE(rest), seg = rb.segment[j];
                        count_undelivered(ev, seg > 0 && len > seg ? (len + seg - 1) / seg : 1, len);
                        Py_CLEAR(rb.payload[j]);
                    }
                }
                return rc;
            }
        }
        if (n < vlen) {
            /* Non-blocking recvmmsg returns fewer than asked only when the queue ran dry (or an error
             * came up, which the kernel keeps for the next call: recvmmsg(2), BUGS). Asking again would
             * cost a system call that fails with EAGAIN; the level-triggered loop calls back if more came. */
            return 0;
        }
    }
    return 0;
}

static PyObject *
Receiver_read_event(Receiver *self, PyObject *Py_UNUSED(ignored))
{
    /* A handler that made this very Receiver read again (re-entrantly) gets nothing: the outer event is
     * still delivering, and datagrams must stay in order. */
    if (self->stopped || self->in_event) {
        Py_RETURN_NONE;
    }
    core_state *st = self->state;
    if (ensure_arena(st, (size_t)RECV_BATCH * (size_t)slot_stride(self)) < 0) {
        return NULL;
    }
    event ev;
    memset(&ev, 0, sizeof(ev));
    ev.kernel_drops = -1;
    /* Own references for the event: stop() (from a handler) drops the Receiver's, and a handler may drop
     * the last reference to the Receiver itself. */
    Py_INCREF(self);
    ev.sink = Py_NewRef(self->sink);
    ev.handler = Py_NewRef(self->handler);
    self->in_event = 1;

    int rc = drain(self, &ev);
    self->last_count = ev.received < RECV_BATCH ? (int)ev.received : RECV_BATCH;
    if (rc == 0 && !self->stopped) {
        rc = deliver_list(self, &ev);
    }
    if (ev.list != NULL) { /* stopped, or failed: the list being filled is dropped */
        count_undelivered(&ev, PyList_GET_SIZE(ev.list), ev.list_bytes);
        Py_CLEAR(ev.list);
    }
    /* The counters must reflect what was delivered even when the event ends with an exception. */
    if (rc < 0) {
        PyObject *exc = take_exception();
        if (flush_counters(st, &ev) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        give_exception(exc);
    }
    else {
        rc = flush_counters(st, &ev);
    }
    self->in_event = 0;
    Py_DECREF(ev.sink);
    Py_DECREF(ev.handler);
    Py_DECREF(self);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Receiver_stop(Receiver *self, PyObject *Py_UNUSED(ignored))
{
    /* The transport is closing: deliver nothing more (the loop checks `stopped` after every handler), never
     * read again, and let go of the protocol and the transport now rather than when this object dies. */
    self->stopped = 1;
    Py_CLEAR(self->handler);
    Py_CLEAR(self->sink);
    Py_RETURN_NONE;
}

static PyObject *
Receiver_get_stopped(Receiver *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->stopped);
}

static PyObject *
Receiver_get_batch(Receiver *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->batch);
}

static PyObject *
Receiver_get_pktinfo(Receiver *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->local);
}

/* What a Receiver whose handler takes local addresses needs: the socket's family (an IPv6 socket writes its
 * IPv4 local addresses mapped, and its stand-in is ::), udpio.LocalAddress, and the stand-in for a receive
 * without a pktinfo message, both from udpio._sockopts, whose local_address the C side mirrors. 0, or -1
 * with an exception set. */
static int
local_support(Receiver *self, int fd)
{
    int family = 0;
    socklen_t family_len = sizeof(family);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &family_len) < 0) {
        int err = errno;
        PyErr_Format(PyExc_ValueError,
                     "fileno must be an IPv4 or IPv6 socket to read local addresses from, got %d (%s)", fd,
                     strerror(err));
        return -1;
    }
    if (family != AF_INET && family != AF_INET6) {
        PyErr_Format(PyExc_ValueError,
                     "fileno must be an IPv4 or IPv6 socket to read local addresses from, got %d (family %d)",
                     fd, family);
        return -1;
    }
    self->mapped = family == AF_INET6;
    PyObject *sockopts = PyImport_ImportModule("udpio._sockopts");
    if (sockopts == NULL) {
        return -1;
    }
    PyObject *unknown = PyObject_GetAttrString(sockopts, "UNKNOWN_LOCAL");
    self->local_type = PyObject_GetAttrString(sockopts, "LocalAddress");
    Py_DECREF(sockopts);
    if (unknown == NULL || self->local_type == NULL) {
        Py_XDECREF(unknown);
        return -1;
    }
    PyObject *key = PyLong_FromLong(family);
    self->unknown_local = key == NULL ? NULL : PyObject_GetItem(unknown, key);
    Py_XDECREF(key);
    Py_DECREF(unknown);
    return self->unknown_local == NULL ? -1 : 0;
}

/* Read a non-negative int attribute of the limits object into *out. */
static int
read_limit(PyObject *limits, PyObject *name, Py_ssize_t low, Py_ssize_t high, Py_ssize_t *out)
{
    PyObject *value = PyObject_GetAttr(limits, name);
    if (value == NULL) {
        return -1;
    }
    Py_ssize_t number = -1;
    if (PyLong_Check(value) && !PyBool_Check(value)) {
        number = PyLong_AsSsize_t(value);
        if (number == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            number = -1;
        }
    }
    if (number < low || number > high) {
        PyErr_Format(PyExc_ValueError, "limits.%U must be an int in %zd..%zd, got %R", name, low, high, value);
        Py_DECREF(value);
        return -1;
    }
    Py_DECREF(value);
    *out = number;
    return 0;
}

static PyObject *
Receiver_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"sink",          "fileno", "limits", "datagram_received", "datagrams_received",
                               "datagram_received_on", "datagrams_received_on", "buffer_size", NULL};
    /* The handlers in keyword order: per datagram, lists, per datagram with local address, lists of them. */
    PyObject *sink, *limits, *handlers[4] = {Py_None, Py_None, Py_None, Py_None};
    int fd;
    Py_ssize_t buffer_size = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OiO|$OOOOn:Receiver", keywords, &sink, &fd, &limits,
                                     &handlers[0], &handlers[1], &handlers[2], &handlers[3], &buffer_size)) {
        return NULL;
    }
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "fileno must be an open file descriptor (>= 0), got %d", fd);
        return NULL;
    }
    int given = 0, kind = 0;
    for (int k = 0; k < 4; k++) {
        if (handlers[k] != Py_None) {
            given += 1;
            kind = k;
        }
    }
    if (given != 1) {
        PyErr_SetString(PyExc_TypeError, "exactly one of datagram_received, datagrams_received, "
                                         "datagram_received_on and datagrams_received_on must be given");
        return NULL;
    }
    PyObject *handler = handlers[kind];
    if (!PyCallable_Check(handler)) {
        PyErr_Format(PyExc_TypeError, "the handler must be callable, got %R", handler);
        return NULL;
    }
    core_state *st = (core_state *)PyType_GetModuleState(type);
    if (st == NULL) {
        return NULL;
    }
    Py_ssize_t recv_size, max_size = -1, per_event, batch_bytes;
    if (read_limit(limits, st->str_recv_size, 1, MAX_BUFFER_SIZE, &recv_size) < 0 ||
        read_limit(limits, st->str_per_event, 1, PY_SSIZE_T_MAX, &per_event) < 0 ||
        read_limit(limits, st->str_batch_bytes, 1, PY_SSIZE_T_MAX, &batch_bytes) < 0) {
        return NULL;
    }
    PyObject *max_value = PyObject_GetAttr(limits, st->str_max_size);
    if (max_value == NULL) {
        return NULL;
    }
    int no_max = max_value == Py_None;
    Py_DECREF(max_value);
    if (no_max) {
        max_size = recv_size - 1; /* only what a full buffer could hide (a datagram of recv_size or more) */
    }
    /* Up to the buffer: a datagram longer than the buffer is flagged MSG_TRUNC and dropped whatever this is. */
    else if (read_limit(limits, st->str_max_size, 0, MAX_BUFFER_SIZE, &max_size) < 0) {
        return NULL;
    }
    if (buffer_size == 0) {
        buffer_size = recv_size;
    }
    if (buffer_size < recv_size || buffer_size > MAX_BUFFER_SIZE) {
        PyErr_Format(PyExc_ValueError, "buffer_size must be in limits.recv_size..%d (%zd..%d), got %zd",
                     MAX_BUFFER_SIZE, recv_size, MAX_BUFFER_SIZE, buffer_size);
        return NULL;
    }
    Receiver *self = (Receiver *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    /* tp_alloc zero-filled the object: the address cache starts empty. */
    self->state = st;
    self->sink = Py_NewRef(sink);
    self->handler = Py_NewRef(handler);
    self->batch = kind == 1 || kind == 3;
    self->local = kind >= 2;
    self->fd = fd;
    self->buffer_size = buffer_size;
    self->max_size = max_size;
    self->per_event = per_event;
    self->batch_bytes = batch_bytes;
    if (self->local && local_support(self, fd) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
Receiver_traverse(Receiver *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->sink);
    Py_VISIT(self->handler);
    Py_VISIT(self->local_type);
    Py_VISIT(self->unknown_local);
    for (int i = 0; i < LOCAL_CACHE_SIZE; i++) {
        Py_VISIT(self->local_cache[i].local);
    }
    /* The cached tuples hold only str and int: they cannot be part of a cycle. */
    return 0;
}

static int
Receiver_clear(Receiver *self)
{
    Py_CLEAR(self->sink);
    Py_CLEAR(self->handler);
    for (int i = 0; i < ADDR_CACHE_SIZE; i++) {
        Py_CLEAR(self->cache[i].addr);
    }
    Py_CLEAR(self->local_type);
    Py_CLEAR(self->unknown_local);
    for (int i = 0; i < LOCAL_CACHE_SIZE; i++) {
        Py_CLEAR(self->local_cache[i].local);
    }
    return 0;
}

static void
Receiver_dealloc(Receiver *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Receiver_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

PyDoc_STRVAR(Receiver_doc,
"Receiver(sink, fileno, limits, *, datagram_received=None, datagrams_received=None,\n\
         datagram_received_on=None, datagrams_received_on=None, buffer_size=0)\n\
--\n\
\n\
A receive strategy (SEAMS.md) run in C: read_event() drains the socket with recvmmsg and calls the\n\
handler; stop() ends delivery for good. Exactly one handler is given: datagram_received(data, addr) per\n\
datagram, or datagrams_received(list) with lists of (data, addr) of about limits.batch_bytes bytes;\n\
datagram_received_on(data, addr, local) and datagrams_received_on(list of (data, addr, local)) also\n\
get each datagram's local address (a udpio.LocalAddress read from IP_PKTINFO / IPV6_PKTINFO, which\n\
the caller turns on; the family's wildcard when a receive carries none).\n\
limits gives recv_size, max_size, per_event and batch_bytes; buffer_size (default limits.recv_size) is\n\
what each receive asks of the kernel: 65536 with UDP GRO, whose trains are split at the segment size.\n\
The Receiver does not own the descriptor.");

PyDoc_STRVAR(read_event_doc, "read_event()\n--\n\nDrain the socket for one readiness event and deliver.");
PyDoc_STRVAR(stop_doc, "stop()\n--\n\nDeliver nothing more, even mid-event, and never read again.");

static PyMethodDef Receiver_methods[] = {
    {"read_event", (PyCFunction)Receiver_read_event, METH_NOARGS, read_event_doc},
    {"stop", (PyCFunction)Receiver_stop, METH_NOARGS, stop_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Receiver_getset[] = {
    {"stopped", (getter)Receiver_get_stopped, NULL, "Whether stop() was called.", NULL},
    {"batch", (getter)Receiver_get_batch, NULL, "Whether the handler takes lists.", NULL},
    {"pktinfo", (getter)Receiver_get_pktinfo, NULL, "Whether the handler takes local addresses.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Receiver_slots[] = {
    {Py_tp_doc, (void *)Receiver_doc},
    {Py_tp_new, Receiver_new},
    {Py_tp_dealloc, Receiver_dealloc},
    {Py_tp_traverse, Receiver_traverse},
    {Py_tp_clear, Receiver_clear},
    {Py_tp_methods, Receiver_methods},
    {Py_tp_getset, Receiver_getset},
    {0, NULL},
};

static PyType_Spec Receiver_spec = {
    .name = "udpio._core.Receiver",
    .basicsize = sizeof(Receiver),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Receiver_slots,
};

/* ------------------------------------------------------------------------------------------------------ */
/* send_pairs                                                                                             */

/* The sockaddr for a destination as Python's socket module would build it for a socket of `family`
 * (Modules/socketmodule.c, getsockaddrarg), for IP literals only: (host, port) or, for IPv6,
 * (host, port, flowinfo, scope_id). 1: done; 0: anything else (a hostname, "%scope", a bad port...),
 * left to the caller's sendto, which raises or resolves exactly as it always does. Never raises. */
static int
destination(PyObject *dest, int family, ip_sockaddr *out, socklen_t *len)
{
    memset(out, 0, sizeof(*out));
    if (dest == Py_None) {
        *len = 0; /* a connected socket's peer */
        return 1;
    }
    if (!PyTuple_Check(dest)) {
        return 0;
    }
    Py_ssize_t fields = PyTuple_GET_SIZE(dest);
    if (!(fields == 2 || (fields == 4 && family == AF_INET6))) {
        return 0;
    }
    PyObject *host = PyTuple_GET_ITEM(dest, 0);
    PyObject *port = PyTuple_GET_ITEM(dest, 1);
    if (!PyUnicode_Check(host) || !PyLong_Check(port)) {
        return 0;
    }
    Py_ssize_t host_len;
    const char *text = PyUnicode_AsUTF8AndSize(host, &host_len);
    long port_number = PyLong_AsLong(port);
    if (text == NULL || port_number < 0 || port_number > 0xFFFF || (Py_ssize_t)strlen(text) != host_len) {
        PyErr_Clear();
        return 0;
    }
    if (family == AF_INET) {
        struct sockaddr_in *in = &out->in;
        if (inet_pton(AF_INET, text, &in->sin_addr) != 1) {
            return 0;
        }
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port_number);
        *len = sizeof(*in);
        return 1;
    }
    if (family != AF_INET6) {
        return 0;
    }
    struct sockaddr_in6 *in6 = &out->in6;
    if (inet_pton(AF_INET6, text, &in6->sin6_addr) != 1) {
        return 0;
    }
    unsigned long flowinfo = 0, scope_id = 0;
    if (fields == 4) {
        PyObject *flow = PyTuple_GET_ITEM(dest, 2);
        PyObject *scope = PyTuple_GET_ITEM(dest, 3);
        if (!PyLong_Check(flow) || !PyLong_Check(scope)) {
            return 0;
        }
        flowinfo = PyLong_AsUnsignedLong(flow);
        scope_id = PyLong_AsUnsignedLong(scope);
        /* The socket module refuses a flowinfo above 20 bits (OverflowError): leave that to it. */
        if (PyErr_Occurred() || flowinfo > 0xFFFFF || scope_id > 0xFFFFFFFFul) {
            PyErr_Clear();
            return 0;
        }
    }
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port_number);
    in6->sin6_flowinfo = htonl((uint32_t)flowinfo);
    in6->sin6_scope_id = (uint32_t)scope_id;
    *len = sizeof(*in6);
    return 1;
}

/* The control message choosing a datagram's source address, as udpio/_sockopts.py's pktinfo_cmsg builds it
 * (level, type, data): IP_PKTINFO with a struct in_pktinfo, or IPV6_PKTINFO with a struct in6_pktinfo. len 0:
 * none (the kernel picks the source). */
typedef struct {
    int level;
    int type;
    size_t len;
    unsigned char data[SOURCE_MAX];
} source_cmsg;

/* Read the third item of a (data, dest, source) triple: None, or one (level, type, bytes) control message of
 * the two kinds above with the exact size of its struct. 1: done; 0: anything else, left to the caller (its
 * sendmsg raises or sends as it always does). Never raises. */
static int
source_from(PyObject *item, source_cmsg *out)
{
    out->len = 0;
    if (item == Py_None) {
        return 1;
    }
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3 || !PyLong_Check(PyTuple_GET_ITEM(item, 0)) ||
        !PyLong_Check(PyTuple_GET_ITEM(item, 1)) || !PyBytes_Check(PyTuple_GET_ITEM(item, 2))) {
        return 0;
    }
    long level = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
    long type = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    PyObject *data = PyTuple_GET_ITEM(item, 2);
    size_t len = (size_t)PyBytes_GET_SIZE(data);
    if (!(level == IPPROTO_IP && type == IP_PKTINFO && len == sizeof(struct in_pktinfo)) &&
        !(level == IPPROTO_IPV6 && type == IPV6_PKTINFO && len == sizeof(struct in6_pktinfo))) {
        return 0;
    }
    out->level = (int)level;
    out->type = (int)type;
    out->len = len;
    memcpy(out->data, PyBytes_AS_STRING(data), len);
    return 1;
}

static inline int
source_equal(const source_cmsg *a, const source_cmsg *b)
{
    return a->len == b->len &&
           (a->len == 0 || (a->level == b->level && a->type == b->type && memcmp(a->data, b->data, a->len) == 0));
}

/* One sendmmsg's worth of messages, on the stack. */
typedef struct {
    struct mmsghdr msgs[SEND_BATCH];
    ip_sockaddr names[SEND_BATCH];
    union {
        char buf[SEND_CONTROL_SPACE];
        struct cmsghdr align;
    } control[SEND_BATCH];
    int pairs[SEND_BATCH];        /* datagrams in each message (more than one: a GSO run) */
    size_t segment[SEND_BATCH];   /* the GSO segment size: the run's first datagram */
    size_t run_bytes[SEND_BATCH]; /* bytes in the run */
    int open[SEND_BATCH];         /* the run may take more datagrams (none shorter than the segment yet) */
    source_cmsg source[SEND_BATCH]; /* the message's source address, if it has one */
    struct iovec iov[SEND_MAX_DATAGRAMS];
    Py_buffer views[SEND_MAX_DATAGRAMS];
    int nmsgs;
    int nviews;
    int blocked; /* stopped at a pair this function cannot send (left to the caller's sendto) */
} send_batch;

static void
release_views(send_batch *sb)
{
    for (int i = 0; i < sb->nviews; i++) {
        PyBuffer_Release(&sb->views[i]);
    }
    sb->nviews = 0;
}

/* Fill `sb` from pairs[index:], as many as one sendmmsg takes. Each datagram's buffer stays exported
 * (so a bytearray cannot be resized under the kernel) until release_views. Never raises. */
static void
prepare(send_batch *sb, PyObject *seq, Py_ssize_t index, int family, int gso)
{
    sb->nmsgs = sb->nviews = sb->blocked = 0;
    /* Re-read the size each time: getting a buffer can run Python code (__buffer__, 3.12+), which could
     * change the list under us. */
    for (Py_ssize_t j = index; j < PySequence_Fast_GET_SIZE(seq) && sb->nviews < SEND_MAX_DATAGRAMS; j++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, j);
        source_cmsg source;
        if (!PyTuple_Check(pair) || (PyTuple_GET_SIZE(pair) != 2 && PyTuple_GET_SIZE(pair) != 3) ||
            !source_from(PyTuple_GET_SIZE(pair) == 3 ? PyTuple_GET_ITEM(pair, 2) : Py_None, &source)) {
            sb->blocked = 1;
            break;
        }
        Py_INCREF(pair);
        Py_buffer *view = &sb->views[sb->nviews];
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(pair, 0), view, PyBUF_SIMPLE) < 0) {
            /* Not a contiguous buffer: sendto raises the TypeError/BufferError. */
            PyErr_Clear();
            Py_DECREF(pair);
            sb->blocked = 1;
            break;
        }
        ip_sockaddr name;
        socklen_t namelen;
        int ok = destination(PyTuple_GET_ITEM(pair, 1), family, &name, &namelen);
        Py_DECREF(pair); /* the view keeps the data alive; the address was copied */
        if (!ok) {
            PyBuffer_Release(view);
            sb->blocked = 1;
            break;
        }
        size_t size = (size_t)view->len;
        int m = sb->nmsgs - 1;
        /* Join the current run when the destination and the source are the same and the size allows
         * (udp(7): all segments the same size, the last one may be shorter; zero-length datagrams cannot
         * be segments). */
        if (gso && m >= 0 && sb->open[m] && size > 0 && size <= sb->segment[m] &&
            sb->pairs[m] < GSO_MAX_SEGMENTS && sb->run_bytes[m] + size <= GSO_MAX_BYTES &&
            sb->msgs[m].msg_hdr.msg_namelen == namelen && memcmp(&sb->names[m], &name, namelen) == 0 &&
            source_equal(&sb->source[m], &source)) {
            sb->pairs[m] += 1;
            sb->run_bytes[m] += size;
            sb->open[m] = size == sb->segment[m];
        }
        else {
            if (sb->nmsgs == SEND_BATCH) {
                PyBuffer_Release(view);
                break; /* full: the next call takes it */
            }
            m = sb->nmsgs++;
            sb->names[m] = name;
            sb->pairs[m] = 1;
            sb->segment[m] = size;
            sb->run_bytes[m] = size;
            sb->open[m] = size > 0 && size <= GSO_MAX_BYTES;
            sb->source[m] = source;
            memset(&sb->msgs[m], 0, sizeof(sb->msgs[m]));
            sb->msgs[m].msg_hdr.msg_name = namelen ? &sb->names[m] : NULL;
            sb->msgs[m].msg_hdr.msg_namelen = namelen;
            sb->msgs[m].msg_hdr.msg_iov = &sb->iov[sb->nviews];
        }
        sb->iov[sb->nviews].iov_base = view->buf;
        sb->iov[sb->nviews].iov_len = size;
        sb->nviews += 1;
        sb->msgs[m].msg_hdr.msg_iovlen = (size_t)sb->pairs[m];
    }
    /* A run of several datagrams asks the kernel to cut it at the segment size (UDP_SEGMENT, a uint16); a
     * message with a source carries it (ip(7), ipv6(7); the kernel reads both per message of a sendmmsg). */
    for (int m = 0; m < sb->nmsgs; m++) {
        int gso_run = sb->pairs[m] > 1;
        if (!gso_run && sb->source[m].len == 0) {
            continue;
        }
        struct msghdr *msg = &sb->msgs[m].msg_hdr;
        memset(sb->control[m].buf, 0, sizeof(sb->control[m].buf));
        msg->msg_control = sb->control[m].buf;
        /* Exactly the room used: the kernel reads every header within msg_controllen. */
        msg->msg_controllen = (gso_run ? CMSG_SPACE(sizeof(uint16_t)) : 0) +
                              (sb->source[m].len ? CMSG_SPACE(sb->source[m].len) : 0);
        struct cmsghdr *c = CMSG_FIRSTHDR(msg);
        if (gso_run) {
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t segment = (uint16_t)sb->segment[m];
            memcpy(CMSG_DATA(c), &segment, sizeof(segment));
            c = (struct cmsghdr *)((char *)c + CMSG_SPACE(sizeof(uint16_t)));
        }
        if (sb->source[m].len) {
            c->cmsg_level = sb->source[m].level;
            c->cmsg_type = sb->source[m].type;
            c->cmsg_len = CMSG_LEN(sb->source[m].len);
            memcpy(CMSG_DATA(c), sb->source[m].data, sb->source[m].len);
        }
    }
}

/* Whether the socket has an error waiting (an ICMP error from an earlier datagram: udp(7), ip(7)). */
static int
error_pending(int fd)
{
    struct pollfd p = {.fd = fd, .events = 0, .revents = 0};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLNVAL)) != 0;
}

/* The family of a socket object (a socket.socket, or anything built on _socket.socket), read through
 * _socket.socket's own `family` descriptor: a plain int in ~75 ns, where socket.socket's property converts it
 * to an AddressFamily in ~1.3 us and getsockopt(SO_DOMAIN) is a system call. 0 for anything else (a bare
 * descriptor: the caller asks the kernel). Never raises. */
static int
socket_family(core_state *st, PyObject *sock)
{
    if (st->socket_type == NULL || st->family_getter == NULL || !PyObject_TypeCheck(sock, st->socket_type)) {
        return 0;
    }
    descrgetfunc get = Py_TYPE(st->family_getter)->tp_descr_get;
    PyObject *value = get == NULL ? NULL : get(st->family_getter, sock, (PyObject *)st->socket_type);
    long family = value != NULL && PyLong_Check(value) ? PyLong_AsLong(value) : 0;
    Py_XDECREF(value);
    PyErr_Clear();
    return family == AF_INET || family == AF_INET6 ? (int)family : 0;
}

PyDoc_STRVAR(send_pairs_doc,
"send_pairs(sock, pairs, start, *, gso=True)\n\
--\n\
\n\
Send pairs[start:] ((data, dest) tuples; dest None on a connected socket; or (data, dest, source)\n\
triples, source None or the (level, type, bytes) IP_PKTINFO / IPV6_PKTINFO control message that sends\n\
from a local address, as udpio._sockopts.pktinfo_cmsg builds it) in order with sendmmsg, as\n\
many as the kernel takes without blocking; return the index of the first pair not sent (len(pairs) when\n\
all went). Consecutive pairs to one destination (from one source) go as UDP GSO runs unless gso is\n\
false. It never raises\n\
for the pair at the returned index: the caller sends that one with its ordinary sendto, which meets the\n\
error (EAGAIN, ECONNREFUSED, EMSGSIZE...) or the bad argument and handles it as always.");

static PyObject *
send_pairs(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "send_pairs() takes 3 positional arguments (%zd given)", nargs);
        return NULL;
    }
    int gso = 1;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        if (!PyUnicode_Check(name) || PyUnicode_CompareWithASCIIString(name, "gso") != 0) {
            PyErr_Format(PyExc_TypeError, "send_pairs() got an unexpected keyword argument %R", name);
            return NULL;
        }
        if ((gso = PyObject_IsTrue(args[nargs + k])) < 0) {
            return NULL;
        }
    }
    Py_ssize_t start = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[1], "pairs must be a sequence of (data, dest) tuples");
    if (seq == NULL) {
        return NULL;
    }
    if (start < 0 || start > PySequence_Fast_GET_SIZE(seq)) {
        PyErr_Format(PyExc_ValueError, "start must be in 0..%zd, got %zd", PySequence_Fast_GET_SIZE(seq),
                     start);
        Py_DECREF(seq);
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0) {
        /* ValueError: fileno() is -1, the socket was closed (perhaps by a handler, under the transport).
         * Nothing is sent: the caller's sendto meets the closed socket (EBADF) and routes it. */
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
            Py_DECREF(seq);
            return NULL;
        }
        PyErr_Clear();
        Py_DECREF(seq);
        return PyLong_FromSsize_t(start);
    }
    Py_ssize_t index = start;
    /* The socket's family: a socket object says it (an attribute read); for a bare descriptor the kernel
     * does (getsockopt, one more system call per batch). */
    int family = socket_family(module_state(module), args[0]);
    socklen_t family_len = sizeof(family);
    /* sendmmsg would consume a pending ICMP error and, past the first message, lose it (sendmmsg(2): "the
     * error code is lost"). Leave the socket to the caller's sendto, which meets the error and reports
     * it. A bad descriptor is left to it likewise. */
    if (index < PySequence_Fast_GET_SIZE(seq) && !error_pending(fd) &&
        (family != 0 || getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &family_len) == 0)) {
        send_batch *sb = PyMem_Malloc(sizeof(send_batch));
        if (sb == NULL) {
            Py_DECREF(seq);
            return PyErr_NoMemory();
        }
        while (index < PySequence_Fast_GET_SIZE(seq)) {
            prepare(sb, seq, index, family, gso);
            if (sb->nmsgs == 0) {
                break; /* pairs[index] is not ours to send */
            }
            int sent = sendmmsg(fd, sb->msgs, (unsigned int)sb->nmsgs, MSG_DONTWAIT);
            int err = errno;
            release_views(sb);
            if (sent < 0) {
                if (sb->pairs[0] > 1 && err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
                    /* The kernel refused the GSO run itself (no UDP_SEGMENT before Linux 4.18; EINVAL, or
                     * EMSGSIZE on newer kernels, when a segment exceeds the route's MTU; EIO without
                     * checksum offload: udp(7)). Send the rest of this call's pairs one message each; the
                     * first one meets any real error. */
                    gso = 0;
                    continue;
                }
                break; /* pairs[index] failed: the caller's sendto meets the same error */
            }
            for (int m = 0; m < sent; m++) {
                index += sb->pairs[m];
            }
            if (sent == sb->nmsgs && sb->blocked) {
                break;
            }
            /* sent < nmsgs: the kernel stopped at message `sent` (EAGAIN, or an error it does not
             * report); the next sendmmsg starts there and fails at its first message, where the error
             * is attributed exactly. */
        }
        PyMem_Free(sb);
    }
    Py_DECREF(seq);
    return PyLong_FromSsize_t(index);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Module                                                                                                 */

static PyMethodDef core_methods[] = {
    {"send_pairs", (PyCFunction)(void (*)(void))send_pairs, METH_FASTCALL | METH_KEYWORDS, send_pairs_doc},
    {NULL, NULL, 0, NULL},
};

static int
core_exec(PyObject *module)
{
    core_state *st = module_state(module);
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&st->str_counters, "counters"},
        {&st->str_receive_error, "receive_error"},
        {&st->str_handler_failed, "handler_failed"},
        {&st->str_datagrams_in, "datagrams_in"},
        {&st->str_bytes_in, "bytes_in"},
        {&st->str_dropped_oversize, "dropped_oversize"},
        {&st->str_dropped_on_close, "dropped_on_close"},
        {&st->str_gro_batches, "gro_batches"},
        {&st->str_kernel_drops, "kernel_drops"},
        {&st->str_recv_size, "recv_size"},
        {&st->str_max_size, "max_size"},
        {&st->str_per_event, "per_event"},
        {&st->str_batch_bytes, "batch_bytes"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL) {
            return -1;
        }
    }
    PyObject *sockets = PyImport_ImportModule("_socket");
    if (sockets == NULL) {
        return -1;
    }
    PyObject *type = PyObject_GetAttrString(sockets, "socket");
    Py_DECREF(sockets);
    if (type == NULL) {
        return -1;
    }
    if (PyType_Check(type)) {
        /* Read on the type, a data descriptor gives itself (on an instance it would be called). */
        PyObject *family = PyObject_GetAttrString(type, "family");
        if (family != NULL && Py_TYPE(family)->tp_descr_get != NULL) {
            st->family_getter = family;
            st->socket_type = (PyTypeObject *)Py_NewRef(type);
        }
        else {
            Py_XDECREF(family);
            PyErr_Clear(); /* no such descriptor: every batch asks the kernel */
        }
    }
    Py_DECREF(type);
    st->receiver_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Receiver_spec, NULL);
    if (st->receiver_type == NULL || PyModule_AddType(module, st->receiver_type) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "RECV_BATCH", RECV_BATCH) < 0 ||
        PyModule_AddIntConstant(module, "SEND_BATCH", SEND_BATCH) < 0 ||
        PyModule_AddIntConstant(module, "GSO_MAX_SEGMENTS", GSO_MAX_SEGMENTS) < 0 ||
        PyModule_AddIntConstant(module, "GSO_MAX_BYTES", GSO_MAX_BYTES) < 0 ||
        PyModule_AddIntConstant(module, "MAX_BUFFER_SIZE", MAX_BUFFER_SIZE) < 0) {
        return -1;
    }
    return 0;
}

static int
core_traverse(PyObject *module, visitproc visit, void *arg)
{
    core_state *st = module_state(module);
    Py_VISIT(st->receiver_type);
    Py_VISIT(st->socket_type);
    Py_VISIT(st->family_getter);
    return 0;
}

static int
core_clear(PyObject *module)
{
    core_state *st = module_state(module);
    Py_CLEAR(st->receiver_type);
    Py_CLEAR(st->str_counters);
    Py_CLEAR(st->str_receive_error);
    Py_CLEAR(st->str_handler_failed);
    Py_CLEAR(st->str_datagrams_in);
    Py_CLEAR(st->str_bytes_in);
    Py_CLEAR(st->str_dropped_oversize);
    Py_CLEAR(st->str_dropped_on_close);
    Py_CLEAR(st->str_gro_batches);
    Py_CLEAR(st->str_kernel_drops);
    Py_CLEAR(st->str_recv_size);
    Py_CLEAR(st->str_max_size);
    Py_CLEAR(st->str_per_event);
    Py_CLEAR(st->str_batch_bytes);
    Py_CLEAR(st->socket_type);
    Py_CLEAR(st->family_getter);
    return 0;
}

static void
core_free(void *module)
{
    core_state *st = module_state((PyObject *)module);
    core_clear((PyObject *)module);
    if (st->arena != NULL) {
        munmap(st->arena, st->arena_size);
        st->arena = NULL;
        st->arena_size = 0;
    }
}

/* Multi-phase initialisation (PEP 489), state in the module object. The defaults of Python 3.12/3.13 are
 * what this module needs: it keeps the GIL (Py_mod_gil unset: a free-threaded build re-enables the GIL
 * when it is imported, which the shared arena relies on). */
static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

PyDoc_STRVAR(core_doc, "udpio's compiled I/O core: a recvmmsg receive strategy and a sendmmsg batch send backend.");

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "udpio._core",
    .m_doc = core_doc,
    .m_size = sizeof(core_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
