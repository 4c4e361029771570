/*
 * labnet CNI shim: installed as /opt/cni/bin/labnet and /opt/cni/bin/labnet-ipam.
 *
 * A thin client of the node's CNI server, as Cilium's CNI binary is of cilium-agent: it
 * forwards the CNI_* environment, PATH and the config on stdin over the unix socket
 * /var/run/labnet/cni.sock, and hands back the server's stdout, stderr and exit status.
 * Without a server (no socket, connection refused) it execv()s the Python plugin installed
 * next to it (/opt/cni/bin/.<name>-py) with the same argv and environment and stdin untouched,
 * so the plugin works with or without the server. A server that dies before answering also
 * gets the Python plugin (stdin replayed from a memfd; ADD and DEL are idempotent); one that
 * does not answer within LABNET_CNI_TIMEOUT seconds (60) gives CNI error 11.
 *
 * The pod's netns (CNI_NETNS) is opened here, in the runtime's mount namespace, and its fd goes
 * with the request's first bytes (SCM_RIGHTS): the server's mount namespace may not have the path.
 *
 * Wire format: see labnet/cni/framing.py (kept in step with this file).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/var/run/labnet/cni.sock"
#define DEFAULT_TIMEOUT_MS 60000
#define MAX_STDIN (16u << 20)
#define MAX_STDOUT (16u << 20)
#define MAX_STDERR (1u << 20)
#define MAX_ENV 256
#define MAX_ENV_ITEM (64u << 10)

extern char **environ;

static char **g_argv;
static char g_dir[PATH_MAX] = ".";
static char g_name[NAME_MAX + 1] = "labnet";
static char g_version[16] = "1.0.0";

struct buf {
    unsigned char *data;
    size_t len, cap;
};

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* A CNI error on stdout, exit 1. */
static void fail(int code, const char *msg, const char *details) {
    printf("{\"cniVersion\": ");
    json_str(stdout, g_version);
    printf(", \"code\": %d, \"msg\": ", code);
    json_str(stdout, msg);
    if (details && *details) {
        printf(", \"details\": ");
        json_str(stdout, details);
    }
    printf("}\n");
    fflush(stdout);
    exit(1);
}

static void failf(int code, const char *msg, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void failf(int code, const char *msg, const char *fmt, ...) {
    char details[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(details, sizeof details, fmt, ap);
    va_end(ap);
    fail(code, msg, details);
}

static void buf_put(struct buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *d = realloc(b->data, cap);
        if (!d)
            fail(5, "labnet CNI shim: out of memory", NULL);
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void buf_u32(struct buf *b, uint32_t v) {
    unsigned char be[4] = {v >> 24, v >> 16, v >> 8, v};
    buf_put(b, be, 4);
}

static void buf_field(struct buf *b, const void *p, size_t n) {
    buf_u32(b, (uint32_t)n);
    buf_put(b, p, n);
}

/* Where this binary is and what it is called: the fallback sits next to it. */
static void find_self(void) {
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n > 0) {
        path[n] = 0;
        const char *gone = " (deleted)"; /* re-installed while we run: the name is still ours */
        size_t glen = strlen(gone);
        if ((size_t)n > glen && strcmp(path + n - glen, gone) == 0)
            path[n - glen] = 0;
    } else if (g_argv[0] && strlen(g_argv[0]) < sizeof path) {
        strcpy(path, g_argv[0]);
    } else {
        return;
    }
    char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (*base && strlen(base) < sizeof g_name)
        strcpy(g_name, base);
    if (slash) {
        *slash = 0;
        snprintf(g_dir, sizeof g_dir, "%s", slash == path ? "/" : path);
    }
}

/* Replace this process with the Python plugin; stdin_fd >= 0 becomes its stdin. */
static void exec_fallback(int stdin_fd) {
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/.%s-py", g_dir, g_name) >= (int)sizeof path)
        fail(5, "labnet CNI shim: fallback plugin path too long", g_dir);
    if (stdin_fd >= 0) {
        if (dup2(stdin_fd, 0) < 0)
            failf(5, "labnet CNI shim: cannot replay stdin", "dup2: %s", strerror(errno));
        close(stdin_fd);
    }
    execv(path, g_argv);
    failf(5, "labnet CNI shim: no CNI server and the Python plugin cannot be run", "execv %s: %s", path,
          strerror(errno));
}

/* The stdin bytes already read, replayed to the fallback through a memfd. */
static void exec_fallback_with(const struct buf *in) {
    int fd = memfd_create("labnet-cni-stdin", 0);
    if (fd < 0)
        failf(11, "labnet CNI server went away and stdin cannot be replayed", "memfd_create: %s", strerror(errno));
    size_t off = 0;
    while (off < in->len) {
        ssize_t w = write(fd, in->data + off, in->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            failf(11, "labnet CNI server went away and stdin cannot be replayed", "write: %s", strerror(errno));
        off += (size_t)w;
    }
    if (lseek(fd, 0, SEEK_SET) < 0)
        failf(11, "labnet CNI server went away and stdin cannot be replayed", "lseek: %s", strerror(errno));
    exec_fallback(fd);
}

static void read_stdin(struct buf *in) {
    if (isatty(0))
        return;
    unsigned char chunk[65536];
    for (;;) {
        ssize_t r = read(0, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            if (errno == EBADF)
                return; /* no stdin at all: an empty config, as the Python plugin sees it */
            failf(5, "labnet CNI shim: cannot read the network configuration on stdin", "%s", strerror(errno));
        }
        if (r == 0)
            return;
        if (in->len + (size_t)r > MAX_STDIN)
            failf(6, "network configuration on stdin is too large", "more than %u bytes", MAX_STDIN);
        buf_put(in, chunk, (size_t)r);
    }
}

/* The config's cniVersion, for our own error JSON (a cheap scan; the server parses properly). */
static void sniff_version(const struct buf *in) {
    const char *key = "\"cniVersion\"";
    size_t klen = strlen(key);
    for (size_t i = 0; i + klen < in->len; i++) {
        if (memcmp(in->data + i, key, klen) != 0)
            continue;
        size_t j = i + klen;
        while (j < in->len && (in->data[j] == ' ' || in->data[j] == ':' || in->data[j] == '\t'))
            j++;
        if (j >= in->len || in->data[j] != '"')
            return;
        size_t k = ++j, n = 0;
        while (k < in->len && n < sizeof g_version - 1 && ((in->data[k] >= '0' && in->data[k] <= '9') || in->data[k] == '.'))
            k++, n++;
        if (n > 0 && k < in->len && in->data[k] == '"') {
            memcpy(g_version, in->data + j, n);
            g_version[n] = 0;
        }
        return;
    }
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for `events` on fd until the deadline: 1 ready, 0 timed out. */
static int wait_fd(int fd, short events, long long deadline) {
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return 1; /* let the following send/recv report the error */
        if (r > 0)
            return 1;
    }
}

enum io { IO_OK, IO_EOF, IO_TIMEOUT, IO_ERROR };

static enum io send_all(int fd, const unsigned char *p, size_t n, long long deadline) {
    while (n > 0) {
        if (!wait_fd(fd, POLLOUT, deadline))
            return IO_TIMEOUT;
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (w < 0)
            return IO_ERROR;
        p += w;
        n -= (size_t)w;
    }
    return IO_OK;
}

/* The first bytes of the request with `nsfd` attached; how many went (0 on error). */
static enum io send_with_fd(int fd, const unsigned char *p, size_t n, int nsfd, long long deadline, size_t *sent) {
    char control[CMSG_SPACE(sizeof(int))];
    memset(control, 0, sizeof control);
    struct iovec iov = {(void *)p, n};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &nsfd, sizeof(int));
    for (;;) {
        if (!wait_fd(fd, POLLOUT, deadline))
            return IO_TIMEOUT;
        ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (w < 0)
            return IO_ERROR;
        *sent = (size_t)w;
        return IO_OK;
    }
}

static size_t g_received; /* response bytes so far: 0 means the server never started answering */

static enum io recv_all(int fd, unsigned char *p, size_t n, long long deadline) {
    while (n > 0) {
        if (!wait_fd(fd, POLLIN, deadline))
            return IO_TIMEOUT;
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r < 0)
            return IO_ERROR;
        if (r == 0)
            return IO_EOF;
        p += r;
        n -= (size_t)r;
        g_received += (size_t)r;
    }
    return IO_OK;
}

static int timeout_s;

static void check_io(enum io st, const struct buf *in, const char *sock_path) {
    if (st == IO_OK)
        return;
    if (st == IO_TIMEOUT)
        failf(11, "labnet CNI server did not answer", "no answer from %s within %d s", sock_path, timeout_s);
    if (g_received == 0)
        exec_fallback_with(in); /* the server went away before answering: do it ourselves */
    failf(11, "labnet CNI server broke off its answer", "%s: %s after %zu bytes", sock_path,
          st == IO_EOF ? "connection closed" : strerror(errno), g_received);
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the runtime closed its end: nothing left to tell it */
        p += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv) {
    (void)argc;
    g_argv = argv;
    find_self();
    const char *sock_path = getenv("LABNET_CNI_SOCKET");
    if (!sock_path || !*sock_path)
        sock_path = DEFAULT_SOCKET;
    const char *t = getenv("LABNET_CNI_TIMEOUT");
    timeout_s = t && atoi(t) > 0 ? atoi(t) : DEFAULT_TIMEOUT_MS / 1000;

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof addr.sun_path)
        exec_fallback(-1);
    strcpy(addr.sun_path, sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        exec_fallback(-1);
    /* The whole exchange, connect included, has one deadline. A unix-socket connect fails with
     * EAGAIN while the server's backlog is full (a stopped server): retry until the deadline. */
    long long deadline = now_ms() + (long long)timeout_s * 1000;
    useconds_t pause = 1000;
    for (;;) {
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN) {
            close(fd);
            exec_fallback(-1); /* no server: the Python plugin, stdin untouched */
        }
        if (now_ms() >= deadline)
            failf(11, "labnet CNI server did not answer", "%s accepts no connection within %d s", sock_path,
                  timeout_s);
        usleep(pause);
        if (pause < 50000)
            pause *= 2;
    }

    struct buf in = {0}, req = {0};
    read_stdin(&in);
    sniff_version(&in);

    uint32_t nfields = 2;
    for (char **e = environ; *e; e++)
        if ((!strncmp(*e, "CNI_", 4) || !strncmp(*e, "PATH=", 5)) && strlen(*e) <= MAX_ENV_ITEM)
            nfields++;
    if (nfields > MAX_ENV + 2)
        failf(4, "too many CNI_* environment variables", "%u; at most %d", nfields - 2, MAX_ENV);
    buf_put(&req, "LNC1", 4);
    buf_u32(&req, nfields);
    buf_field(&req, g_name, strlen(g_name));
    buf_field(&req, in.data ? in.data : (unsigned char *)"", in.len);
    for (char **e = environ; *e; e++)
        if ((!strncmp(*e, "CNI_", 4) || !strncmp(*e, "PATH=", 5)) && strlen(*e) <= MAX_ENV_ITEM)
            buf_field(&req, *e, strlen(*e));

    /* O_NONBLOCK: a path that is a FIFO must not hang the shim; a netns file does not care */
    const char *netns = getenv("CNI_NETNS");
    int nsfd = netns && *netns ? open(netns, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC) : -1;
    size_t sent = 0;
    if (nsfd >= 0) { /* else the server tries the path itself and says what is wrong with it */
        check_io(send_with_fd(fd, req.data, 4, nsfd, deadline, &sent), &in, sock_path);
        close(nsfd);
    }
    check_io(send_all(fd, req.data + sent, req.len - sent, deadline), &in, sock_path);
    shutdown(fd, SHUT_WR);

    unsigned char head[12];
    check_io(recv_all(fd, head, 12, deadline), &in, sock_path);
    if (memcmp(head, "LNR1", 4) != 0)
        failf(11, "labnet CNI server sent a malformed answer", "bad magic from %s", sock_path);
    uint32_t status = be32(head + 4), out_len = be32(head + 8);
    if (out_len > MAX_STDOUT)
        failf(11, "labnet CNI server sent a malformed answer", "stdout of %u bytes", out_len);
    unsigned char *out = malloc(out_len + 1);
    if (!out)
        fail(5, "labnet CNI shim: out of memory", NULL);
    check_io(recv_all(fd, out, out_len, deadline), &in, sock_path);
    unsigned char elen[4];
    check_io(recv_all(fd, elen, 4, deadline), &in, sock_path);
    uint32_t err_len = be32(elen);
    if (err_len > MAX_STDERR)
        failf(11, "labnet CNI server sent a malformed answer", "stderr of %u bytes", err_len);
    unsigned char *err = malloc(err_len + 1);
    if (!err)
        fail(5, "labnet CNI shim: out of memory", NULL);
    check_io(recv_all(fd, err, err_len, deadline), &in, sock_path);
    close(fd);
    write_all(2, err, err_len);
    write_all(1, out, out_len);
    return (int)(status & 0xff);
}
