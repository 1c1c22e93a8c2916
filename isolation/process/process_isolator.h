#pragma once

// Runs a task as a process tree on this host, for nodes without Docker (or
// tasks that ask for `process`), in a sandbox of namespaces, an unprivileged
// user and a seccomp filter (sandbox.h; --process-sandbox off runs it bare).
// Each Run():
//   - makes a private work dir `<work_root>/<task id>-<attempt>` (a tmpfs of
//     limits.disk bytes when running as root with use_tmpfs), with `tmp/`
//     (emptied dirs are recycled, see work_dir.h);
//   - makes a cgroup per task where the host allows it (see cgroup.h) with
//     the memory, CPU and pids limits, plus setrlimit as the floor everywhere
//     (RLIMIT_CORE 0, RLIMIT_NOFILE, RLIMIT_FSIZE = disk, RLIMIT_CPU from the
//     timeout, RLIMIT_AS = 4 x memory only when no memory cgroup enforces it);
//   - fork/execs the command in a new session (its own process group) with
//     stdin from /dev/null, stdout/stderr through pipes to the observer, cwd
//     the work dir, and a minimal environment: PATH=/usr/local/bin:/usr/bin:/bin,
//     HOME=<work dir>, TMPDIR=<work dir>/tmp, then the task's env on top.
//     Nothing of the runner's own environment reaches the task;
//   - samples usage every sample_interval (cgroup counters, else /proc),
//     reports it to the observer and applies the over-limit policy;
//   - on timeout or stop: SIGTERM to the group and the cgroup, stop_grace,
//     then SIGKILL to everything in the cgroup (also processes that left the
//     group with setsid or a double fork); when the main process exits, what
//     it leaves behind is killed too (as when a container's init exits);
//   - reaps the child (no zombies), kills what is left in its cgroup, and
//     hands the cgroup and the work dir to a cleaner thread that removes (or
//     recycles) them while the worker reports the result: Run() returns once
//     nothing of the task runs any more, not once its sandbox is cleared.
//     WaitForCleanup() waits for that; the destructor does too.
// With prebuilt_sandboxes > 0 (a sandbox only), a pool thread keeps that many
// sandboxes built ahead (PrebuiltPool in the .cpp; init/task_init.cpp, flag
// 'w'), and Run() hands its task to one of them instead of cloning a new
// init: the cgroup, rlimits, work dir and the task's argv/env go over a unix
// socket. One task per sandbox; a dead one is replaced; the rest as above.
// Results: kExited (exit_code; 128+signal and a message "killed by SIGKILL" when
// killed by a signal; 127 when the command is not found), kTimedOut, kStopped, kOomKilled (the
// memory cgroup recorded an OOM kill), kOverLimit (the work dir filled up to limits.disk, or the
// policy action `kill`), kError (could not set up).
//
// Over-limit policy: a resource (memory, disk, pids vs their limits, cpu
// usage vs limits.cpus) crossing soft_fraction of its limit triggers the
// action once per crossing: kWarn logs and calls Observer::OnOverLimit;
// kThrottle halves the task's CPU quota (from limits.cpus, or the host's CPU
// count when it has none; never below 0.01 core) and reports it; kKill ends
// the task with kOverLimit.
//
// Usage:
//   runner::isolation::process::ProcessIsolatorOptions options;
//   options.work_root = data_dir / "work";
//   options.over_limit = config.over_limit;
//   runner::isolation::process::ProcessIsolator iso(options);
//   RunResult r = iso.Run(spec, observer, stop_token);
//
// Thread-safety: Run() may be called from many threads at once; each call
// uses only its own state plus the immutable cgroup host description. The
// observer is called from the thread that called Run().

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "isolation/isolator.h"
#include "isolation/process/cgroup.h"
#include "isolation/process/sandbox.h"
#include "isolation/process/work_dir.h"

namespace runner::isolation::process {

struct ProcessIsolatorOptions {
  std::filesystem::path work_root;  // e.g. <data-dir>/work; created when missing
  OverLimitPolicy over_limit;
  std::chrono::milliseconds stop_grace{5000};  // SIGTERM -> SIGKILL
  std::string cgroup_parent = "runner";        // task cgroups live in <own cgroup>/<this>/
  bool use_cgroups = true;                     // false: setrlimit and process groups only
  bool use_tmpfs = true;  // size-capped tmpfs work dirs when root and limits.disk > 0
  std::chrono::milliseconds sample_interval{1000};
  // Join the memory cgroup even when a task has no memory limit, for exact
  // peak memory of every task. Off: such tasks report wait4's ru_maxrss
  // (largest single process) and save a v1 cgroup join (~5 ms per task on
  // v1 hosts, see cgroup.h).
  bool full_accounting = false;
  uint64_t open_files = 4096;  // RLIMIT_NOFILE of the task
  // Start the child sharing the runner's memory until exec (CLONE_VM |
  // CLONE_VFORK) instead of copying it: the cost of a start no longer grows
  // with the runner's size. x86-64 only, and not under ThreadSanitizer; off
  // (or unavailable) means a copying clone3/fork. Tests compare both.
  bool shared_memory_spawn = true;
  // The sandbox of every task (sandbox.h): on by default; off runs tasks
  // bare, as the runner's user with its view of the host.
  SandboxOptions sandbox;
  // Sandboxes kept built ahead of their task (namespaces made, root mounted
  // and pivoted, the init waiting for the task's request), so a start pays
  // only its per-task parts: joining the cgroups, rlimits, binding the work
  // dir, dropping privileges, seccomp, exec. 0: every start builds its own.
  // Each is used by one task only. The node sets it from its worker count.
  size_t prebuilt_sandboxes = 0;
};

class ProcessIsolator : public Isolator {
 public:
  // Probes cgroups once (logs what works) and clears what a crashed run left
  // in work_root. Throws std::invalid_argument when work_root is empty and
  // std::runtime_error when it cannot be created (bad configuration).
  explicit ProcessIsolator(ProcessIsolatorOptions options);

  std::string_view Name() const override { return "process"; }
  bool Available() override { return true; }
  RunResult Run(const TaskSpec& spec, Observer& observer, std::stop_token stop) override;

  ~ProcessIsolator() override;

  // What this host's cgroups provide (for logs, status and tests).
  const CgroupHost& cgroups() const { return cgroups_; }
  const ProcessIsolatorOptions& options() const { return options_; }
  // What the sandbox is (enabled, usable, why not, its user): for status and logs.
  const Sandbox& sandbox() const { return *sandbox_; }
  // Blocks until the cgroups and work dirs of every finished Run() are gone.
  void WaitForCleanup();
  // Pre-built sandboxes ready now, their inits' pids, and how many died
  // before their task and were replaced (tests, status).
  size_t PrebuiltReady() const;
  std::vector<int> PrebuiltPids() const;
  uint64_t PrebuiltReplaced() const;
  // How many to keep ready from now on (the node follows its worker count).
  // Only when prebuilt_sandboxes was above 0 at construction; 0 lets all go.
  void SetPrebuiltSandboxes(size_t count);

  class Cleaner;
  class PrebuiltPool;

 private:
  ProcessIsolatorOptions options_;
  CgroupHost cgroups_;
  std::unique_ptr<WorkRoot> work_root_;
  std::unique_ptr<CgroupSpares> cgroup_spares_;  // limit-free cgroups for reuse
  std::unique_ptr<Sandbox> sandbox_;
  std::unique_ptr<PrebuiltPool> prebuilt_;  // null: prebuilt_sandboxes is 0 or no sandbox
  // A tmpfs work dir reaches the pre-built sandboxes: never for now (see the
  // constructor); such tasks start cold.
  bool shared_work_root_ = false;
  int devnull_ = -1;                  // stdin of every task
  std::unique_ptr<Cleaner> cleaner_;  // last: drained first
};

}  // namespace runner::isolation::process
