/*
 * podplumb's native thin client: the installed CNI plugin executable when a node daemon socket is
 * configured. It relays the environment and stdin to the daemon with the caller's namespaces
 * (protocol: podplumb/client.py, docs/daemon.md), and the daemon's answer and exit code back.
 *
 * When nothing has been asked of the daemon yet (no socket, a refused or busy one, a daemon that does
 * not greet in time, or an input past the bounds), it execs the Python launcher installed beside it
 * (<this executable>.py) with the same stdin: the standalone path. Once the request is sent, a failure
 * is answered with CNI error 11, within the call's time bound. libc only.
 *
 * Built by `podplumb install`: cc -O2 -DPODPLUMB_SOCKET='"/run/podplumb/cni.sock"' cni-client.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef PODPLUMB_SOCKET
#error "define PODPLUMB_SOCKET, the daemon's socket path"
#endif

#define GREETING "podplumb/1"
#define GREETING_TIMEOUT_MS 200          /* podplumb.client.GREETING_TIMEOUT */
#define BUSY_GREETING_TIMEOUT_MS 2000    /* podplumb.client.BUSY_GREETING_TIMEOUT */
#define STALL_BACKOFF_S 10               /* podplumb.client.STALL_BACKOFF */
#define REQUEST_TIMEOUT_S 120.0          /* podplumb.client.REQUEST_TIMEOUT */
#define MAX_CONFIG_BYTES (4u << 20)      /* cni.limits.MAX_CONFIG_BYTES */
#define MAX_ENV_BYTES (1u << 20)         /* podplumb.client.MAX_ENV_BYTES */
#define MAX_FRAME (64u << 20)            /* podplumb.client.MAX_FRAME */
#define TRY_AGAIN_LATER 11

extern char **environ;

struct buf {
    char *data;
    size_t len, cap;
};

static char **args;
static struct buf input;                 /* stdin, as read */

static void put(struct buf *b, const void *data, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + len)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            fputs("podplumb: out of memory\n", stderr);
            exit(1);
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void put_u32(struct buf *b, uint32_t value)
{
    unsigned char be[4] = {value >> 24, value >> 16, value >> 8, value};
    put(b, be, 4);
}

static void put_field(struct buf *b, const void *data, size_t len)
{
    put_u32(b, (uint32_t)len);
    put(b, data, len);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The standalone path: the Python launcher beside us, reading the stdin we already consumed. */
static void run_launcher(void)
{
    char launcher[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", launcher, sizeof launcher - 4);
    if (n <= 0)
        n = snprintf(launcher, sizeof launcher - 4, "%s", args[0]);
    strcpy(launcher + n, ".py");
    int fd = memfd_create("podplumb-stdin", 0);
    if (fd >= 0) {
        size_t done = 0;
        while (done < input.len) {
            ssize_t w = write(fd, input.data + done, input.len - done);
            if (w <= 0)
                break;
            done += (size_t)w;
        }
        if (done == input.len && lseek(fd, 0, SEEK_SET) == 0 && dup2(fd, 0) == 0) {
            close(fd);
            args[0] = launcher;
            execv(launcher, args);
        }
    }
    fprintf(stderr, "podplumb: cannot run %s: %s\n", launcher, strerror(errno));
    printf("{\n  \"cniVersion\": \"1.1.0\",\n  \"code\": 5,\n  \"msg\": \"podplumb: the plugin's Python launcher "
           "cannot run\",\n  \"details\": \"%s\"\n}\n", strerror(errno));
    exit(1);
}

/* The config's cniVersion when it is a plain "N.N.N" (first occurrence), else the newest. */
static void config_version(char *out, size_t size)
{
    snprintf(out, size, "1.1.0");
    const char *key = memmem(input.data ? input.data : "", input.len, "\"cniVersion\"", 12);
    if (!key)
        return;
    const char *p = key + 12, *end = input.data + input.len;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ':'))
        p++;
    if (p >= end || *p++ != '"')
        return;
    const char *start = p;
    int dots = 0, digits = 0;
    while (p < end && *p != '"' && p - start < 16) {
        if (*p == '.' && digits) {
            dots++;
            digits = 0;
        } else if (*p >= '0' && *p <= '9') {
            digits++;
        } else {
            return;
        }
        p++;
    }
    if (p < end && *p == '"' && dots == 2 && digits && (size_t)(p - start) < size)
        snprintf(out, size, "%.*s", (int)(p - start), start);
}

static void try_again(const char *details)
{
    char version[20];
    config_version(version, sizeof version);
    printf("{\n  \"cniVersion\": \"%s\",\n  \"code\": %d,\n  \"msg\": \"the podplumb node daemon did not complete "
           "the call; try again later\",\n  \"details\": \"the node daemon at %s %s\"\n}\n",
           version, TRY_AGAIN_LATER, PODPLUMB_SOCKET, details);
    exit(1);
}

static int stalled_recently(void)
{
    struct stat st;
    return stat(PODPLUMB_SOCKET ".stalled", &st) == 0 && time(NULL) - st.st_mtime >= 0
        && time(NULL) - st.st_mtime < STALL_BACKOFF_S;
}

static void mark_stalled(void)
{
    int fd = open(PODPLUMB_SOCKET ".stalled", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        char line[32];
        int n = snprintf(line, sizeof line, "%ld\n", (long)time(NULL));
        if (write(fd, line, n) < 0) {
            /* the mark is an optimisation */
        }
        close(fd);
    }
}

/* Read exactly len bytes before the deadline: 0, or -1 (errno ETIMEDOUT on time, EPIPE on EOF). */
static int read_exactly(int fd, void *into, size_t len, double deadline)
{
    char *p = into;
    while (len) {
        int wait_ms = (int)((deadline - now()) * 1000);
        if (wait_ms <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        int ready = poll(&pfd, 1, wait_ms);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready < 0)
            return -1;
        if (ready == 0)
            continue;
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0) {
            errno = EPIPE;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void read_stdin(void)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        put(&input, chunk, (size_t)n);
        if (input.len > MAX_CONFIG_BYTES)
            run_launcher();          /* it reads the rest and answers with the size error */
    }
}

static int wait_readable(int fd, int timeout_ms)
{
    double deadline = now() + timeout_ms / 1000.0;
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int wait_ms = (int)((deadline - now()) * 1000);
        int ready = poll(&pfd, 1, wait_ms > 0 ? wait_ms : 0);
        if (ready >= 0 || errno != EINTR)
            return ready > 0;
    }
}

/* Whether the process listening on fd (SO_PEERCRED) runs: not stopped, dead or invisible. A running
   daemon slow to greet (a loaded machine) is waited for a little longer. */
static int daemon_running(int fd)
{
    struct ucred peer;
    socklen_t len = sizeof peer;
    char path[64], stat[512];
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 || peer.pid <= 0)
        return 0;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)peer.pid);
    int sfd = open(path, O_RDONLY | O_CLOEXEC);
    if (sfd < 0)
        return 0;
    ssize_t n = read(sfd, stat, sizeof stat - 1);
    close(sfd);
    if (n <= 0)
        return 0;
    stat[n] = 0;
    char *paren = strrchr(stat, ')');
    return paren && paren[1] == ' ' && (paren[2] == 'R' || paren[2] == 'S' || paren[2] == 'D');
}

/* A connection the daemon has greeted, or -1: nothing was asked of it. */
static int connect_greeted(void)
{
    if (stalled_recently())
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (fd < 0 || strlen(PODPLUMB_SOCKET) >= sizeof addr.sun_path)
        return -1;
    strcpy(addr.sun_path, PODPLUMB_SOCKET);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno != ENOENT && errno != ECONNREFUSED)
            fprintf(stderr, "podplumb: node daemon at %s unusable (%s); running in-process\n", PODPLUMB_SOCKET,
                    strerror(errno));
        close(fd);
        return -1;
    }
    unsigned char frame[4 + 4 + sizeof GREETING - 1];
    if (!wait_readable(fd, GREETING_TIMEOUT_MS)
        && !(daemon_running(fd) && wait_readable(fd, BUSY_GREETING_TIMEOUT_MS - GREETING_TIMEOUT_MS))) {
        mark_stalled();
        fprintf(stderr, "podplumb: node daemon at %s did not greet in time; running in-process, and not "
                "asking it again for %ds\n", PODPLUMB_SOCKET, STALL_BACKOFF_S);
        close(fd);
        return -1;
    }
    if (read_exactly(fd, frame, sizeof frame, now() + BUSY_GREETING_TIMEOUT_MS / 1000.0) != 0) {
        fprintf(stderr, "podplumb: node daemon at %s unusable (%s); running in-process\n", PODPLUMB_SOCKET,
                strerror(errno));
        close(fd);
        return -1;
    }
    if (be32(frame) != 4 + sizeof GREETING - 1 || be32(frame + 4) != sizeof GREETING - 1
        || memcmp(frame + 8, GREETING, sizeof GREETING - 1) != 0) {
        fprintf(stderr, "podplumb: node daemon at %s sent an unexpected greeting; running in-process\n",
                PODPLUMB_SOCKET);
        close(fd);
        return -1;
    }
    return fd;
}

/* [plugin name, stdin, key1, value1, ...]; 0, or -1 when the environment is past its bound. */
static int build_request(struct buf *frame, const char *name)
{
    struct buf payload = {0};
    put_field(&payload, name, strlen(name));
    put_field(&payload, input.data ? input.data : "", input.len);
    size_t env_bytes = 0;
    char cwd[PATH_MAX];
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        const char *value = eq + 1;
        char absolute[PATH_MAX];
        /* the daemon's working directory is not ours */
        if (strncmp(*e, "CNI_NETNS=", 10) == 0 && value[0] && value[0] != '/' && getcwd(cwd, sizeof cwd)
            && snprintf(absolute, sizeof absolute, "%s/%s", cwd, value) < (int)sizeof absolute)
            value = absolute;
        env_bytes += 8 + (size_t)(eq - *e) + strlen(value);
        if (env_bytes > MAX_ENV_BYTES)
            return -1;
        put_field(&payload, *e, (size_t)(eq - *e));
        put_field(&payload, value, strlen(value));
    }
    put_u32(frame, (uint32_t)payload.len);
    put(frame, payload.data, payload.len);
    free(payload.data);
    return 0;
}

static void send_request(int fd, struct buf *frame, double deadline)
{
    static const char *const namespaces[] = {"/proc/self/ns/net", "/proc/self/ns/mnt", "/proc/self/root"};
    int fds[3], count = 0;
    for (; count < 3; count++) {
        fds[count] = open(namespaces[count], O_RDONLY | O_CLOEXEC);
        if (fds[count] < 0)
            break;
    }
    if (count < 3) {        /* the daemon then opens them through our pid */
        while (count > 0)
            close(fds[--count]);
    }
    union {
        char space[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    size_t first = frame->len < 65536 ? frame->len : 65536;
    struct iovec iov = {frame->data, first};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (count) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.space;
        msg.msg_controllen = CMSG_SPACE(sizeof fds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof fds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
    }
    size_t sent = 0;
    while (sent < frame->len) {
        int wait_ms = (int)((deadline - now()) * 1000);
        struct pollfd pfd = {fd, POLLOUT, 0};
        if (wait_ms <= 0)
            try_again("did not take the request in time");
        if (poll(&pfd, 1, wait_ms) <= 0)
            continue;
        ssize_t n;
        if (sent == 0) {
            n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        } else {
            n = send(fd, frame->data + sent, frame->len - sent, MSG_NOSIGNAL);
        }
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0) {
            char details[160];
            snprintf(details, sizeof details, "failed during the call: %s", strerror(errno));
            try_again(details);
        }
        sent += (size_t)n;
    }
    for (int i = 0; i < count; i++)
        close(fds[i]);
}

static void write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

/* The reply [exit code, stdout, stderr]: relayed; its exit code returned. */
static int relay_reply(int fd, double timeout)
{
    double deadline = now() + timeout;
    unsigned char header[4];
    char details[160];
    if (read_exactly(fd, header, 4, deadline) != 0)
        goto failed;
    uint32_t size = be32(header);
    if (size > MAX_FRAME) {
        errno = EMSGSIZE;
        goto failed;
    }
    char *payload = malloc(size ? size : 1);
    if (!payload || read_exactly(fd, payload, size, deadline) != 0)
        goto failed;
    const char *fields[3];
    uint32_t lengths[3];
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
        if (at + 4 > size || be32((unsigned char *)payload + at) > size - at - 4) {
            errno = EPROTO;
            goto failed;
        }
        lengths[i] = be32((unsigned char *)payload + at);
        fields[i] = payload + at + 4;
        at += 4 + lengths[i];
    }
    if (at != size || lengths[0] == 0 || lengths[0] > 3) {
        errno = EPROTO;
        goto failed;
    }
    int code = 0;
    for (uint32_t i = 0; i < lengths[0]; i++) {
        if (fields[0][i] < '0' || fields[0][i] > '9') {
            errno = EPROTO;
            goto failed;
        }
        code = code * 10 + (fields[0][i] - '0');
    }
    write_all(2, fields[2], lengths[2]);
    write_all(1, fields[1], lengths[1]);
    return code;
failed:
    if (errno == ETIMEDOUT)
        snprintf(details, sizeof details, "did not answer within %gs", timeout);
    else
        snprintf(details, sizeof details, "failed during the call: %s", strerror(errno));
    try_again(details);
    return 1;
}

static double request_timeout(void)
{
    const char *value = getenv("PODPLUMB_DAEMON_TIMEOUT");
    char *end;
    double timeout = value ? strtod(value, &end) : 0;
    return value && *value && !*end && timeout > 0 ? timeout : REQUEST_TIMEOUT_S;
}

int main(int argc, char **argv)
{
    (void)argc;
    args = argv;
    read_stdin();
    int fd = connect_greeted();
    if (fd < 0)
        run_launcher();
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    const char *name = strrchr(n > 0 ? exe : argv[0], '/');
    name = name ? name + 1 : (n > 0 ? exe : argv[0]);
    struct buf frame = {0};
    if (build_request(&frame, name) != 0) {
        close(fd);                   /* nothing asked yet: the launcher answers with the bound */
        run_launcher();
    }
    double timeout = request_timeout();
    send_request(fd, &frame, now() + timeout);
    int code = relay_reply(fd, timeout);
    fflush(stdout);
    return code;
}
