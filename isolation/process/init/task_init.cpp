// runner-task-init: pid 1 of a sandboxed process task (see
// isolation/process/sandbox.h). The runner clones it into new mount, pid,
// ipc, uts (and network, or a pre-made network namespace) namespaces, inside
// the task's cgroup, with its rlimits, stdio and cwd (the task's work dir on
// the host) already set, and execs this program from a sealed memfd. It:
//   1. builds the task's root: a small tmpfs with the host's /usr and /etc
//      bound read-only (and /bin, /sbin, /lib* as the host has them), a fresh
//      /proc, a minimal /dev, the work dir at /work and its tmp/ at /tmp and
//      /dev/shm; pivots into it and makes it read-only;
//   2. forks the task, which becomes the unprivileged user (setuid as root,
//      or a nested user namespace when the runner is not root), drops every
//      capability and the bounding set, sets no_new_privs, loads the seccomp
//      filter the runner compiled, and execs the command;
//   3. reaps every process of the namespace (orphans come to pid 1), passes
//      SIGTERM and friends on to all of them, and when the task's first
//      process ends, writes its wait status to the status fd and exits, which
//      makes the kernel kill whatever is left in the namespace.
// It is linked statically, without sanitizers, and uses only system calls
// and a few libc functions: it must start in well under a millisecond.
//
// argv: runner-task-init FLAGS UID GID BPF_FD STATUS_FD EXE ARG0 ARGS...
//   FLAGS: 'u' the runner is not root (user namespaces), 'l' bring up lo,
//          'h' keep the host network (lo is the host's then), 't' write
//          the CLOCK_MONOTONIC time of each phase to stderr (benchmarks),
//          'w' pre-built (below).
//
// Pre-built ('w'): argv is runner-task-init FLAGS UID GID BPF_FD STATUS_FD
// CTRL_FD WORK_ROOT. The init is started before any task is known: it builds
// the root as above, but instead of the task's work dir it binds the runner's
// whole work root at /.w (recursively, and a slave where the host's mount is
// shared, so a mount under it reaches us; the runner sends tasks with a tmpfs
// work dir to cold inits all the same), and waits on
// CTRL_FD (a unix socket) for one request (struct Request, then the exe, argv
// and envp as NUL-terminated strings; the task cgroup's cgroup.procs
// descriptors ride along as SCM_RIGHTS). Then it joins the cgroups, sets the
// rlimits, binds the named work dir at /work (its tmp/ at /tmp and
// /dev/shm), detaches /.w and removes its mount point, makes the root private
// and read-only, and goes on with step 2. EOF on CTRL_FD (the runner drops
// the pre-built sandbox, or stops) ends it. One request per init: a task
// never sees what another saw.

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <initializer_list>

namespace {

constexpr const char* kRoot = "/tmp";  // the new root's mount point (host /tmp is hidden)

// Records on the status fd, read by the runner once pid 1 has exited.
struct StatusRecord {
  int kind;   // 0: the task's wait status; 1: setup failed; 2: exec failed
  int value;  // wait status
  int err;    // errno
  char step[52];
};

int g_status_fd = -1;

void Record(int kind, int value, int err, const char* step) {
  StatusRecord r{};
  r.kind = kind;
  r.value = value;
  r.err = err;
  strncpy(r.step, step, sizeof(r.step) - 1);
  if (g_status_fd >= 0) {
    ssize_t ignored = write(g_status_fd, &r, sizeof(r));
    (void)ignored;
  }
}

[[noreturn]] void Fail(const char* step) {
  Record(1, 0, errno, step);
  _exit(125);
}

void Check(bool ok, const char* step) {
  if (!ok) Fail(step);
}

// "a" + "/" + "b" into buf.
const char* Join(char* buf, size_t size, const char* a, const char* b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la + lb + 2 > size) return a;
  memcpy(buf, a, la);
  buf[la] = '/';
  memcpy(buf + la + 1, b, lb + 1);
  return buf;
}

// Binds `source` at `target` (created), then makes it read-only (and nosuid,
// nodev), keeping the flags the source mount is locked with.
void BindReadOnly(const char* source, const char* target, bool dir) {
  if (dir) {
    Check(mkdir(target, 0755) == 0 || errno == EEXIST, target);
  } else {
    int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    Check(fd >= 0, target);
    close(fd);
  }
  Check(mount(source, target, nullptr, MS_BIND | MS_REC, nullptr) == 0, source);
  struct statvfs st {};
  unsigned long keep = 0;
  if (statvfs(source, &st) == 0) {
    if (st.f_flag & ST_NOEXEC) keep |= MS_NOEXEC;
    if (st.f_flag & ST_NODEV) keep |= MS_NODEV;
    if (st.f_flag & ST_NOATIME) keep |= MS_NOATIME;
    if (st.f_flag & ST_RELATIME) keep |= MS_RELATIME;
  }
  Check(mount(nullptr, target, nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | keep,
              nullptr) == 0,
        target);
}

// A device node of the host, bound (a user namespace cannot mknod).
void BindDevice(const char* name) {
  char src[64], dst[64];
  Join(src, sizeof(src), "/dev", name);
  Join(dst, sizeof(dst), "/tmp/dev", name);
  int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
  Check(fd >= 0, dst);
  close(fd);
  Check(mount(src, dst, nullptr, MS_BIND, nullptr) == 0, src);
}

// /bin, /sbin, /lib...: a symlink where the host has one (merged /usr), else
// a read-only bind.
void TopLevel(const char* name) {
  char host[64], mine[64], link[256];
  Join(host, sizeof(host), "", name);
  Join(mine, sizeof(mine), kRoot, name);
  struct stat st {};
  if (lstat(host, &st) != 0) return;
  if (S_ISLNK(st.st_mode)) {
    ssize_t n = readlink(host, link, sizeof(link) - 1);
    Check(n > 0, host);
    link[n] = '\0';
    Check(symlink(link, mine) == 0, mine);
  } else if (S_ISDIR(st.st_mode)) {
    BindReadOnly(host, mine, true);
  }
}

// Binds the work dir (our cwd, on the host) and its tmp/ at /tmp/work, /tmp/tmp
// and /tmp/dev/shm: one size limit for all of them. `dir` is "." or (pre-built)
// /.w/<name>.
void BindWork(const char* work, const char* tmp, const char* shm, const char* dir) {
  char sub[512];
  Check(mount(dir, work, nullptr, MS_BIND, nullptr) == 0, "bind the work dir");
  Check(mount(Join(sub, sizeof(sub), dir, "tmp"), tmp, nullptr, MS_BIND, nullptr) == 0,
        "bind the work dir's tmp");
  Check(mount(sub, shm, nullptr, MS_BIND, nullptr) == 0, "bind dev/shm");
  for (const char* m : {work, tmp, shm}) {
    Check(mount(nullptr, m, nullptr, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV, nullptr) == 0, m);
  }
}

// `work_root` null: the work dir is our cwd, bound now, and the root is made
// read-only. Else (pre-built) the host's work root is bound at /.w and the
// root stays writable until FinishPrebuilt().
void BuildRoot(const char* work_root) {
  // Nothing of what follows may reach the host's mount table. Pre-built: a
  // slave, so the host's mounts (the tmpfs work dirs) still reach us, until
  // FinishPrebuilt() makes everything private.
  if (work_root == nullptr) {
    Check(mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0, "make / private");
  } else {
    Check(mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) == 0, "make / a slave");
  }
  // The work root may lie under the host's /tmp, which the root's tmpfs hides:
  // held by a descriptor until it is bound.
  int work_root_fd = -1;
  if (work_root != nullptr) {
    work_root_fd = open(work_root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    Check(work_root_fd >= 0, "open the work root");
  }
  Check(
      mount("tmpfs", kRoot, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=256,mode=0755") == 0,
      "mount the root tmpfs");
  char p[64];
  BindReadOnly("/usr", Join(p, sizeof(p), kRoot, "usr"), true);
  BindReadOnly("/etc", Join(p, sizeof(p), kRoot, "etc"), true);
  for (const char* name : {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}) TopLevel(name);

  Check(mkdir("/tmp/proc", 0555) == 0, "mkdir proc");
  Check(mount("proc", "/tmp/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) == 0,
        "mount proc");

  Check(mkdir("/tmp/dev", 0755) == 0, "mkdir dev");
  Check(mount("tmpfs", "/tmp/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755") == 0,
        "mount dev");
  for (const char* name : {"null", "zero", "full", "random", "urandom", "tty"}) BindDevice(name);
  Check(mkdir("/tmp/dev/pts", 0755) == 0, "mkdir dev/pts");
  Check(mount("devpts", "/tmp/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620") == 0,
        "mount devpts");
  Check(symlink("pts/ptmx", "/tmp/dev/ptmx") == 0, "symlink ptmx");
  Check(symlink("/proc/self/fd", "/tmp/dev/fd") == 0, "symlink fd");
  Check(symlink("/proc/self/fd/0", "/tmp/dev/stdin") == 0, "symlink stdin");
  Check(symlink("/proc/self/fd/1", "/tmp/dev/stdout") == 0, "symlink stdout");
  Check(symlink("/proc/self/fd/2", "/tmp/dev/stderr") == 0, "symlink stderr");

  Check(mkdir("/tmp/work", 0755) == 0, "mkdir work");
  Check(mkdir("/tmp/tmp", 01777) == 0, "mkdir tmp");
  Check(mkdir("/tmp/dev/shm", 01777) == 0, "mkdir dev/shm");
  if (work_root == nullptr) {
    BindWork("/tmp/work", "/tmp/tmp", "/tmp/dev/shm", ".");
  } else {
    Check(mkdir("/tmp/.w", 0700) == 0, "mkdir .w");
    char fd_path[64] = "/proc/self/fd/";
    char digits[16];
    int n = 0;
    for (int v = work_root_fd; n == 0 || v != 0; v /= 10)
      digits[n++] = static_cast<char>('0' + v % 10);
    size_t len = strlen(fd_path);
    while (n > 0) fd_path[len++] = digits[--n];
    fd_path[len] = '\0';
    // Recursive: a tmpfs work dir the runner mounted before this point
    // (the request may already be waiting) comes along; later ones arrive by
    // propagation.
    Check(mount(fd_path, "/tmp/.w", nullptr, MS_BIND | MS_REC, nullptr) == 0, "bind the work root");
    close(work_root_fd);
  }

  Check(chdir(kRoot) == 0, "chdir to the new root");
  Check(syscall(SYS_pivot_root, ".", ".") == 0, "pivot_root");
  Check(umount2(".", MNT_DETACH) == 0, "detach the host's root");
  Check(chdir("/") == 0, "chdir /");
  if (work_root != nullptr) return;
  Check(mount(nullptr, "/", nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
              nullptr) == 0,
        "make the root read-only");
  Check(chdir("/work") == 0, "chdir /work");
}

// Pre-built, once the request named the work dir: what BuildRoot() left out.
void FinishPrebuilt(const char* name) {
  Check(name[0] != '\0' && name[0] != '.' && strchr(name, '/') == nullptr, "the work dir's name");
  char dir[512];
  BindWork("/work", "/tmp", "/dev/shm", Join(dir, sizeof(dir), "/.w", name));
  // Covered, not unmounted: an unmount waits for an RCU grace period (up to
  // a millisecond on a busy host); the namespace goes as a whole later.
  Check(mount("none", "/.w", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "size=4k,nr_inodes=1,mode=000") == 0,
        "cover the work root");
  Check(mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0, "make / private");
  Check(mount(nullptr, "/", nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
              nullptr) == 0,
        "make the root read-only");
  Check(chdir("/work") == 0, "chdir /work");
}

// The request of a pre-built init (layout shared with process_isolator.cpp's
// PrebuiltRequest), followed by `strings_size` bytes: the exe, argc argv
// strings and envc envp strings, each NUL-terminated.
struct Request {
  unsigned magic;  // kRequestMagic
  unsigned strings_size;
  unsigned argc, envc;
  unsigned limit_count;
  int cgroup_index;  // which SCM_RIGHTS descriptor is the v2 cgroup's directory, or -1
  struct {
    int resource;
    unsigned long long cur, max;
  } limits[8];
  char name[256];  // the work dir, under the work root
};
constexpr unsigned kRequestMagic = 0x72756e31;  // "run1"

// Reads all of `size` bytes; false on EOF or error.
bool ReadAll(int fd, void* buf, size_t size) {
  char* p = static_cast<char*>(buf);
  while (size > 0) {
    ssize_t n = read(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

void Phase(const char* name);

// The task's v2 cgroup (a directory): the task is cloned into it.
int g_cgroup_fd = -1;

// Waits for the request; its exe, argv and envp point into a buffer that
// lives as long as we do. Exits quietly on EOF (the runner let us go).
void AwaitRequest(int ctrl, const char** exe, char*** argv, char*** envp) {
  Request req{};
  int fds[16];
  size_t fd_count = 0;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(fds))];
  iovec iov{&req, sizeof(req)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(ctrl, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  } while (n < 0 && errno == EINTR);
  if (n == 0) _exit(0);
  Phase("request_received");
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      fd_count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      if (fd_count > 16) fd_count = 16;
      memcpy(fds, CMSG_DATA(c), fd_count * sizeof(int));
    }
  }
  errno = EPROTO;
  Check(n == static_cast<ssize_t>(sizeof(req)) && req.magic == kRequestMagic &&
            req.limit_count <= 8 && req.strings_size < (64U << 20),
        "read the request");
  char* strings = static_cast<char*>(malloc(req.strings_size + 1));
  Check(strings != nullptr, "allocate the request");
  errno = EPROTO;
  Check(ReadAll(ctrl, strings, req.strings_size), "read the request's strings");
  strings[req.strings_size] = '\0';
  close(ctrl);
  char** list = static_cast<char**>(malloc((req.argc + req.envc + 2) * sizeof(char*)));
  Check(list != nullptr, "allocate the request");
  char* p = strings;
  char* end = strings + req.strings_size;
  auto next = [&]() {
    errno = EPROTO;
    Check(p < end, "parse the request");
    char* s = p;
    p += strlen(p) + 1;
    return s;
  };
  *exe = next();
  for (unsigned i = 0; i < req.argc; ++i) list[i] = next();
  list[req.argc] = nullptr;
  for (unsigned i = 0; i < req.envc; ++i) list[req.argc + 1 + i] = next();
  list[req.argc + 1 + req.envc] = nullptr;
  *argv = list;
  *envp = list + req.argc + 1;
  req.name[sizeof(req.name) - 1] = '\0';

  // The task's cgroups first (we are counted in them, as a cold init is),
  // then its rlimits (the task inherits them), then its work dir.
  for (size_t i = 0; i < fd_count; ++i) {
    if (static_cast<int>(i) == req.cgroup_index) {
      g_cgroup_fd = fds[i];
      continue;
    }
    Check(write(fds[i], "0", 1) == 1, "join the task cgroup");
    close(fds[i]);
  }
  for (unsigned i = 0; i < req.limit_count; ++i) {
    rlimit r{static_cast<rlim_t>(req.limits[i].cur), static_cast<rlim_t>(req.limits[i].max)};
    Check(setrlimit(static_cast<__rlimit_resource_t>(req.limits[i].resource), &r) == 0,
          "set the task's rlimits");
  }
  FinishPrebuilt(req.name);
}

void LoopbackUp() {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  Check(s >= 0, "socket for lo");
  ifreq ifr{};
  strcpy(ifr.ifr_name, "lo");
  Check(ioctl(s, SIOCGIFFLAGS, &ifr) == 0, "read lo flags");
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
  Check(ioctl(s, SIOCSIFFLAGS, &ifr) == 0, "bring lo up");
  close(s);
}

void WriteProc(const char* path, const char* text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  Check(fd >= 0, path);
  Check(write(fd, text, strlen(text)) == static_cast<ssize_t>(strlen(text)), path);
  close(fd);
}

void Format(char* buf, size_t size, unsigned inside, unsigned outside) {
  // "<inside> <outside> 1\n" without stdio.
  char tmp[3][16];
  unsigned v[2] = {inside, outside};
  for (int i = 0; i < 2; ++i) {
    int n = 0;
    char rev[16];
    unsigned x = v[i];
    do {
      rev[n++] = static_cast<char>('0' + x % 10);
      x /= 10;
    } while (x != 0);
    for (int j = 0; j < n; ++j) tmp[i][j] = rev[n - 1 - j];
    tmp[i][n] = '\0';
  }
  size_t a = strlen(tmp[0]), b = strlen(tmp[1]);
  if (a + b + 5 > size) return;
  memcpy(buf, tmp[0], a);
  buf[a] = ' ';
  memcpy(buf + a + 1, tmp[1], b);
  memcpy(buf + a + 1 + b, " 1\n", 4);
}

// In the task's process: become uid:gid with nothing else.
void DropPrivileges(bool userns, unsigned uid, unsigned gid) {
  if (userns) {
    // We are uid 0 of the runner's user namespace (mapped to the runner's
    // uid); a nested one maps uid:gid to it, and nothing else exists.
    Check(unshare(CLONE_NEWUSER) == 0, "unshare the task's user namespace");
    char map[64];
    WriteProc("/proc/self/setgroups", "deny");
    Format(map, sizeof(map), uid, 0);
    WriteProc("/proc/self/uid_map", map);
    Format(map, sizeof(map), gid, 0);
    WriteProc("/proc/self/gid_map", map);
  }
  for (int cap = 0; cap <= 63; ++cap) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) Fail("drop bounding set");
  }
  if (!userns) {
    Check(setgroups(0, nullptr) == 0, "setgroups");
    Check(setresgid(gid, gid, gid) == 0, "setresgid");
    Check(setresuid(uid, uid, uid) == 0, "setresuid");
  }
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  Check(syscall(SYS_capset, &header, data) == 0, "capset");
  Check(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == 0, "clear ambient caps");
  Check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
}

unsigned Number(const char* s) { return static_cast<unsigned>(strtoul(s, nullptr, 10)); }

bool g_timing = false;

// "runner-task-init phase <name> <ns>\n" on stderr, when timing.
void Phase(const char* name) {
  if (!g_timing) return;
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  unsigned long long ns = static_cast<unsigned long long>(ts.tv_sec) * 1000000000ULL +
                          static_cast<unsigned long long>(ts.tv_nsec);
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + ns % 10);
    ns /= 10;
  } while (ns != 0);
  char line[96];
  size_t len = 0;
  auto put = [&](const char* text) {
    size_t l = strlen(text);
    if (len + l < sizeof(line)) {
      memcpy(line + len, text, l);
      len += l;
    }
  };
  put("runner-task-init phase ");
  put(name);
  put(" ");
  while (n > 0 && len < sizeof(line) - 1) line[len++] = digits[--n];
  line[len++] = '\n';
  ssize_t ignored = write(2, line, len);
  (void)ignored;
}

}  // namespace

int main(int argc, char** argv, char** envp) {
  if (argc < 8) return 125;
  const char* flags = argv[1];
  const bool userns = strchr(flags, 'u') != nullptr;
  g_timing = strchr(flags, 't') != nullptr;
  Phase("init_started");
  const unsigned uid = Number(argv[2]), gid = Number(argv[3]);
  const bool prebuilt = strchr(flags, 'w') != nullptr;
  const int bpf_fd = static_cast<int>(Number(argv[4]));
  g_status_fd = static_cast<int>(Number(argv[5]));
  const char* exe = argv[6];
  char** task_argv = argv + 7;

  // The filter, read before the root changes (the runner compiled it).
  static sock_filter filter[4096];
  ssize_t got = pread(bpf_fd, filter, sizeof(filter), 0);
  Check(got > 0 && got % static_cast<ssize_t>(sizeof(sock_filter)) == 0, "read the seccomp filter");
  close(bpf_fd);
  sock_fprog prog{static_cast<unsigned short>(got / static_cast<ssize_t>(sizeof(sock_filter))),
                  filter};

  BuildRoot(prebuilt ? argv[7] : nullptr);
  Phase("root_built");
  Check(sethostname("runner-task", 11) == 0, "sethostname");
  if (strchr(flags, 'l') != nullptr) LoopbackUp();
  Phase("network_ready");
  if (prebuilt) {
    AwaitRequest(static_cast<int>(Number(argv[6])), &exe, &task_argv, &envp);
    Phase("request_done");
  }

  // The runner starts us with every signal blocked (a SIGTERM sent before we
  // wait for signals stays pending instead of being dropped: pid 1 of a
  // namespace drops the signals it has no handler for); the task starts with
  // none blocked.
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &all, nullptr);
  pid_t task = -1;
  bool join_v2 = false;
  if (g_cgroup_fd >= 0) {
    // Straight into the task's v2 cgroup: a move by cgroup.procs waits for
    // an RCU grace period.
    clone_args args{};
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = static_cast<unsigned long long>(g_cgroup_fd);
    task = static_cast<pid_t>(syscall(SYS_clone3, &args, sizeof(args)));
    join_v2 = task < 0;
  }
  if (task < 0) task = fork();
  Check(task >= 0, "fork the task");
  if (task == 0) {
    if (join_v2) {
      int procs = openat(g_cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
      Check(procs >= 0 && write(procs, "0", 1) == 1, "join the task cgroup");
      close(procs);
    }
    if (g_cgroup_fd >= 0) close(g_cgroup_fd);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setpgid(0, 0);
    Phase("task_forked");
    DropPrivileges(userns, uid, gid);
    Phase("privileges_dropped");
    Check(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0, "load the seccomp filter");
    Phase("seccomp_loaded");
    syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */);
    execve(exe, task_argv, envp);
    Record(2, 0, errno, "exec");
    _exit(errno == ENOENT ? 127 : 126);
  }
  if (g_cgroup_fd >= 0) close(g_cgroup_fd);
  for (;;) {
    siginfo_t info{};
    int sig = sigwaitinfo(&all, &info);
    if (sig < 0) continue;
    if (sig != SIGCHLD) {
      // Only what the runner sends (from outside, si_pid reads 0) is passed
      // on: a task signalling pid 1 changes nothing.
      if (info.si_pid != 0) continue;
      kill(-1, sig);  // every process of the namespace but us
      if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP) kill(-1, SIGCONT);
      continue;
    }
    int status = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      if (pid == task) {
        Record(0, status, 0, "");
        kill(-1, SIGKILL);
        _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
      }
    }
  }
}
