/* redis_paced HOST PORT RATE SECONDS CONNS PIPELINE: Redis GET/SET at a fixed offered rate.
 *
 * redis-benchmark only runs flat out, so this is the paced Redis client of
 * bench/proto_load.py. RATE is commands per second over all connections; a "request" is
 * PIPELINE commands written at once (SET and GET alternating, keys bench:0..9999, 32-byte
 * values), and a connection has one request outstanding at a time. Requests fall due on
 * a fixed schedule (RATE / PIPELINE per second); each due request goes out on an idle
 * connection. A request that finds no idle connection waits for one (`late` counts the
 * requests that left more than 1 ms after they fell due), so nothing is dropped and the rate reached falls short of RATE only when the server
 * cannot keep up. The wait between requests is epoll_pwait2's (a nanosecond timeout, so
 * no spinning and no 1 ms batching).
 *
 * Latency is per request, from its write to the end of its last reply (not from when it
 * fell due: the wait for a slot or a connection is `late`, not latency), as wrk and
 * pgbench report theirs. Prints one line:
 *   sent=N completed=N errors=N elapsed_s=X rate=Y p50_us=N p99_us=N max_us=N late=N
 * where sent/completed count commands. Bounded: the schedule ends after SECONDS and the
 * outstanding replies get at most 5 s more.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256
#define MAX_PIPE 64
#define BUF 65536

struct conn {
    int fd;
    int busy;           /* a request is outstanding */
    int replies_left;   /* replies still expected for it */
    uint64_t sent_ns;
    char buf[BUF];
    size_t len;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Length of the first complete RESP reply in buf, 0 if incomplete, -1 if malformed.
 * Replies to GET/SET are +OK, -ERR..., $-1 or $N\r\n<N bytes>\r\n. */
static long reply_len(const char *buf, size_t len)
{
    const char *eol = memmem(buf, len, "\r\n", 2);
    if (!eol)
        return 0;
    long line = eol - buf + 2;
    switch (buf[0]) {
    case '+': case '-': case ':':
        return line;
    case '$': {
        long n = strtol(buf + 1, NULL, 10);
        if (n < 0)
            return line;
        if ((size_t)(line + n + 2) > len)
            return 0;
        return line + n + 2;
    }
    default:
        return -1;
    }
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT RATE SECONDS CONNS PIPELINE\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int nconns = atoi(argv[5]), pipe_n = atoi(argv[6]);
    if (port <= 0 || rate <= 0 || seconds <= 0 || seconds > 600 || nconns < 1 || nconns > MAX_CONNS
        || pipe_n < 1 || pipe_n > MAX_PIPE) {
        fprintf(stderr, "bad arguments (CONNS 1..%d, PIPELINE 1..%d, SECONDS up to 600)\n", MAX_CONNS, MAX_PIPE);
        return 2;
    }
    uint64_t total_req = (uint64_t)(rate * seconds / pipe_n);
    if (total_req == 0)
        total_req = 1;
    double interval_ns = 1e9 * pipe_n / rate;

    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    uint32_t *lat = malloc(total_req * sizeof *lat);
    if (!conns || !lat) {
        perror("malloc");
        return 1;
    }
    int ep = epoll_create1(0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "bad host %s (an IPv4 address)\n", host);
        return 2;
    }
    for (int i = 0; i < nconns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            perror("connect");
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }

    /* one request: PIPELINE commands, SET and GET alternating over 10000 keys */
    char req[MAX_PIPE * 128];
    uint64_t issued = 0, completed = 0, errors = 0, late = 0, nlat = 0;
    uint64_t t0 = now_ns();
    uint64_t end = t0 + (uint64_t)(seconds * 1e9);
    uint64_t hard_end = end + 5000000000ull;
    unsigned key = 12345;
    int idle_rr = 0;

    while (completed < total_req) {
        uint64_t now = now_ns();
        if (now > hard_end)
            break;
        /* requests due by now that have not gone out */
        uint64_t due = (uint64_t)((double)(now - t0) / interval_ns) + 1;
        if (due > total_req)
            due = total_req;
        int all_busy = 0;
        while (issued < due) {
            int c = -1;
            for (int k = 0; k < nconns; k++) {
                int i = (idle_rr + k) % nconns;
                if (!conns[i].busy) {
                    c = i;
                    break;
                }
            }
            if (c < 0) {
                all_busy = 1; /* the rest wait for a reply to free a connection */
                break;
            }
            idle_rr = c + 1;
            size_t n = 0;
            for (int p = 0; p < pipe_n; p++) {
                key = key * 1103515245u + 12345u;
                unsigned k = (key >> 8) % 10000;
                if ((issued * pipe_n + p) & 1)
                    n += (size_t)sprintf(req + n, "*2\r\n$3\r\nGET\r\n$%d\r\nbench:%u\r\n",
                                         6 + snprintf(NULL, 0, "%u", k), k);
                else
                    n += (size_t)sprintf(req + n, "*3\r\n$3\r\nSET\r\n$%d\r\nbench:%u\r\n$32\r\n"
                                         "0123456789abcdef0123456789abcdef\r\n",
                                         6 + snprintf(NULL, 0, "%u", k), k);
            }
            conns[c].busy = 1;
            conns[c].replies_left = pipe_n;
            conns[c].sent_ns = now_ns();
            if (conns[c].sent_ns > t0 + (uint64_t)((double)issued * interval_ns) + 1000000)
                late++;
            size_t off = 0;
            while (off < n) {
                ssize_t w = write(conns[c].fd, req + off, n - off);
                if (w < 0) {
                    if (errno == EINTR)
                        continue;
                    perror("write");
                    return 1;
                }
                off += (size_t)w;
            }
            issued++;
        }
        /* wait for replies, or until the next request falls due */
        struct timespec tmo = {.tv_sec = 1};
        if (issued < total_req && !all_busy) {
            uint64_t next = t0 + (uint64_t)((double)issued * interval_ns);
            now = now_ns();
            uint64_t wait = next > now ? next - now : 0;
            tmo.tv_sec = (time_t)(wait / 1000000000ull);
            tmo.tv_nsec = (long)(wait % 1000000000ull);
        }
        struct epoll_event evs[64];
        /* epoll_pwait2 (Linux 5.11): a timeout in ns, so pacing needs no spinning */
        int ne = epoll_pwait2(ep, evs, 64, &tmo, NULL);
        for (int e = 0; e < ne; e++) {
            struct conn *cn = &conns[evs[e].data.u32];
            ssize_t r = read(cn->fd, cn->buf + cn->len, BUF - cn->len);
            if (r <= 0) {
                if (r < 0 && errno == EINTR)
                    continue;
                fprintf(stderr, "connection closed by the server\n");
                return 1;
            }
            cn->len += (size_t)r;
            size_t pos = 0;
            for (;;) {
                long l = reply_len(cn->buf + pos, cn->len - pos);
                if (l == 0)
                    break;
                if (l < 0) {
                    fprintf(stderr, "malformed reply\n");
                    return 1;
                }
                if (cn->buf[pos] == '-')
                    errors++;
                pos += (size_t)l;
                if (cn->busy && --cn->replies_left == 0) {
                    cn->busy = 0;
                    uint64_t d = (now_ns() - cn->sent_ns) / 1000;
                    lat[nlat++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
                    completed++;
                }
            }
            memmove(cn->buf, cn->buf + pos, cn->len - pos);
            cn->len -= pos;
        }
    }
    double elapsed = (double)(now_ns() - t0) / 1e9;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    uint32_t p50 = nlat ? lat[nlat / 2] : 0;
    uint32_t p99 = nlat ? lat[(nlat * 99) / 100] : 0;
    uint32_t mx = nlat ? lat[nlat - 1] : 0;
    printf("sent=%llu completed=%llu errors=%llu elapsed_s=%.3f rate=%.1f p50_us=%u p99_us=%u max_us=%u late=%llu\n",
           (unsigned long long)(issued * pipe_n), (unsigned long long)(completed * pipe_n),
           (unsigned long long)errors, elapsed, (double)(completed * pipe_n) / (seconds < elapsed ? elapsed : seconds),
           p50, p99, mx, (unsigned long long)late);
    for (int i = 0; i < nconns; i++)
        close(conns[i].fd);
    return completed == total_req ? 0 : 1;
}
