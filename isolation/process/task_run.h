// One process task's run: its work dir, cgroup and child, from the start to
// the result. ProcessIsolator::Run makes one per task.
#pragma once

#include <sys/resource.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "isolation/cleanup_queue.h"
#include "isolation/process/prebuilt_pool.h"
#include "isolation/process/process_isolator.h"
#include "isolation/process/spawn.h"

namespace runner::isolation::process {

// What a finished task leaves: its cgroup (killing anything left, then
// returning a limit-free one to the spares) and its work dir, cleaned up in
// the order TaskRun would: cgroup first.
struct Leftover {
  std::unique_ptr<TaskCgroup> cgroup;
  std::unique_ptr<WorkDir> dir;
  // The sandbox's mount namespace: its last reference goes here, so the
  // unmounting of its tree (an RCU grace period, milliseconds on a busy
  // host) happens on the cleaner's thread, not when the task's init exits.
  UniqueFd mount_ns;
  Leftover(std::unique_ptr<TaskCgroup> c, std::unique_ptr<WorkDir> d, UniqueFd ns)
      : cgroup(std::move(c)), dir(std::move(d)), mount_ns(std::move(ns)) {}
  Leftover(Leftover&&) noexcept = default;
  Leftover& operator=(Leftover&&) noexcept = default;
  ~Leftover() {
    cgroup.reset();
    mount_ns.Reset();
    dir.reset();
  }
};

// Cleans up finished tasks on its own thread (see CleanupQueue).
class ProcessIsolator::Cleaner : public CleanupQueue<Leftover> {};

// One task run: owns the child and decides how it ended.
class TaskRun {
 public:
  TaskRun(const ProcessIsolatorOptions& options, const CgroupHost& cgroups, CgroupSpares& spares,
          ProcessIsolator::Cleaner& cleaner, WorkRoot& work_root, int devnull, Sandbox* sandbox,
          ProcessIsolator::PrebuiltPool* prebuilt, bool prebuilt_tmpfs, const TaskSpec& spec,
          Observer& observer, std::stop_token stop)
      : options_(options),
        host_(cgroups),
        spares_(spares),
        cleaner_(cleaner),
        work_root_(work_root),
        devnull_(devnull),
        sandbox_(sandbox),
        prebuilt_(prebuilt),
        prebuilt_tmpfs_(prebuilt_tmpfs),
        spec_(spec),
        observer_(observer),
        stop_(stop) {}

  ~TaskRun();

  RunResult Run();

 private:
  enum class Ending { kNone, kTimeout, kStop, kPolicyKill, kDisk };

  Status Prepare();
  Status Spawn();
  // Hands the task to a pre-built sandbox; false (the sandbox discarded) when
  // it cannot take it: the caller starts the task cold.
  bool SpawnPrebuilt(Prebuilt& sandbox, const std::vector<std::string>& env);
  // The task's rlimits (set in the child before exec, or by a pre-built init).
  std::vector<ChildPlan::Limit> RLimits() const;
  void Loop();
  void Terminate(Ending why, std::string message);
  void KillEverything();
  void Sample();
  void CheckLimit(const std::string& resource, double value, double limit, const std::string& what);
  void OnExit();
  RunResult Finish();
  // The process whose /proc figures stand for the task without cgroups:
  // the task's first process, or (in the sandbox) the init's child.
  pid_t UsagePid() const;

  const ProcessIsolatorOptions& options_;
  const CgroupHost& host_;
  CgroupSpares& spares_;
  ProcessIsolator::Cleaner& cleaner_;
  WorkRoot& work_root_;
  const int devnull_;       // the tasks' stdin, or -1: open one
  Sandbox* const sandbox_;  // null: the task runs bare (--process-sandbox off)
  ProcessIsolator::PrebuiltPool* const prebuilt_;  // null: every start is cold
  const bool prebuilt_tmpfs_;  // a tmpfs work dir reaches pre-built sandboxes (shared work root)
  const TaskSpec& spec_;
  Observer& observer_;
  std::stop_token stop_;

  // Declared in cleanup order: the cgroup (killing everything) goes before
  // the work dir is unmounted and removed.
  std::unique_ptr<WorkDir> work_dir_;
  std::unique_ptr<TaskCgroup> cgroup_;
  std::string name_;
  std::string exe_;
  bool tmpfs_ = false;  // the work dir is a tmpfs mount

  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  rusage rusage_{};
  UniqueFd pidfd_, out_, err_, wake_;
  std::chrono::steady_clock::time_point start_, end_;
  std::optional<std::chrono::steady_clock::time_point> kill_at_, drain_until_;
  Ending ending_ = Ending::kNone;
  std::string ending_message_;
  int exec_errno_ = 0;
  ChildStage exec_stage_{};
  UniqueFd status_read_;          // the sandbox init's reports (StatusRecord)
  UniqueFd mount_ns_;             // the sandbox's mount namespace (see Leftover)
  SandboxReport sandbox_report_;  // read once the init has exited

  // Sampling state.
  std::chrono::steady_clock::time_point last_sample_at_;
  double last_cpu_ = 0;
  int64_t peak_memory_ = 0;
  double cpu_limit_ = 0;              // current quota in cores, 0 = none
  std::map<std::string, bool> over_;  // resource -> currently over its soft limit
  CgroupStats final_stats_;
};

}  // namespace runner::isolation::process
