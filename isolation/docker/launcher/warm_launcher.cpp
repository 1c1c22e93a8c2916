// runner-warm-launcher: the first process of a warm container (see
// isolation/docker/warm_pool.h). Docker's init (pid 1) starts it as the task's
// user, with the container's settings already applied; it blocks reading its
// stdin, which only the runner can write (POST /containers/{id}/attach), until
// the task arrives:
//
//   u32 length (little endian), then `length` bytes of NUL-terminated strings:
//   ARGC, ARGV[0..ARGC), then any number of NAME=VALUE environment entries.
//
// It then points stdin at /dev/null (a cold task has no stdin either), adds
// the environment to the image's, changes to /work and execs the command, so
// the task becomes the container's main process: its output, exit code and
// OOM flag reach Docker as a cold task's do. Its own argv (after argv[0]) is
// the image's ENTRYPOINT, put before the task's argv as Docker would.
//
// A stdin that ends before the whole message (the runner gave the container
// up) exits 125 without running anything. A command that cannot be executed
// exits 127 (not found) or 126, with the reason on stderr, like a shell.
//
// Static, no sanitizers, no C++ runtime: it must start in well under a
// millisecond and hold nothing but this message in memory.

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
  if (k == 0) Die(125, "bad task message", nullptr);
  char* end = nullptr;
  unsigned long task_argc = strtoul(strs[0], &end, 10);
  if (end == strs[0] || *end != '\0' || task_argc == 0 || task_argc > k - 1) {
    Die(125, "bad task message", nullptr);
  }

  const int entry = argc > 1 ? argc - 1 : 0;
  char** args =
      static_cast<char**>(calloc(static_cast<size_t>(entry) + task_argc + 1, sizeof(char*)));
  if (args == nullptr) Die(125, "out of memory", nullptr);
  size_t n = 0;
  for (int i = 1; i < argc; ++i) args[n++] = argv[i];
  for (unsigned long i = 0; i < task_argc; ++i) args[n++] = strs[1 + i];
  args[n] = nullptr;
  for (size_t i = 1 + task_argc; i < k; ++i) {
    char* eq = strchr(strs[i], '=');
    if (eq == nullptr || eq == strs[i]) continue;
    *eq = '\0';
    setenv(strs[i], eq + 1, 1);
  }

  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0 || dup2(devnull, 0) < 0) Die(125, "cannot open /dev/null", nullptr);
  if (devnull != 0) close(devnull);
  if (chdir("/work") != 0) Die(125, "cannot enter /work", strerror(errno));

  execvp(args[0], args);
  const int err = errno;
  Die(err == ENOENT ? 127 : 126, strerror(err), args[0]);
}
