// runner-warm-launcher: the first process of a warm container (see
// isolation/docker/warm_pool.h). Docker's init (pid 1) starts it as the task's
// user, with the container's settings already applied; it blocks reading its
// stdin, which only the runner can write (POST /containers/{id}/attach), until
// the task arrives:
//
//   u32 length (little endian), then `length` bytes of NUL-terminated strings:
//   NONCE, ARGC, ARGV[0..ARGC), then any number of NAME=VALUE environment
//   entries.
//
// It then points stdin at /dev/null (a cold task has no stdin either), adds
// the environment to the image's, changes to /work and runs the command as
// its child, with the child's stdout and stderr on pipes it copies to its
// own (the container's). Its own argv (after argv[0]) is the image's
// ENTRYPOINT, put before the task's argv as Docker would. SIGTERM, SIGINT,
// SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 (Docker's init passes them on) go to
// the task.
//
// When the task exits it copies what the pipes still hold, kills what the
// task left running, writes the exit report as the last bytes of its stdout
//
//   "\x1erunner-exit NONCE STATUS OUT_BYTES ERR_BYTES\n"
//
// (STATUS: the exit code, or 128 + the signal; the byte counts: the task's
// output before it) and exits with STATUS, so the container ends as a cold
// one would (exit code, OOM flag). The runner takes a report of 0 as the
// task's success as soon as it and the output it counts have come (docker's
// own exit report takes 35-70 ms longer: containerd, then dockerd), and
// waits for the container's exit otherwise. The nonce is not in the task's
// environment and this process is not dumpable (the task, same uid, cannot
// read it from /proc), so a task cannot write a report; one that tried would
// only end itself early, which it can do anyway.
//
// A stdin that ends before the whole message (the runner gave the container
// up) exits 125 without running anything. A command that cannot be executed
// exits 127 (not found) or 126, with the reason on stderr, like a shell.
//
// Static, no sanitizers, no C++ runtime: it must start in well under a
// millisecond and hold nothing but this message in memory.

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

constexpr uint32_t kMaxMessage = 8u << 20;  // argv + env; the API caps both well below

bool ReadFull(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteFull(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

enum class Copied { kData, kEmpty, kEnd };

// Copies one read of what `from` holds to `to`.
Copied Relay(int from, int to, uint64_t& count) {
  char buf[65536];
  for (;;) {
    ssize_t r = read(from, buf, sizeof(buf));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) return Copied::kEmpty;
    if (r <= 0) return Copied::kEnd;
    // A container output nobody reads any more (the runner gave up) must not
    // keep the task's pipe full: the bytes count as copied either way.
    (void)WriteFull(to, buf, static_cast<size_t>(r));
    count += static_cast<uint64_t>(r);
    return Copied::kData;
  }
}

[[noreturn]] void Die(int code, const char* what, const char* arg) {
  dprintf(2, "runner-warm-launcher: %s%s%s\n", what, arg != nullptr ? ": " : "",
          arg != nullptr ? arg : "");
  _exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  unsigned char len_bytes[4];
  if (!ReadFull(0, reinterpret_cast<char*>(len_bytes), sizeof(len_bytes))) _exit(125);
  const uint32_t len =
      static_cast<uint32_t>(len_bytes[0]) | (static_cast<uint32_t>(len_bytes[1]) << 8) |
      (static_cast<uint32_t>(len_bytes[2]) << 16) | (static_cast<uint32_t>(len_bytes[3]) << 24);
  if (len == 0 || len > kMaxMessage) Die(125, "bad task message", nullptr);
  char* msg = static_cast<char*>(malloc(static_cast<size_t>(len) + 1));
  if (msg == nullptr) Die(125, "out of memory", nullptr);
  if (!ReadFull(0, msg, len)) _exit(125);
  msg[len] = '\0';  // a message that does not end in NUL still ends here

  // Split into strings.
  size_t count = 0;
  for (uint32_t i = 0; i < len; ++i) count += msg[i] == '\0' ? 1 : 0;
  if (msg[len - 1] != '\0') ++count;
  char** strs = static_cast<char**>(calloc(count + 1, sizeof(char*)));
  if (strs == nullptr) Die(125, "out of memory", nullptr);
  size_t k = 0;
  for (uint32_t i = 0; i < len && k < count; ++k) {
    strs[k] = msg + i;
    i += static_cast<uint32_t>(strlen(msg + i)) + 1;
  }
  if (k < 2) Die(125, "bad task message", nullptr);
  const char* nonce = strs[0];
  char* end = nullptr;
  unsigned long task_argc = strtoul(strs[1], &end, 10);
  if (end == strs[1] || *end != '\0' || task_argc == 0 || task_argc > k - 2 ||
      strlen(nonce) > 128) {
    Die(125, "bad task message", nullptr);
  }

  const int entry = argc > 1 ? argc - 1 : 0;
  char** args =
      static_cast<char**>(calloc(static_cast<size_t>(entry) + task_argc + 1, sizeof(char*)));
  if (args == nullptr) Die(125, "out of memory", nullptr);
  size_t n = 0;
  for (int i = 1; i < argc; ++i) args[n++] = argv[i];
  for (unsigned long i = 0; i < task_argc; ++i) args[n++] = strs[2 + i];
  args[n] = nullptr;
  for (size_t i = 2 + task_argc; i < k; ++i) {
    char* eq = strchr(strs[i], '=');
    if (eq == nullptr || eq == strs[i]) continue;
    *eq = '\0';
    setenv(strs[i], eq + 1, 1);
  }

  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0 || dup2(devnull, 0) < 0) Die(125, "cannot open /dev/null", nullptr);
  if (devnull != 0) close(devnull);
  if (chdir("/work") != 0) Die(125, "cannot enter /work", strerror(errno));

  // Not dumpable: the task (same uid) cannot read the nonce from /proc.
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    Die(125, "cannot make pipes", strerror(errno));
  }
  sigset_t handled, old;
  sigemptyset(&handled);
  const int kHandled[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
  for (int sig : kHandled) sigaddset(&handled, sig);
  sigprocmask(SIG_BLOCK, &handled, &old);
  // Non-blocking: the loop below reads the signals that came and goes back
  // to copying output (a blocking read would stop the copy until the next
  // signal, and a task writing as it shuts down would fill its pipe).
  int sfd = signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) Die(125, "cannot make a signalfd", strerror(errno));

  pid_t task = fork();
  if (task < 0) Die(125, "cannot fork", strerror(errno));
  if (task == 0) {
    sigprocmask(SIG_SETMASK, &old, nullptr);
    if (dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0) _exit(125);
    execvp(args[0], args);
    const int e = errno;
    Die(e == ENOENT ? 127 : 126, strerror(e), args[0]);
  }
  close(out[1]);
  close(err[1]);
  char nonce_copy[129];
  snprintf(nonce_copy, sizeof(nonce_copy), "%s", nonce);
  nonce = nonce_copy;
  for (char* p = msg; p < msg + len; ++p) *p = '\0';  // argv and env: the task's now

  uint64_t out_bytes = 0, err_bytes = 0;
  bool out_open = true, err_open = true;
  int status = 0;
  bool exited = false;
  while (!exited) {
    pollfd fds[3] = {
        {sfd, POLLIN, 0}, {out_open ? out[0] : -1, POLLIN, 0}, {err_open ? err[0] : -1, POLLIN, 0}};
    if (poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents != 0) out_open = Relay(out[0], 1, out_bytes) != Copied::kEnd;
    if (fds[2].revents != 0) err_open = Relay(err[0], 2, err_bytes) != Copied::kEnd;
    if (fds[0].revents != 0) {
      signalfd_siginfo si;
      while (read(sfd, &si, sizeof(si)) == static_cast<ssize_t>(sizeof(si))) {
        if (static_cast<int>(si.ssi_signo) != SIGCHLD) {
          kill(task, static_cast<int>(si.ssi_signo));
          continue;
        }
        pid_t r;
        while ((r = waitpid(-1, &status, WNOHANG)) > 0) {
          if (r == task) {
            exited = true;
            break;
          }
        }
        if (exited) break;
      }
    }
  }
  if (!exited) waitpid(task, &status, 0);  // (poll failed: its status all the same)
  // What the task wrote before it exited is in the pipes: copy it, not what
  // a process it left behind may go on writing.
  // (Bounded: 64 reads of 64 KiB per stream.)
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  for (int i = 0; out_open && i < 64 && Relay(out[0], 1, out_bytes) == Copied::kData; ++i) {
  }
  for (int i = 0; err_open && i < 64 && Relay(err[0], 2, err_bytes) == Copied::kData; ++i) {
  }
  kill(-1, SIGKILL);  // what the task left running (not pid 1, not us)
  const int code = WIFEXITED(status)     ? WEXITSTATUS(status)
                   : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                         : 125;
  char report[256];
  int rn = snprintf(report, sizeof(report), "\x1erunner-exit %s %d %llu %llu\n", nonce, code,
                    static_cast<unsigned long long>(out_bytes),
                    static_cast<unsigned long long>(err_bytes));
  if (rn > 0 && rn < static_cast<int>(sizeof(report))) {
    (void)WriteFull(1, report, static_cast<size_t>(rn));
  }
  _exit(code);
}
