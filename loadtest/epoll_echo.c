/*
 * epoll_echo: the benchmark's practical-ceiling reference, a minimal TCP echo server in C.
 *
 *     cc -O2 -o epoll_echo loadtest/epoll_echo.c && ./epoll_echo [HOST [PORT]]
 *
 * One thread, one level-triggered epoll set, non-blocking sockets, TCP_NODELAY, a 1024
 * backlog, and one 64 KiB read buffer shared by every connection: the same shape as
 * echo-service's scheduler, with no interpreter in the way. Per message: one read, one
 * write. When a write is partial, the rest is copied to the connection and the socket
 * waits for EPOLLOUT only, reading nothing more until its echo drained (as echo-service
 * does), so a client that never reads costs one buffer. EOF: FIN after the echo is out.
 *
 * It prints "LISTENING HOST PORT" once it listens (loadtest.bench reads that line) and
 * runs until killed. A benchmark fixture, not a product: no limits, no logging.
 * The soft RLIMIT_NOFILE is raised to the hard limit, for the 10,000-idle scenario.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFFER_SIZE 65536
#define BACKLOG 1024
#define MAX_EVENTS 256

struct conn {
    int fd;
    char *owed;   /* what a partial write left over, or NULL */
    size_t owed_len;
    size_t owed_off;
};

static char buffer[BUFFER_SIZE];

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void close_conn(int epfd, struct conn *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->owed);
    free(c);
}

/* Write what is owed; 1 when all is out, 0 when the socket is full, -1 on error. */
static int flush_owed(struct conn *c) {
    while (c->owed_off < c->owed_len) {
        ssize_t n = write(c->fd, c->owed + c->owed_off, c->owed_len - c->owed_off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        }
        c->owed_off += (size_t)n;
    }
    free(c->owed);
    c->owed = NULL;
    c->owed_len = c->owed_off = 0;
    return 1;
}

static void watch(int epfd, struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl MOD");
}

/* The connection is readable: echo one read. Returns 0 to keep it, -1 to close it. */
static int on_readable(int epfd, struct conn *c) {
    ssize_t got = read(c->fd, buffer, sizeof buffer);
    if (got < 0) return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
    if (got == 0) {
        shutdown(c->fd, SHUT_WR); /* nothing is owed here: FIN, then close */
        return -1;
    }
    ssize_t sent = write(c->fd, buffer, (size_t)got);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
        sent = 0;
    }
    if (sent < got) {
        c->owed_len = (size_t)(got - sent);
        c->owed_off = 0;
        c->owed = malloc(c->owed_len);
        if (c->owed == NULL) return -1;
        memcpy(c->owed, buffer + sent, c->owed_len);
        watch(epfd, c, EPOLLOUT); /* read nothing more until the echo drained */
    }
    return 0;
}

static int listen_on(const char *host, const char *port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *found;
    int rc = getaddrinfo(host, port, &hints, &found);
    if (rc != 0) {
        fprintf(stderr, "epoll_echo: %s: %s\n", host, gai_strerror(rc));
        exit(2);
    }
    int fd = socket(found->ai_family, found->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, found->ai_addr, found->ai_addrlen) < 0) die("bind");
    freeaddrinfo(found);
    if (listen(fd, BACKLOG) < 0) die("listen");
    return fd;
}

static void print_listening(int fd) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    char text[INET6_ADDRSTRLEN];
    int port;
    if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0) die("getsockname");
    if (addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addr;
        inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
        port = ntohs(a->sin6_port);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&addr;
        inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
        port = ntohs(a->sin_port);
    }
    printf("LISTENING %s %d\n", text, port);
    fflush(stdout);
}

static void accept_all(int epfd, int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or out of descriptors: try again at the next event */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

int main(int argc, char **argv) {
    const char *host = argc > 1 ? argv[1] : "127.0.0.1";
    const char *port = argc > 2 ? argv[2] : "0";
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    signal(SIGPIPE, SIG_IGN);
    int listener = listen_on(host, port);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}; /* NULL marks the listener */
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev) < 0) die("epoll_ctl ADD");
    print_listening(listener);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int ready = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (ready < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < ready; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                accept_all(epfd, listener);
                continue;
            }
            int keep = 0;
            if (c->owed != NULL) {
                int flushed = flush_owed(c);
                if (flushed < 0) keep = -1;
                else if (flushed > 0) watch(epfd, c, EPOLLIN);
            } else if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                keep = on_readable(epfd, c);
            }
            if (keep < 0) close_conn(epfd, c);
        }
    }
}
