#pragma once

// The sandbox every process task runs in (unless the operator opts out with
// --process-sandbox off). ProcessIsolator clones the task's first process
// with new mount, pid, ipc and uts namespaces (network: a pre-made empty one
// from NetnsPool, or a new one, or the host's with allow_network), inside its
// cgroup and rlimits, and execs `runner-task-init` (isolation/process/init/,
// embedded in the runner and run from a sealed memfd) as pid 1. The init
// builds a root with only the host's /usr, /etc (read-only) and /bin, /sbin,
// /lib*, a fresh /proc, a minimal /dev, the task's work dir at /work and its
// tmp/ at /tmp and /dev/shm (one tmpfs of limits.disk when the runner is
// root); then forks the task as options.uid:gid with no capabilities (the
// bounding set too), no_new_privs and the seccomp filter (seccomp_filter.h),
// reaps orphans, passes signals on, and takes the whole namespace down when
// the task's first process ends.
//
// A runner that is not root builds the same sandbox in a user namespace: the
// init is uid 0 of a namespace that maps only the runner's uid, and the task
// a nested one that maps only uid:gid. Network namespaces are then created
// per task (no pool: the pool needs CAP_SYS_ADMIN in the host's namespace).
//
// No silent downgrade: when the host cannot build it (no user namespaces for
// a non-root runner, namespaces refused, no seccomp) usable() is false and
// unavailable_reason() says why and how to fix it; the isolator then fails
// process tasks with `isolation_unavailable` rather than running them bare.
//
// Thread-safety: immutable after construction except TakeNetns(), which may
// be called from any thread.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "isolation/process/netns_pool.h"

namespace runner::isolation::process {

struct SandboxOptions {
  bool enabled = true;   // --process-sandbox on|off
  uint32_t uid = 65534;  // --process-user UID:GID
  uint32_t gid = 65534;
  bool allow_network = false;  // --allow-network: keep the host's network
  size_t netns_spares = 4;     // pre-made network namespaces (root only)
  // The init writes "runner-task-init phase <name> <CLOCK_MONOTONIC ns>"
  // lines to the task's stderr (bench/process's start-time breakdown).
  bool trace_phases = false;
};

class Sandbox {
 public:
  // Probes the host once (a forked child tries the namespaces), compiles the
  // seccomp filter and loads the init into a memfd. Never throws; logs what
  // it found (a warning when disabled or unusable).
  explicit Sandbox(SandboxOptions options);
  ~Sandbox();
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  const SandboxOptions& options() const { return options_; }
  bool enabled() const { return options_.enabled; }
  bool usable() const { return options_.enabled && reason_.empty(); }
  // Why it cannot be built and how to fix that; empty when usable.
  const std::string& unavailable_reason() const { return reason_; }
  // True when the runner is not root: user namespaces instead of setuid.
  bool user_namespace() const { return user_namespace_; }
  int init_fd() const { return init_fd_; }      // the init program (exec with execveat)
  int filter_fd() const { return filter_fd_; }  // the seccomp BPF
  // A pre-made network namespace for one task (the caller closes it), or -1.
  int TakeNetns() { return netns_ ? netns_->Take() : -1; }
  // "on uid=65534 gid=65534 network=none userns=no" for logs.
  std::string Describe() const;

 private:
  SandboxOptions options_;
  std::string reason_;
  bool user_namespace_ = false;
  int init_fd_ = -1;
  int filter_fd_ = -1;
  std::unique_ptr<NetnsPool> netns_;
};

// Where the task sees its work dir.
inline constexpr const char* kSandboxWorkDir = "/work";

// The init's argv for one task: how to build the sandbox, then the command.
// `exe` (resolved on the host) is rewritten to /work/... when it lies in
// the work dir.
std::vector<std::string> SandboxInitArgs(const Sandbox& sandbox, bool loopback_up, int filter_fd,
                                         int status_fd, const std::string& exe,
                                         const std::filesystem::path& work_dir,
                                         const std::vector<std::string>& command);

// A pre-built init's argv (init/task_init.cpp, flag 'w'): it builds the
// sandbox with the whole of `work_root` at a hidden place, then waits on
// `ctrl_fd` for its task.
std::vector<std::string> PrebuiltInitArgs(const Sandbox& sandbox, bool loopback_up, int filter_fd,
                                          int status_fd, int ctrl_fd, const std::string& work_root);

// Where the task sees `exe` (resolved on the host): /work/... when it lies
// in the work dir, else unchanged.
std::string SandboxExePath(const std::string& exe, const std::filesystem::path& work_dir);

// What the init reported through the status pipe.
struct SandboxReport {
  std::optional<int> task_status;  // wait status of the task's first process
  std::string setup_error;         // "mount proc: Operation not permitted"
  int exec_errno = 0;              // the task's execve failed
};
// Reads every record from `fd` (the init has exited; never blocks).
SandboxReport ReadSandboxReport(int fd);

}  // namespace runner::isolation::process
