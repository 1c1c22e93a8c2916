#include "isolation/process/cgroup.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

namespace runner::isolation::process {
namespace {

namespace fs = std::filesystem;

const std::set<std::string> kWantedV1 = {"memory", "cpu", "cpuacct", "pids", "freezer"};
const std::set<std::string> kKnownV1 = {"cpu",     "cpuacct", "cpuset", "memory",     "devices",
                                        "freezer", "net_cls", "blkio",  "perf_event", "net_prio",
                                        "hugetlb", "pids",    "rdma",   "misc"};
const std::vector<std::string> kWantedV2 = {"memory", "cpu", "pids"};
constexpr int64_t kCpuPeriodUs = 100000;

std::vector<std::string> Split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(text);
  while (std::getline(in, cur, sep)) out.push_back(cur);
  return out;
}

// mountinfo escapes spaces and friends as \ooo.
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (size_t j = 1; j <= 3; ++j) {
        if (i + j >= s.size() || s[i + j] < '0' || s[i + j] > '7') {
          ok = false;
          break;
        }
        v = v * 8 + (s[i + j] - '0');
      }
      if (ok) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

// Writes `value` in a single write(2), as cgroup files require.
Status WriteFile(const fs::path& path, const std::string& value) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    return MakeError("internal", "open " + path.string() + ": " + std::strerror(errno));
  }
  ssize_t n;
  do {
    n = ::write(fd, value.data(), value.size());
  } while (n < 0 && errno == EINTR);
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(value.size())) {
    return MakeError("internal", "write '" + value + "' to " + path.string() + ": " +
                                     std::strerror(n < 0 ? err : EIO));
  }
  return {};
}

std::optional<int64_t> ReadInt(const fs::path& path) {
  std::string text = ReadProcFile(path);
  if (text.empty()) return std::nullopt;
  try {
    return std::stoll(text);
  } catch (const std::exception&) {
    return std::nullopt;  // "max" and friends
  }
}

// "key value" lines (memory.stat, memory.events, cpu.stat, memory.oom_control).
std::optional<int64_t> ReadKey(const fs::path& path, const std::string& key) {
  std::istringstream in(ReadProcFile(path));
  std::string k;
  int64_t v = 0;
  while (in >> k >> v) {
    if (k == key) return v;
  }
  return std::nullopt;
}

bool Exists(const fs::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

}  // namespace

std::string ReadProcFile(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

CgroupHost CgroupHost::Detect(const std::string& parent_name) {
  CgroupHost host = FromProcFiles(ReadProcFile("/proc/self/mountinfo"),
                                  ReadProcFile("/proc/self/cgroup"), parent_name, true);
  if (host.empty()) {
    spdlog::warn(
        "process isolation: no writable cgroup hierarchy; limits fall back to setrlimit and "
        "escaped background processes may survive a task (run as root with cgroups mounted)");
  } else {
    spdlog::info("process isolation: cgroups {}", host.Describe());
  }
  return host;
}

int CgroupHost::RemoveStale() const {
  // Names, not directories: a task cgroup has one directory per hierarchy.
  std::set<std::string> stale;
  for (const CgroupHierarchy& h : hierarchies_) {
    std::error_code ec;
    for (fs::directory_iterator it(h.parent, ec), end; !ec && it != end; it.increment(ec)) {
      if (!it->is_directory(ec)) continue;
      // "<name>-<pid>-<seq>": the pid is the next-to-last dash-separated field.
      const std::string name = it->path().filename().string();
      const size_t last = name.rfind('-');
      const size_t before =
          last == std::string::npos || last == 0 ? std::string::npos : name.rfind('-', last - 1);
      if (before == std::string::npos) continue;
      const std::string pid_text = name.substr(before + 1, last - before - 1);
      if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos ||
          pid_text.size() > 9) {
        continue;
      }
      const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
      if (pid <= 0 || pid == ::getpid()) continue;
      if (::kill(pid, 0) == 0 || errno == EPERM) continue;  // its owner still runs
      stale.insert(name);
    }
  }
  for (const std::string& name : stale) {
    auto cg = TaskCgroup::Adopt(*this, name);
    // Processes still inside are a task's children that outlived its node
    // (PR_SET_PDEATHSIG reaches only the task's first process); they would
    // run on beside the task's retry elsewhere.
    if (const size_t left = cg->Pids().size(); left > 0) {
      spdlog::warn(
          "process isolation: killing {} processes left in cgroup {} by a runner that is gone",
          left, name);
    }
    cg.reset();  // kills what is inside, removes the directories
  }
  if (!stale.empty()) {
    spdlog::info("process isolation: removed {} cgroups left by processes that are gone",
                 stale.size());
  }
  return static_cast<int>(stale.size());
}

CgroupHost CgroupHost::FromProcFiles(const std::string& mountinfo, const std::string& self_cgroup,
                                     const std::string& parent_name, bool create_parents) {
  // Own path per hierarchy: key is the sorted controller list ("" for v2).
  std::map<std::string, std::string> own;
  for (const std::string& line : Split(self_cgroup, '\n')) {
    size_t a = line.find(':');
    size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::vector<std::string> ctrls;
    for (const std::string& c : Split(line.substr(a + 1, b - a - 1), ',')) {
      if (kKnownV1.count(c)) ctrls.push_back(c);
    }
    std::sort(ctrls.begin(), ctrls.end());
    std::string key;
    for (const std::string& c : ctrls) key += c + ",";
    if (line.substr(0, a) == "0")
      key = "";
    else if (key.empty())
      continue;  // named hierarchies (name=systemd)
    own[key] = line.substr(b + 1);
  }

  CgroupHost host;
  std::set<std::string> seen;
  for (const std::string& line : Split(mountinfo, '\n')) {
    std::vector<std::string> f = Split(line, ' ');
    auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 5 || dash == f.end() || f.end() - dash < 4) continue;
    const std::string& fstype = *(dash + 1);
    if (fstype != "cgroup" && fstype != "cgroup2") continue;
    std::string root = Unescape(f[3]);
    fs::path mount = Unescape(f[4]);
    bool v2 = fstype == "cgroup2";
    std::vector<std::string> ctrls;
    std::string key;
    if (!v2) {
      for (const std::string& o : Split(*(dash + 3), ',')) {
        if (kKnownV1.count(o)) ctrls.push_back(o);
      }
      std::sort(ctrls.begin(), ctrls.end());
      for (const std::string& c : ctrls) key += c + ",";
      bool wanted = false;
      for (const std::string& c : ctrls) wanted = wanted || kWantedV1.count(c) > 0;
      if (!wanted) continue;
    }
    if (seen.count(key) || !own.count(key)) continue;  // bind mounts of the same hierarchy
    std::string path = own[key];
    if (root != "/" && path.rfind(root, 0) == 0) path = path.substr(root.size());
    fs::path base = mount / fs::path(path).relative_path();
    if (create_parents && !Exists(base)) continue;  // our cgroup is outside this mount's view

    if (v2) {
      std::vector<std::string> available = Split(ReadProcFile(base / "cgroup.controllers"), ' ');
      for (std::string& c : available) {
        if (!c.empty() && c.back() == '\n') c.pop_back();
      }
      std::string enable;
      for (const std::string& c : kWantedV2) {
        if (std::find(available.begin(), available.end(), c) != available.end()) {
          enable += "+" + c + " ";
          ctrls.push_back(c);
        }
      }
      if (create_parents && !enable.empty()) {
        enable.pop_back();
        // Fails with EBUSY when our own cgroup holds processes and is not the
        // root ("no internal processes"); then children get only what is
        // already enabled.
        Status st = WriteFile(base / "cgroup.subtree_control", enable);
        if (!st.ok()) {
          std::string enabled = ReadProcFile(base / "cgroup.subtree_control");
          std::vector<std::string> kept;
          std::string kept_text;
          for (const std::string& c : ctrls) {
            if (enabled.find(c) != std::string::npos) {
              kept.push_back(c);
              kept_text += (kept_text.empty() ? "" : ",") + c;
            }
          }
          spdlog::warn(
              "process isolation: cannot enable cgroup v2 controllers below {} ({}); task "
              "cgroups get only [{}]. Fix: run the runner in a delegated cgroup of its own "
              "(systemd Delegate=yes) or move it into a leaf cgroup",
              base.string(), st.error().message, kept_text);
          ctrls = kept;
        }
      }
    }

    fs::path parent = base / parent_name;
    if (create_parents) {
      if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
        spdlog::warn("process isolation: cannot create cgroup {}: {}", parent.string(),
                     std::strerror(errno));
        continue;
      }
      if (v2 && !ctrls.empty()) {
        std::string enable;
        for (const std::string& c : ctrls) enable += "+" + c + " ";
        enable.pop_back();
        Status st = WriteFile(parent / "cgroup.subtree_control", enable);
        if (!st.ok()) {
          spdlog::warn("process isolation: {}", st.error().message);
          ctrls.clear();
        }
      }
    }
    seen.insert(key);
    host.hierarchies_.push_back(CgroupHierarchy{v2, ctrls, parent});
  }
  host.AssignRoles();
  return host;
}

void CgroupHost::AssignRoles() {
  auto find = [&](const std::string& ctrl, bool v2) -> std::optional<size_t> {
    for (size_t i = 0; i < hierarchies_.size(); ++i) {
      const CgroupHierarchy& h = hierarchies_[i];
      if (h.v2 == v2 &&
          std::find(h.controllers.begin(), h.controllers.end(), ctrl) != h.controllers.end()) {
        return i;
      }
    }
    return std::nullopt;
  };
  auto first = [](std::optional<size_t> a, std::optional<size_t> b) { return a ? a : b; };
  for (size_t i = 0; i < hierarchies_.size(); ++i) {
    if (hierarchies_[i].v2 && !v2_) v2_ = i;
  }
  memory_ = first(find("memory", true), find("memory", false));
  cpu_ = first(find("cpu", true), find("cpu", false));
  // v2 first: it is entered at clone time, which costs nothing.
  cpuacct_ = first(find("cpu", true), first(v2_, find("cpuacct", false)));
  pids_ = first(find("pids", true), find("pids", false));
  if (!v2_) freezer_ = find("freezer", false);

  // Drop hierarchies that serve no role so tasks do not pay for them.
  std::vector<CgroupHierarchy> kept;
  std::map<size_t, size_t> remap;
  for (size_t i = 0; i < hierarchies_.size(); ++i) {
    if (memory_ == i || cpu_ == i || cpuacct_ == i || pids_ == i || freezer_ == i || v2_ == i) {
      remap[i] = kept.size();
      kept.push_back(hierarchies_[i]);
    }
  }
  auto fix = [&](std::optional<size_t>& role) {
    if (role) role = remap.at(*role);
  };
  fix(memory_);
  fix(cpu_);
  fix(cpuacct_);
  fix(pids_);
  fix(freezer_);
  fix(v2_);
  hierarchies_ = std::move(kept);
}

std::string CgroupHost::Describe() const {
  auto one = [&](const char* role, std::optional<size_t> i) {
    if (!i) return std::string(role) + "=none";
    const CgroupHierarchy& h = hierarchies_[*i];
    return std::string(role) + "=" + (h.v2 ? "v2:" : "v1:") + h.parent.string();
  };
  std::string kill = v2_ ? one("kill", v2_) : (freezer_ ? one("kill", freezer_) : "kill=procs");
  return one("memory", memory_) + " " + one("cpu", cpu_) + " " + one("cpuacct", cpuacct_) + " " +
         one("pids", pids_) + " " + kill;
}

Result<std::unique_ptr<TaskCgroup>> TaskCgroup::Create(const CgroupHost& host,
                                                       const std::string& name,
                                                       const Limits& limits,
                                                       const CgroupRoles& roles) {
  std::unique_ptr<TaskCgroup> cg(new TaskCgroup());
  const auto& hs = host.hierarchies();
  for (size_t i = 0; i < hs.size(); ++i) {
    auto is = [&](std::optional<size_t> role) { return role && *role == i; };
    bool needed = is(host.v2()) || is(host.cpuacct()) || is(host.freezer()) ||
                  (roles.memory && is(host.memory())) || (roles.cpu && is(host.cpu())) ||
                  (roles.pids && is(host.pids()));
    if (!needed) continue;
    fs::path dir = hs[i].parent / name;
    if (::mkdir(dir.c_str(), 0755) != 0) {
      return MakeError("internal", "create cgroup " + dir.string() + ": " + std::strerror(errno));
    }
    cg->dirs_.push_back(dir);
    cg->dirs_v2_.push_back(hs[i].v2);
    if (roles.memory && is(host.memory())) {
      cg->memory_dir_ = dir;
      cg->memory_v2_ = hs[i].v2;
    }
    if (roles.cpu && is(host.cpu())) {
      cg->cpu_dir_ = dir;
      cg->cpu_v2_ = hs[i].v2;
    }
    if (is(host.cpuacct())) {
      cg->cpuacct_dir_ = dir;
      cg->cpuacct_v2_ = hs[i].v2;
    }
    if (roles.pids && is(host.pids())) {
      cg->pids_dir_ = dir;
      cg->pids_v2_ = hs[i].v2;
    }
    if (is(host.freezer())) cg->freezer_dir_ = dir;
    if (is(host.v2())) cg->v2_dir_ = dir;
  }

  if (limits.memory > 0 && cg->memory_dir_) {
    std::string bytes = std::to_string(limits.memory);
    if (cg->memory_v2_) {
      if (Status st = WriteFile(*cg->memory_dir_ / "memory.max", bytes); !st.ok())
        return st.error();
      if (Exists(*cg->memory_dir_ / "memory.swap.max")) {
        (void)WriteFile(*cg->memory_dir_ / "memory.swap.max", "0");
      }
    } else {
      if (Status st = WriteFile(*cg->memory_dir_ / "memory.limit_in_bytes", bytes); !st.ok()) {
        return st.error();
      }
      // Memory+swap equal to memory: no swapping around the limit. Absent
      // when the kernel runs without swap accounting.
      if (Exists(*cg->memory_dir_ / "memory.memsw.limit_in_bytes")) {
        (void)WriteFile(*cg->memory_dir_ / "memory.memsw.limit_in_bytes", bytes);
      }
    }
  }
  if (limits.cpus > 0 && cg->cpu_dir_) {
    if (Status st = cg->SetCpuLimit(limits.cpus); !st.ok()) return st.error();
  }
  if (limits.pids > 0 && cg->pids_dir_) {
    if (Status st = WriteFile(*cg->pids_dir_ / "pids.max", std::to_string(limits.pids)); !st.ok()) {
      return st.error();
    }
  }
  for (const fs::path& dir : cg->dirs_) {
    int fd = ::open((dir / "cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      return MakeError("internal",
                       "open " + (dir / "cgroup.procs").string() + ": " + std::strerror(errno));
    }
    cg->join_fds_.push_back(fd);
  }
  if (cg->v2_dir_) {
    cg->v2_dir_fd_ = ::open(cg->v2_dir_->c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }
  return cg;
}

std::unique_ptr<TaskCgroup> TaskCgroup::Adopt(const CgroupHost& host, const std::string& name) {
  std::unique_ptr<TaskCgroup> cg(new TaskCgroup());
  const auto& hs = host.hierarchies();
  for (size_t i = 0; i < hs.size(); ++i) {
    const fs::path dir = hs[i].parent / name;
    if (!Exists(dir)) continue;
    cg->dirs_.push_back(dir);
    cg->dirs_v2_.push_back(hs[i].v2);
    if (host.v2() == i) cg->v2_dir_ = dir;
    if (host.freezer() == i) cg->freezer_dir_ = dir;
  }
  return cg;
}

TaskCgroup::~TaskCgroup() {
  // A cgroup that cgroup.kill was written to is never reused: the kernel
  // (seen on 6.18) SIGKILLs every child later cloned into it with
  // CLONE_INTO_CGROUP, because clone3 compares the target's kill counter
  // with the one of the parent's own cgroup. Reusing it made every later
  // task of the node die at once with 137.
  if (spares_ != nullptr && LimitFree() && join_fds_.size() == dirs_.size() && KillAll() &&
      !kill_file_used_ && spares_->Keep(*this)) {
    return;
  }
  CloseJoinFds();
  if (!KillAll()) {
    spdlog::warn("process isolation: processes survive in cgroup {}",
                 dirs_.empty() ? "" : dirs_.front().string());
  }
  for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) {
    // A just-killed process may still be leaving the cgroup: EBUSY for a moment.
    bool removed = false;
    for (int attempt = 0; attempt < 200; ++attempt) {
      if (::rmdir(it->c_str()) == 0 || errno == ENOENT) {
        removed = true;
        break;
      }
      if (errno != EBUSY) break;
      SleepMs(attempt < 20 ? 1 : 10);
    }
    if (!removed) {
      spdlog::warn("process isolation: cannot remove cgroup {}: {}", it->string(),
                   std::strerror(errno));
    }
  }
}

std::vector<int> TaskCgroup::JoinFds(bool include_v2) const {
  std::vector<int> fds;
  for (size_t i = 0; i < join_fds_.size(); ++i) {
    if (include_v2 || !(v2_dir_ && dirs_[i] == *v2_dir_)) fds.push_back(join_fds_[i]);
  }
  return fds;
}

void TaskCgroup::DoneJoining() {
  if (spares_ == nullptr) CloseJoinFds();
}

void TaskCgroup::CloseJoinFds() {
  for (int fd : join_fds_) ::close(fd);
  join_fds_.clear();
  if (v2_dir_fd_ >= 0) ::close(v2_dir_fd_);
  v2_dir_fd_ = -1;
}

std::vector<int> TaskCgroup::Pids() const {
  std::vector<int> pids;
  if (dirs_.empty()) return pids;
  std::istringstream in(ReadProcFile(dirs_.front() / "cgroup.procs"));
  int pid = 0;
  while (in >> pid) pids.push_back(pid);
  return pids;
}

bool TaskCgroup::Empty() const {
  if (v2_dir_) {
    std::optional<int64_t> populated = ReadKey(*v2_dir_ / "cgroup.events", "populated");
    if (populated) return *populated == 0;
  }
  return Pids().empty();
}

void TaskCgroup::Signal(int sig) const {
  for (int pid : Pids()) ::kill(pid, sig);
}

bool TaskCgroup::KillAll(int deadline_ms) const {
  if (dirs_.empty()) return true;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(deadline_ms);
  std::optional<bool> kill_file;  // looked up once there is something to kill
  int pause = 1;
  while (!Empty()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    if (!kill_file) kill_file = v2_dir_ && Exists(*v2_dir_ / "cgroup.kill");
    if (*kill_file) {
      kill_file_used_ = true;
      (void)WriteFile(*v2_dir_ / "cgroup.kill", "1");
    } else if (freezer_dir_) {
      // Frozen processes cannot fork, so one pass over cgroup.procs gets all.
      (void)WriteFile(*freezer_dir_ / "freezer.state", "FROZEN");
      for (int i = 0; i < 50 && ReadProcFile(*freezer_dir_ / "freezer.state") != "FROZEN\n"; ++i) {
        SleepMs(1);
      }
      Signal(SIGKILL);
      (void)WriteFile(*freezer_dir_ / "freezer.state", "THAWED");
    } else {
      Signal(SIGKILL);
    }
    if (Empty()) break;
    SleepMs(pause);
    pause = std::min(pause * 2, 20);
  }
  return true;
}

CgroupStats TaskCgroup::Stats() const {
  CgroupStats s;
  if (cpuacct_dir_) {
    if (cpuacct_v2_) {
      if (auto us = ReadKey(*cpuacct_dir_ / "cpu.stat", "usage_usec")) {
        s.cpu_seconds = static_cast<double>(*us) / 1e6;
      }
    } else if (auto ns = ReadInt(*cpuacct_dir_ / "cpuacct.usage")) {
      s.cpu_seconds = static_cast<double>(*ns) / 1e9;
    }
    if (s.cpu_seconds) s.cpu_seconds = std::max(0.0, *s.cpu_seconds - cpu_base_);
  }
  if (memory_dir_) {
    const fs::path& d = *memory_dir_;
    if (memory_v2_) {
      if (auto cur = ReadInt(d / "memory.current")) {
        s.memory = *cur - ReadKey(d / "memory.stat", "inactive_file").value_or(0);
      }
      s.memory_peak = ReadInt(d / "memory.peak");
      s.oom_kills = ReadKey(d / "memory.events", "oom_kill").value_or(0);
    } else {
      if (auto cur = ReadInt(d / "memory.usage_in_bytes")) {
        s.memory = *cur - ReadKey(d / "memory.stat", "total_inactive_file").value_or(0);
      }
      s.memory_peak = ReadInt(d / "memory.max_usage_in_bytes");
      s.oom_kills = ReadKey(d / "memory.oom_control", "oom_kill").value_or(0);
    }
    if (s.memory && *s.memory < 0) s.memory = 0;
  }
  if (pids_dir_) {
    s.pids = ReadInt(*pids_dir_ / "pids.current");
    s.pids_peak = ReadInt(*pids_dir_ / "pids.peak");
  }
  return s;
}

Status TaskCgroup::SetCpuLimit(double cpus) {
  if (!cpu_dir_) return MakeError("internal", "no cpu cgroup on this host");
  int64_t quota = cpus > 0 ? std::max<int64_t>(1000, std::llround(cpus * kCpuPeriodUs)) : -1;
  if (cpu_v2_) {
    return WriteFile(*cpu_dir_ / "cpu.max",
                     (quota < 0 ? std::string("max") : std::to_string(quota)) + " " +
                         std::to_string(kCpuPeriodUs));
  }
  if (Status st = WriteFile(*cpu_dir_ / "cpu.cfs_period_us", std::to_string(kCpuPeriodUs));
      !st.ok()) {
    return st;
  }
  return WriteFile(*cpu_dir_ / "cpu.cfs_quota_us", std::to_string(quota));
}

// --- spares ------------------------------------------------------------------

CgroupSpares::~CgroupSpares() {
  std::lock_guard lock(mu_);
  spares_.clear();  // each removes its directories (spares_ of a spare is null)
}

Result<std::unique_ptr<TaskCgroup>> CgroupSpares::Acquire(const CgroupHost& host,
                                                          const std::string& name) {
  std::unique_ptr<TaskCgroup> cg;
  {
    std::lock_guard lock(mu_);
    if (!spares_.empty()) {
      cg = std::move(spares_.back());
      spares_.pop_back();
    }
  }
  if (!cg) {
    CgroupRoles none;
    none.memory = none.cpu = none.pids = false;
    auto created = TaskCgroup::Create(host, name, Limits{}, none);
    if (!created.ok()) return created.error();
    cg = std::move(created).value();
  }
  cg->spares_ = this;  // a new one starts at 0 CPU seconds, a spare at what Keep read
  return cg;
}

bool CgroupSpares::Keep(TaskCgroup& cg) {
  // Its CPU time so far, the base of the next task's figure: read here, on
  // the cleaner's thread, rather than when a task takes it (nothing runs in
  // a spare meanwhile).
  cg.cpu_base_ = 0;
  const double cpu_so_far = cg.Stats().cpu_seconds.value_or(0);
  std::lock_guard lock(mu_);
  if (spares_.size() >= max_) return false;
  std::unique_ptr<TaskCgroup> kept(new TaskCgroup());
  kept->dirs_ = std::move(cg.dirs_);
  kept->dirs_v2_ = std::move(cg.dirs_v2_);
  kept->cpuacct_dir_ = std::move(cg.cpuacct_dir_);
  kept->cpuacct_v2_ = cg.cpuacct_v2_;
  kept->freezer_dir_ = std::move(cg.freezer_dir_);
  kept->v2_dir_ = std::move(cg.v2_dir_);
  kept->join_fds_ = std::move(cg.join_fds_);
  kept->v2_dir_fd_ = std::exchange(cg.v2_dir_fd_, -1);
  cg.dirs_.clear();
  cg.join_fds_.clear();
  kept->cpu_base_ = cpu_so_far;
  spares_.push_back(std::move(kept));
  return true;
}

}  // namespace runner::isolation::process
