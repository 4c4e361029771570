/*
 * labnet-nsinit: a machine's PID namespace, and daemons started inside it (netns and docker
 * runtimes). Namespace arguments are nsfs files; "-" for one the machine does not have.
 *
 * labnet-nsinit init NETNS UTSNS MNTNS PIDNS_FILE
 *   Enters the machine's network and UTS namespaces and forks the first process of a new PID
 *   namespace. That process enters the machine's mount namespace and mounts a /proc of its
 *   own there (so a process of the node sees only the node's processes, and /proc/self
 *   resolves). Once it has, this binds the namespace at PIDNS_FILE (in this, the host's,
 *   mount namespace: `nsenter --pid=PIDNS_FILE` enters it), prints the first process's pid as
 *   this host numbers it, and exits. The first process is the namespace's init: it reaps
 *   orphans until it is killed (SIGKILL from the host: it blocks every other signal), and its
 *   death ends every process in the namespace.
 *
 * labnet-nsinit run NETNS UTSNS MNTNS PIDNS CMD [ARG...]
 *   Runs CMD inside all four namespaces and waits for it, as `nsenter` would, except that CMD
 *   goes with it: SIGTERM, SIGINT, SIGHUP and SIGQUIT are passed on, and if this process dies
 *   (a caller's timeout SIGKILLs it) the kernel SIGKILLs CMD (PR_SET_PDEATHSIG; CMD itself, not
 *   what CMD started). nsenter leaves its child running then, holding the caller's pipes.
 *   Exits with CMD's status (128+signal).
 *
 * labnet-nsinit spawn NETNS UTSNS MNTNS PIDNS CMD [ARG...]
 *   Starts CMD as a daemon inside all four namespaces, in a session of its own, with this
 *   process's environment and stdin, and stderr as both its stdout and stderr (the daemon's
 *   log), and prints its pid as this host numbers it on stdout once CMD is exec'd (exit 1 and
 *   why, if it cannot be). Its cwd is the machine's root (entering a mount namespace sets it).
 *   CMD's parent is the namespace's init (its own parent, inside the namespace, exits at
 *   once), so nothing of ours lingers beside it, and it is reaped as soon as it dies. Its pid
 *   comes from the credentials of one message it sends before exec (SCM_CREDENTIALS: the
 *   kernel translates a pid into the receiver's namespace).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what, const char *arg) {
    fprintf(stderr, "labnet-nsinit: %s %s: %s\n", what, arg, strerror(errno));
    exit(1);
}

static void enter(const char *path, int nstype) {
    if (strcmp(path, "-") == 0)
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("open", path);
    if (setns(fd, nstype) != 0)
        die("setns", path);
    close(fd);
}

static void reap_forever(void) {
    sigset_t all, chld;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        sigwaitinfo(&chld, NULL); /* blocked, so a SIGCHLD between the two stays pending */
    }
}

static int init(char **argv) {
    enter(argv[0], CLONE_NEWNET);
    enter(argv[1], CLONE_NEWUTS);
    if (unshare(CLONE_NEWPID) != 0)
        die("unshare", "CLONE_NEWPID");
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) != 0)
        die("pipe", "");
    pid_t pid = fork();
    if (pid < 0)
        die("fork", "");
    if (pid == 0) {
        close(ready[0]);
        enter(argv[2], CLONE_NEWNS);
        /* the host's procfs goes first: stacked under ours, a umount in the node would bring it back */
        if (umount2("/proc", MNT_DETACH) != 0 && errno != EINVAL)
            die("unmount the host's", "/proc");
        if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
            die("mount a /proc for the namespace on", "/proc");
        if (chdir("/") != 0)
            die("chdir", "/");
        setsid();
        int null = open("/dev/null", O_RDWR);
        if (null < 0)
            die("open", "/dev/null"); /* else it would keep the caller's pipes open forever */
        if (write(ready[1], "k", 1) != 1)
            exit(1);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2)
            close(null);
        close(ready[1]);
        reap_forever();
    }
    close(ready[1]);
    char c;
    ssize_t n;
    while ((n = read(ready[0], &c, 1)) < 0 && errno == EINTR)
        ;
    if (n != 1) { /* it exited before it was ready; it said why on stderr */
        int status = 0;
        waitpid(pid, &status, 0);
        fprintf(stderr, "labnet-nsinit: the namespace's first process failed (exit status %d)\n",
                WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        return 1;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/pid", (int)pid);
    if (mount(path, argv[3], NULL, MS_BIND, NULL) != 0) {
        kill(pid, SIGKILL);
        die("bind the PID namespace at", argv[3]);
    }
    printf("%d\n", (int)pid);
    return 0;
}

static volatile sig_atomic_t g_child;

static void pass_on(int sig) {
    int saved = errno;
    if (g_child > 0)
        kill((pid_t)g_child, sig);
    errno = saved;
}

/* fork() into a PID namespace whose init has exited fails with ENOMEM: say that instead */
static pid_t fork_into(const char *pidns) {
    pid_t pid = fork();
    if (pid < 0 && errno == ENOMEM) {
        fprintf(stderr, "labnet-nsinit: cannot start a process in %s: its init (pid 1) has exited; "
                        "the machine is dead (labnet down, then up)\n", pidns);
        exit(1);
    }
    if (pid < 0)
        die("fork", "");
    return pid;
}

static int run(char **argv) {
    enter(argv[0], CLONE_NEWNET);
    enter(argv[1], CLONE_NEWUTS);
    enter(argv[3], CLONE_NEWPID); /* for our child */
    enter(argv[2], CLONE_NEWNS);  /* last: the other paths are this host's */
    int alive[2]; /* its write end closes when we die: how the child tells we died before prctl */
    if (pipe2(alive, O_CLOEXEC) != 0)
        die("pipe", "");
    struct sigaction sa = {.sa_handler = pass_on};
    sigemptyset(&sa.sa_mask);
    int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT};
    sigset_t block, old;
    sigemptyset(&block);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaddset(&block, sigs[i]);
    sigprocmask(SIG_BLOCK, &block, &old); /* none lost between the fork and g_child being set */
    pid_t child = fork_into(argv[3]);
    if (child == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        close(alive[1]);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
            _exit(127);
        char c;
        fcntl(alive[0], F_SETFL, O_NONBLOCK);
        if (read(alive[0], &c, 1) == 0) /* EOF: we died already (getppid() says 0 here anyway) */
            _exit(127);
        close(alive[0]);
        execvp(argv[4], &argv[4]);
        fprintf(stderr, "labnet-nsinit: exec %s: %s\n", argv[4], strerror(errno));
        _exit(127);
    }
    close(alive[0]);
    g_child = child;
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    int status;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR)
            die("waitpid", "");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int spawn(char **argv) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        die("socketpair", "");
    int on = 1;
    if (setsockopt(sv[0], SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0)
        die("setsockopt", "SO_PASSCRED");
    enter(argv[0], CLONE_NEWNET);
    enter(argv[1], CLONE_NEWUTS);
    enter(argv[3], CLONE_NEWPID); /* for our children */
    enter(argv[2], CLONE_NEWNS);  /* last: the other paths are this host's */
    pid_t inside = fork_into(argv[3]);
    if (inside == 0) {
        close(sv[0]);
        pid_t daemon = fork();
        if (daemon < 0)
            die("fork", "");
        if (daemon > 0)
            _exit(0); /* the daemon's parent becomes the namespace's init */
        setsid();
        if (dup2(2, 1) != 1 || send(sv[1], "x", 1, 0) != 1)
            _exit(127);
        execvp(argv[4], &argv[4]);
        int err = errno; /* the socket closes on a successful exec; a failed one says why */
        send(sv[1], &err, sizeof err, 0);
        fprintf(stderr, "labnet-nsinit: exec %s: %s\n", argv[4], strerror(err));
        _exit(127);
    }
    close(sv[1]);
    char buf[1];
    char control[CMSG_SPACE(sizeof(struct ucred))];
    struct iovec iov = {buf, sizeof buf};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    ssize_t n;
    while ((n = recvmsg(sv[0], &msg, 0)) < 0 && errno == EINTR)
        ;
    waitpid(inside, NULL, 0);
    struct cmsghdr *cm = n == 1 ? CMSG_FIRSTHDR(&msg) : NULL;
    if (cm == NULL || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_CREDENTIALS) {
        fprintf(stderr, "labnet-nsinit: %s did not start inside %s\n", argv[4], argv[3]);
        return 1;
    }
    struct ucred cred;
    memcpy(&cred, CMSG_DATA(cm), sizeof cred);
    int err = 0;
    while ((n = recv(sv[0], &err, sizeof err, 0)) < 0 && errno == EINTR)
        ;
    if (n > 0) {
        fprintf(stderr, "labnet-nsinit: %s did not start: exec: %s\n", argv[4], strerror(err));
        return 1;
    }
    printf("%d\n", (int)cred.pid);
    return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 6 && strcmp(argv[1], "init") == 0)
        return init(argv + 2);
    if (argc >= 7 && strcmp(argv[1], "spawn") == 0)
        return spawn(argv + 2);
    if (argc >= 7 && strcmp(argv[1], "run") == 0)
        return run(argv + 2);
    fprintf(stderr, "usage: labnet-nsinit init NETNS UTSNS MNTNS PIDNS_FILE\n"
                    "       labnet-nsinit run NETNS UTSNS MNTNS PIDNS CMD [ARG...]\n"
                    "       labnet-nsinit spawn NETNS UTSNS MNTNS PIDNS CMD [ARG...]\n");
    return 2;
}
