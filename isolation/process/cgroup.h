#pragma once

// Per-task control groups for the process isolator.
//
// `CgroupHost::Detect()` looks once at how this host mounts cgroups (v1
// controllers, the v2 unified hierarchy, or both as in "hybrid" setups) and at
// where this process sits in each hierarchy, and creates a parent directory
// (`<own cgroup>/<parent>`) in every hierarchy it can write. Tasks get one
// `TaskCgroup` each: a directory per hierarchy carrying the task's limits,
// joined by the child itself between fork and exec (it writes "0" to
// pre-opened `cgroup.procs` descriptors, so no task code runs outside it).
//
// Roles and where they come from, best first:
//   memory  v2 memory controller, else v1 `memory`
//   cpu     v2 cpu controller (cpu.max), else v1 `cpu` (cfs quota)
//   cpuacct v2 cpu.stat (present in every v2 cgroup), else v1 `cpuacct`
//   pids    v2 pids controller, else v1 `pids`
//   kill    v2 `cgroup.kill` (any v2 dir, also the controller-less unified
//           hierarchy of hybrid hosts), else v1 `freezer` (freeze, kill, thaw),
//           else repeated kill of every pid listed in `cgroup.procs`.
//   freezer v1 `freezer`, only on hosts without any v2 hierarchy.
// The child enters the v2 cgroup at birth (clone3 CLONE_INTO_CGROUP) and
// joins v1 ones by writing "0" to their `cgroup.procs`. A v1 join takes the
// kernel's global cgroup_threadgroup_rwsem for writing, which waits for an RCU
// grace period (~5 ms per task on this appliance's VM): so a task joins the
// v1 memory/cpu/pids hierarchies only when it has that limit (CgroupRoles).
// A host without any writable hierarchy yields an empty CgroupHost; the
// isolator then relies on setrlimit and process groups alone.
//
// Limit-free task cgroups (only the accounting and kill hierarchies, the
// default for a task without limits) are reused through CgroupSpares: making
// and removing the directories was most of a short task's cgroup cost. One
// that had to be emptied with cgroup.kill is not reused (a kernel bug kills
// whatever is cloned into it afterwards, see ~TaskCgroup). A reused cgroup
// is empty and thawed, its join descriptors stay open, and its
// CPU counter is read as a difference from where it stood at hand-out.
//
// Thread-safety: CgroupHost is immutable after Detect() and shared by all
// workers. A TaskCgroup belongs to one Run() call. CgroupSpares is shared by
// the Run() calls of an isolator (guarded by a mutex).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "isolation/isolator.h"

namespace runner::isolation::process {

// The whole of a small /proc or /sys file; empty when it cannot be read (the
// process is gone, the file does not exist). Never throws: std::ifstream
// throws from its read when /proc/PID answers ESRCH, which crashed a worker.
std::string ReadProcFile(const std::filesystem::path& path);

// One mounted hierarchy this process can create task cgroups in.
struct CgroupHierarchy {
  bool v2 = false;
  std::vector<std::string> controllers;  // v1: mount options; v2: enabled for children
  std::filesystem::path parent;          // <mount>/<own path>/<parent name>
};

class CgroupHost {
 public:
  // Probes /proc/self/mountinfo and /proc/self/cgroup and creates
  // `<own cgroup>/<parent_name>` in each usable hierarchy. Never fails: what
  // does not work is left out and logged once.
  static CgroupHost Detect(const std::string& parent_name);
  // Same, from explicit file contents (unit tests).
  static CgroupHost FromProcFiles(const std::string& mountinfo, const std::string& self_cgroup,
                                  const std::string& parent_name, bool create_parents);

  const std::vector<CgroupHierarchy>& hierarchies() const { return hierarchies_; }
  bool empty() const { return hierarchies_.empty(); }
  // Index into hierarchies() of the one serving a role, or nullopt.
  std::optional<size_t> memory() const { return memory_; }
  std::optional<size_t> cpu() const { return cpu_; }
  std::optional<size_t> cpuacct() const { return cpuacct_; }
  std::optional<size_t> pids() const { return pids_; }
  std::optional<size_t> freezer() const { return freezer_; }
  std::optional<size_t> v2() const { return v2_; }  // any v2 dir: cgroup.kill, cgroup.events
  // One line for logs and reports, e.g.
  // "memory=v1:/sys/fs/cgroup/memory/x/runner cpu=v1:... kill=v2:...".
  std::string Describe() const;
  // Removes the task cgroups that processes now gone left under the parents:
  // a node killed with SIGKILL leaves its spares and the cgroups of the tasks
  // it was running, and they pile up over restarts. Task cgroup names end in
  // -<pid>-<seq> (the pid of the isolator that made them); one whose pid is
  // alive is left alone. Processes still inside (a task's children, which
  // PR_SET_PDEATHSIG does not reach) are killed first: they would otherwise
  // run on beside the task's retry on another node. Returns how many were
  // removed.
  int RemoveStale() const;

 private:
  void AssignRoles();

  std::vector<CgroupHierarchy> hierarchies_;
  std::optional<size_t> memory_, cpu_, cpuacct_, pids_, freezer_, v2_;
};

// Counters of one task cgroup; fields are empty when no hierarchy provides them.
struct CgroupStats {
  std::optional<double> cpu_seconds;
  std::optional<int64_t> memory;       // current, without inactive file cache
  std::optional<int64_t> memory_peak;  // high-water mark
  std::optional<int64_t> pids;
  std::optional<int64_t> pids_peak;
  int64_t oom_kills = 0;  // kernel OOM kills inside the cgroup
};

// Which limit-carrying hierarchies a task joins (kill and CPU accounting
// hierarchies are always joined).
struct CgroupRoles {
  bool memory = true;
  bool cpu = true;
  bool pids = true;
};

class TaskCgroup;

// Emptied limit-free task cgroups, kept for the next task (see above).
class CgroupSpares {
 public:
  explicit CgroupSpares(size_t max_spares = 32) : max_(max_spares) {}
  ~CgroupSpares();  // removes the spares' directories
  CgroupSpares(const CgroupSpares&) = delete;
  CgroupSpares& operator=(const CgroupSpares&) = delete;

  // A limit-free cgroup (the roles all false): a spare when one is left,
  // else a new one named `name`. It comes back here when destroyed, if empty.
  Result<std::unique_ptr<TaskCgroup>> Acquire(const CgroupHost& host, const std::string& name);

 private:
  friend class TaskCgroup;
  // Takes the directories of `cg` (emptied, limit-free); false when full.
  bool Keep(TaskCgroup& cg);

  const size_t max_;
  std::mutex mu_;
  std::vector<std::unique_ptr<TaskCgroup>> spares_;  // guarded by mu_
};

class TaskCgroup {
 public:
  // Creates `<parent>/<name>` in every hierarchy of `host` and writes the
  // limits. A hierarchy whose directory cannot be created is an error (the
  // caller decides whether to run without cgroups).
  static Result<std::unique_ptr<TaskCgroup>> Create(const CgroupHost& host, const std::string& name,
                                                    const Limits& limits,
                                                    const CgroupRoles& roles = {});
  // The directories named `name` that already exist under the host's
  // parents (a runner that is gone left them): destroying it kills what is
  // still inside and removes them.
  static std::unique_ptr<TaskCgroup> Adopt(const CgroupHost& host, const std::string& name);
  // Kills every process left inside and removes the directories (or hands
  // them back to the spares it came from).
  ~TaskCgroup();
  TaskCgroup(const TaskCgroup&) = delete;
  TaskCgroup& operator=(const TaskCgroup&) = delete;

  // Descriptors of the `cgroup.procs` files (O_WRONLY|O_CLOEXEC) for the
  // child to write "0" to before exec: all of them, or all but the v2 one
  // when the child was cloned into it. CloseJoinFds() after the spawn.
  std::vector<int> JoinFds(bool include_v2) const;
  // O_DIRECTORY descriptor of the v2 cgroup for clone3(CLONE_INTO_CGROUP), or -1.
  int v2_dir_fd() const { return v2_dir_fd_; }
  // After the spawn: closes the join descriptors, unless the cgroup goes
  // back to spares (the next task joins through them).
  void DoneJoining();

  // Pids currently inside (from the first hierarchy).
  std::vector<int> Pids() const;
  // Sends `sig` to every process inside (no freeze: best effort).
  void Signal(int sig) const;
  // SIGKILLs every process inside, also ones forking while we look
  // (cgroup.kill, or freezer), until it is empty or `deadline_ms` passes.
  // Returns true when it is empty.
  bool KillAll(int deadline_ms = 2000) const;

  CgroupStats Stats() const;

  bool limits_memory() const { return memory_dir_.has_value(); }
  bool limits_cpu() const { return cpu_dir_.has_value(); }
  bool limits_pids() const { return pids_dir_.has_value(); }
  // Sets the CPU quota (cores); 0 removes it. Error when there is no cpu hierarchy.
  Status SetCpuLimit(double cpus);
  // The directory serving the cpu role (for tests and logs), empty if none.
  std::filesystem::path cpu_dir() const { return cpu_dir_ ? *cpu_dir_ : std::filesystem::path(); }

 private:
  friend class CgroupSpares;
  TaskCgroup() = default;
  bool Empty() const;
  void CloseJoinFds();
  bool LimitFree() const { return !memory_dir_ && !cpu_dir_ && !pids_dir_; }

  std::vector<std::filesystem::path> dirs_;  // all created dirs, removed in reverse
  std::vector<bool> dirs_v2_;
  std::optional<std::filesystem::path> memory_dir_, cpu_dir_, cpuacct_dir_, pids_dir_, freezer_dir_,
      v2_dir_;
  bool memory_v2_ = false, cpu_v2_ = false, cpuacct_v2_ = false, pids_v2_ = false;
  std::vector<int> join_fds_;  // parallel to dirs_
  int v2_dir_fd_ = -1;
  CgroupSpares* spares_ = nullptr;  // where it goes back to, if anywhere
  double cpu_base_ = 0;             // CPU seconds already counted at hand-out
  // Set once cgroup.kill was written: such a cgroup is not reused (see the
  // destructor). Mutable: KillAll() is const for its callers.
  mutable bool kill_file_used_ = false;
};

}  // namespace runner::isolation::process
