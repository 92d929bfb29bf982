/*
 * radblast: a RADIUS load generator that costs the machine little, for benchmarks.
 *
 * radclient spends 90-130 us of CPU per request (it parses a text file of attributes,
 * and builds and signs every packet): on a 2-core machine it takes a core of its own,
 * and the server under test gets what is left. radblast sends packets built
 * beforehand (benchmarks/radius_blast.py builds them: Message-Authenticator, hidden
 * User-Password, accounting Request Authenticators), a batch per system call
 * (sendmmsg, recvmmsg), and matches each reply to its request by the identifier.
 *
 * Input: a file of chains. A chain is a sequence of packets sent one after another,
 * each once the reply to the one before it came (a call: Access-Request, then
 * Accounting Start, then Stop), or a single Access-Request. PARALLEL slots run at
 * once; slot w runs chains w, w + PARALLEL, w + 2 * PARALLEL, ... in turn, and every
 * packet of slot w carries identifier w (the builder sets it), so that no two
 * packets in flight share one. A packet not answered within TIMEOUT_MS is sent again,
 * RETRIES times at most; then its chain counts as failed and the slot moves on.
 *
 *   cc -O2 -o radblast radblast.c
 *   radblast FILE HOST PARALLEL TIMEOUT_MS RETRIES [RATE]
 *
 * With RATE (packets a second), a fixed-rate run instead: every chain is one packet,
 * sent at its time whether or not earlier ones were answered (no waiting on a slow
 * server, which would hide its delays), packet i on socket i % PARALLEL; the builder
 * gives it identifier (i / PARALLEL) % 256, so an identifier comes back to a socket
 * after 256 * PARALLEL packets. A packet not answered within TIMEOUT_MS of the last
 * send counts as lost; nothing is sent again.
 *
 * File format (little-endian): "RBL1", u32 chains; then per chain: u8 packets; then
 * per packet: u16 destination port, u16 length, the packet's bytes.
 *
 * Prints one JSON object: elapsed seconds, chains done and failed, packets sent,
 * retransmissions, replies by RADIUS code, and reply latency p50/p99/max (ms); at a
 * fixed rate, packets sent, answered and lost, latency p50/p99/p99.9/max (ms), and each
 * tenth of a second whose slowest reply took over 5 ms (when the tail happened).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_REPLY 4096
#define WINDOWS 600
#define SLOW_WINDOW_MS 5.0

struct packet {
    uint16_t port;
    uint16_t length;
    const uint8_t *bytes;
};

struct chain {
    uint8_t count;
    struct packet *packets;
};

struct slot {
    long chain;     /* index of the chain it runs, -1 when done */
    int step;       /* packet of the chain in flight */
    int tries;      /* sends of that packet so far */
    double sent_at; /* when it was last sent */
    int queued;     /* waiting in the send batch */
};

/* Move a slot on to its next chain; 0 when it has none left (it is done). */
static int next_chain(struct slot *s, int parallel, uint32_t chains_total) {
    s->step = 0;
    s->chain += parallel;
    if (s->chain >= (long)chains_total) {
        s->chain = -1;
        return 0;
    }
    return 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint8_t *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc(*size);
    if (!data || fread(data, 1, *size, f) != *size) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    return data;
}

/* The end of the JSON result: replies by RADIUS code, and the closing brace. */
static void print_codes(const long *replies_by_code) {
    printf("\"codes\": {");
    int first = 1;
    for (int c = 0; c < 256; c++) {
        if (replies_by_code[c]) {
            printf("%s\"%d\": %ld", first ? "" : ", ", c, replies_by_code[c]);
            first = 0;
        }
    }
    printf("}}\n");
}

static double percentile(const double *sorted, long count, double q) {
    return count ? sorted[(long)(count * q) < count ? (long)(count * q) : count - 1] : 0;
}

/* The fixed-rate run: chains[i]'s one packet sent at started + i / rate. */
static int fixed_rate(struct chain *chains, uint32_t count, struct sockaddr_in server,
                      int sockets, double timeout, double rate) {
    int fds[256];
    int buffer = 4 << 20;
    /* epoll, not poll: a wake-up costs the same with 256 sockets as with one. */
    int ep = epoll_create1(0);
    for (int k = 0; k < sockets; k++) {
        fds[k] = socket(AF_INET, SOCK_DGRAM, 0);
        setsockopt(fds[k], SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
        struct epoll_event event = {.events = EPOLLIN, .data.u32 = (uint32_t)k};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[k], &event);
    }
    struct epoll_event ready[256];
    /* The slowest reply to the packets sent in each tenth of a second (the first 60 s). */
    static double slowest[WINDOWS];
    /* The packet last sent on each socket with each identifier. */
    static long last[256][256];
    double *sent_at = calloc(count, sizeof(double));
    uint8_t *answered = calloc(count, 1);
    double *latencies = malloc(sizeof(double) * (count + 1));
    long replies_by_code[256] = {0};
    long latency_count = 0, sent = 0, send_errors = 0;
    uint8_t reply[MAX_REPLY];
    struct sockaddr_in address = server;
    double started = now();
    uint32_t next = 0;
    for (;;) {
        double t = now();
        while (next < count && started + next / rate <= t) {
            struct packet *p = &chains[next].packets[0];
            int k = next % sockets;
            address.sin_port = htons(p->port);
            if (sendto(fds[k], p->bytes, p->length, 0, (struct sockaddr *)&address,
                       sizeof address) < 0) {
                send_errors++;
            } else {
                sent++;
            }
            sent_at[next] = t;
            last[k][p->bytes[1]] = next;
            next++;
        }
        if (next >= count && t - (started + (count - 1) / rate) > timeout)
            break;
        double wait = next < count ? started + next / rate - now() : 0.001;
        struct timespec ts = {0, 0};
        if (wait > 0) {
            ts.tv_sec = (time_t)wait;
            ts.tv_nsec = (long)((wait - ts.tv_sec) * 1e9);
        }
        int count_ready = epoll_pwait2(ep, ready, 256, &ts, NULL);
        if (count_ready <= 0)
            continue;
        t = now();
        for (int r = 0; r < count_ready; r++) {
            int k = (int)ready[r].data.u32;
            for (;;) {
                ssize_t got = recv(fds[k], reply, sizeof reply, MSG_DONTWAIT);
                if (got < 20)
                    break;
                long i = last[k][reply[1]];
                if (answered[i] || t - sent_at[i] > timeout)
                    continue;
                answered[i] = 1;
                replies_by_code[reply[0]]++;
                {
                    long window = (long)((sent_at[i] - started) * 10);
                    if (window >= 0 && window < WINDOWS && t - sent_at[i] > slowest[window])
                        slowest[window] = t - sent_at[i];
                }
                latencies[latency_count++] = (t - sent_at[i]) * 1000.0;
            }
        }
    }
    double elapsed = now() - started;
    qsort(latencies, latency_count, sizeof(double), compare_doubles);
    printf("{\"rate\": %.0f, \"elapsed\": %.6f, \"sent\": %ld, \"send_errors\": %ld, "
           "\"answered\": %ld, \"lost\": %ld, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
           "\"p999_ms\": %.3f, \"max_ms\": %.3f, ",
           rate, elapsed, sent, send_errors, latency_count, (long)count - latency_count,
           percentile(latencies, latency_count, 0.5), percentile(latencies, latency_count, 0.99),
           percentile(latencies, latency_count, 0.999),
           latency_count ? latencies[latency_count - 1] : 0);
    int first = 1;
    /* Each tenth of a second whose slowest reply took longer than SLOW_WINDOW_MS: when
       the tail happened (seconds from the start, ms). */
    printf("\"slow_windows\": [");
    for (int w = 0; w < WINDOWS; w++) {
        if (slowest[w] * 1000.0 > SLOW_WINDOW_MS) {
            printf("%s[%.1f, %.1f]", first ? "" : ", ", w / 10.0, slowest[w] * 1000.0);
            first = 0;
        }
    }
    printf("], ");
    print_codes(replies_by_code);
    return 0;
}

/* Send the packet each queued slot is at, BATCH per system call; the packets sent, or
   -1 on an error other than a full buffer (what a full buffer leaves is sent again). */
static long send_queued(int fd, struct slot *slots, struct chain *chains, const int *queue,
                        int queued, struct sockaddr_in server) {
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    struct sockaddr_in addresses[BATCH];
    long sent = 0;
    int from = 0;
    while (from < queued) {
        int n = queued - from < BATCH ? queued - from : BATCH;
        double t = now();
        for (int i = 0; i < n; i++) {
            struct slot *s = &slots[queue[from + i]];
            struct packet *p = &chains[s->chain].packets[s->step];
            addresses[i] = server;
            addresses[i].sin_port = htons(p->port);
            vectors[i].iov_base = (void *)p->bytes;
            vectors[i].iov_len = p->length;
            memset(&messages[i], 0, sizeof messages[i]);
            messages[i].msg_hdr.msg_name = &addresses[i];
            messages[i].msg_hdr.msg_namelen = sizeof addresses[i];
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            s->sent_at = t;
            s->tries++;
            s->queued = 0;
        }
        int written = sendmmsg(fd, messages, n, 0);
        if (written < 0) {
            if (errno != EAGAIN && errno != ENOBUFS) {
                perror("sendmmsg");
                return -1;
            }
            written = 0; /* left for the retransmission sweep */
        }
        sent += written;
        from += n;
    }
    return sent;
}

/* The chains of a radblast file (format in the header comment); NULL if malformed. */
static struct chain *read_chains(const uint8_t *data, size_t size, uint32_t *count,
                                 long *packets) {
    if (size < 8 || memcmp(data, "RBL1", 4) != 0)
        return NULL;
    memcpy(count, data + 4, 4);
    struct chain *chains = calloc(*count, sizeof *chains);
    size_t at = 8;
    *packets = 0;
    for (uint32_t c = 0; c < *count; c++) {
        if (at >= size)
            return NULL;
        chains[c].count = data[at++];
        chains[c].packets = calloc(chains[c].count, sizeof(struct packet));
        for (int p = 0; p < chains[c].count; p++) {
            struct packet *packet = &chains[c].packets[p];
            if (at + 4 > size)
                return NULL;
            memcpy(&packet->port, data + at, 2);
            memcpy(&packet->length, data + at + 2, 2);
            packet->bytes = data + at + 4;
            at += 4 + packet->length;
            if (at > size)
                return NULL;
            (*packets)++;
        }
    }
    return chains;
}

/* The chained run: PARALLEL slots, each sending its chains' packets one after another. */
static int chained(struct chain *chains, uint32_t chains_total, long packets_total,
                   struct sockaddr_in server, int parallel, double timeout, int retries) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int buffer = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);

    struct slot *slots = calloc(parallel, sizeof *slots);
    double *latencies = malloc(sizeof(double) * (packets_total + 1));
    long replies_by_code[256] = {0};
    long latency_count = 0, done = 0, failed = 0, sent = 0, retransmits = 0;
    int active = 0;
    int queue[256];
    int queued = 0;
    for (int w = 0; w < parallel; w++) {
        slots[w].chain = w < (long)chains_total ? w : -1;
        if (slots[w].chain >= 0) {
            active++;
            slots[w].queued = 1;
            queue[queued++] = w;
        }
    }

    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    static uint8_t replies[BATCH][MAX_REPLY];
    struct sockaddr_in sources[BATCH];
    double started = now();
    double last_sweep = started;

    while (active > 0) {
        long written = send_queued(fd, slots, chains, queue, queued, server);
        if (written < 0)
            return 1;
        sent += written;
        queued = 0;

        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        poll(&pfd, 1, 10);
        for (;;) {
            for (int i = 0; i < BATCH; i++) {
                vectors[i].iov_base = replies[i];
                vectors[i].iov_len = MAX_REPLY;
                memset(&messages[i], 0, sizeof messages[i]);
                messages[i].msg_hdr.msg_name = &sources[i];
                messages[i].msg_hdr.msg_namelen = sizeof sources[i];
                messages[i].msg_hdr.msg_iov = &vectors[i];
                messages[i].msg_hdr.msg_iovlen = 1;
            }
            int got = recvmmsg(fd, messages, BATCH, MSG_DONTWAIT, NULL);
            if (got <= 0)
                break;
            double t = now();
            for (int i = 0; i < got; i++) {
                if (messages[i].msg_len < 20)
                    continue;
                int w = replies[i][1];
                if (w >= parallel)
                    continue;
                struct slot *s = &slots[w];
                if (s->chain < 0 || s->queued)
                    continue;
                struct packet *p = &chains[s->chain].packets[s->step];
                if (ntohs(sources[i].sin_port) != p->port)
                    continue; /* a late reply to an earlier packet of this slot */
                replies_by_code[replies[i][0]]++;
                latencies[latency_count++] = (t - s->sent_at) * 1000.0;
                s->tries = 0;
                if (++s->step >= chains[s->chain].count) {
                    done++;
                    if (!next_chain(s, parallel, chains_total)) {
                        active--;
                        continue;
                    }
                }
                s->queued = 1;
                queue[queued++] = w;
            }
            if (got < BATCH)
                break;
        }

        double t = now();
        if (t - last_sweep >= 0.01) {
            last_sweep = t;
            for (int w = 0; w < parallel; w++) {
                struct slot *s = &slots[w];
                if (s->chain < 0 || s->queued || t - s->sent_at < timeout)
                    continue;
                if (s->tries > retries) {
                    failed++;
                    s->tries = 0;
                    if (!next_chain(s, parallel, chains_total)) {
                        active--;
                        continue;
                    }
                } else {
                    retransmits++;
                }
                s->queued = 1;
                queue[queued++] = w;
            }
        }
    }
    double elapsed = now() - started;
    qsort(latencies, latency_count, sizeof(double), compare_doubles);
    double p50 = percentile(latencies, latency_count, 0.5);
    double p99 = percentile(latencies, latency_count, 0.99);
    double max = latency_count ? latencies[latency_count - 1] : 0;
    printf("{\"elapsed\": %.6f, \"chains\": %u, \"done\": %ld, \"failed\": %ld, "
           "\"sent\": %ld, \"retransmits\": %ld, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
           "\"max_ms\": %.3f, ",
           elapsed, chains_total, done, failed, sent, retransmits, p50, p99, max);
    print_codes(replies_by_code);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: radblast FILE HOST PARALLEL TIMEOUT_MS RETRIES [RATE]\n");
        return 2;
    }
    size_t size;
    uint8_t *data = read_file(argv[1], &size);
    int parallel = atoi(argv[3]);
    double timeout = atoi(argv[4]) / 1000.0;
    int retries = atoi(argv[5]);
    uint32_t chains_total;
    long packets_total;
    struct chain *chains = read_chains(data, size, &chains_total, &packets_total);
    if (parallel < 1 || parallel > 256 || chains == NULL) {
        fprintf(stderr, "bad arguments or file\n");
        return 2;
    }
    struct sockaddr_in server = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, argv[2], &server.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", argv[2]);
        return 2;
    }
    if (argc == 7)
        return fixed_rate(chains, chains_total, server, parallel, timeout, atof(argv[6]));
    return chained(chains, chains_total, packets_total, server, parallel, timeout, retries);
}
