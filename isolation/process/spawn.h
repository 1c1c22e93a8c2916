// Starting a task's first process: the child's plan (everything it needs,
// prepared before the clone, since it may only make raw system calls until
// it execs) and SpawnChild, which clones it by the cheapest way the host and
// the build allow. Used by TaskRun (a task's start) and the pre-built
// sandbox pool (an init that waits for its task).
#pragma once

#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/result.h"

namespace runner::isolation::process {

// Owns one file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.Release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.Release();
    }
    return *this;
  }
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A pipe, both ends close-on-exec: {read, write}.
Result<std::pair<UniqueFd, UniqueFd>> Pipe();

enum ChildStage : uint8_t { kJoinCgroup = 1, kSetLimits, kChdir, kExec, kNamespaces };

// Why a child could not exec: the step that failed and its errno.
struct ChildReport {
  ChildStage stage{};
  int err = 0;
};

// Everything the child needs, prepared before fork: between fork and exec the
// child may only make async-signal-safe calls (no allocation, no locks).
struct ChildPlan {
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* cwd = nullptr;
  int stdin_fd = -1, stdout_fd = -1, stderr_fd = -1;
  // Where a failure goes: a child in the runner's memory (CLONE_VM |
  // CLONE_VFORK) writes `report`, which the parent reads once clone returns
  // (the child has exec'd or exited by then); a copy writes `report_fd`, a
  // pipe that closes on exec.
  ChildReport* report = nullptr;
  int report_fd = -1;
  const int* join_fds = nullptr;
  size_t join_count = 0;
  struct Limit {
    __rlimit_resource_t resource;
    rlimit value;
  };
  Limit limits[8]{};
  size_t limit_count = 0;
  pid_t parent = 0;  // the runner; the task dies with it; 0: in a new pid namespace
  // Sandbox (exec_fd >= 0): exec the init from this memfd (argv and envp are
  // the init's), after joining netns_fd and writing our own user namespace
  // maps (uid_map set: the runner is not root); keep_fds survive the exec.
  int exec_fd = -1;
  int netns_fd = -1;
  const char* uid_map = nullptr;
  const char* gid_map = nullptr;
  int keep_fds[3] = {-1, -1, -1};
  // After a plain fork: create these namespaces here, and (CLONE_NEWPID) run
  // the init as our child, which is pid 1 of the new namespace.
  int unshare_flags = 0;
};

// A started child: its pid and pidfd, and, when it could not exec, the step
// that failed (stage 0: it exec'd).
struct SpawnedChild {
  pid_t pid = -1;
  UniqueFd pidfd;
  ChildStage stage{};
  int err = 0;
};

// Starts `plan`'s child in new namespaces `ns_flags` (CLONE_NEW*), with every
// signal blocked across the clone so no handler of the runner runs in the
// child before it resets them, and returns once it has exec'd or reported
// why not. The ways, cheapest first: a clone3 sharing the runner's memory
// (`shared_memory`, x86-64 builds without ThreadSanitizer); a raw clone3; a
// fork (ThreadSanitizer builds), whose child unshares the namespaces itself.
// With `cgroup_fd` >= 0 the clones start the child in that v2 cgroup, and it
// then joins only `joins_into_cgroup` instead of the plan's join_fds; a clone
// the kernel refuses into it falls back to joining after the start. The
// plan's report fields are SpawnChild's own. An error: the host is out of
// processes or memory.
Result<SpawnedChild> SpawnChild(const ChildPlan& plan, int ns_flags, int cgroup_fd,
                                const std::vector<int>& joins_into_cgroup, bool shared_memory);

class Sandbox;

// How a sandbox's init is cloned: its namespaces, the network namespace it
// joins (a pooled empty one; else it gets a new one and brings up its
// loopback), and, in a user namespace, the maps that make the runner's user
// its root.
struct SandboxClone {
  int ns_flags = 0;
  UniqueFd netns;
  bool loopback_up = false;
  std::string uid_map, gid_map;
};
SandboxClone PlanSandboxClone(Sandbox& sandbox);

// "SIGKILL", or "signal 42" for one without a name.
std::string SignalName(int sig);

// Null-terminated array of C strings pointing into `storage`.
std::vector<char*> CStrings(std::vector<std::string>& storage);

// Looks `file` up in `path_list` the way a shell would; nullopt when absent.
std::optional<std::string> FindExecutable(const std::string& file, const std::string& path_list);

}  // namespace runner::isolation::process
