#include "isolation/process/task_run.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace runner::isolation::process {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kDefaultPath = "/usr/local/bin:/usr/bin:/bin";
constexpr std::chrono::milliseconds kDrainAfterExit{2000};
constexpr size_t kReadChunk = 64 * 1024;
constexpr double kRearmFraction = 0.8;

std::string SafeName(const TaskSpec& spec) {
  std::string name;
  for (char c : spec.task_id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.';
    name += ok ? c : '_';
  }
  if (name.empty() || name[0] == '.') name = "task" + name;
  if (name.size() > 100) name.resize(100);
  return name + "-" + std::to_string(spec.attempt);
}

std::string Bytes(int64_t b) {
  char buf[64];
  if (b >= (int64_t{1} << 20)) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(b) / (1 << 20));
  } else {
    std::snprintf(buf, sizeof(buf), "%lld bytes", static_cast<long long>(b));
  }
  return buf;
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// std::thread::hardware_concurrency() reads sysfs on every call.
unsigned HostCores() {
  static const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  return cores;
}

// CPU seconds and resident memory of one process (the no-cgroup fallback).
std::pair<double, int64_t> ProcUsage(pid_t pid) {
  std::string text = ReadProcFile("/proc/" + std::to_string(pid) + "/stat");
  size_t close = text.rfind(')');
  if (close == std::string::npos) return {0, 0};
  std::istringstream in(text.substr(close + 2));
  std::vector<std::string> f;
  std::string tok;
  while (in >> tok) f.push_back(tok);
  // Fields after the command: state(0) ... utime(11) stime(12) cutime(13) cstime(14) ... rss(21)
  if (f.size() < 22) return {0, 0};
  double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  try {
    double cpu =
        (std::stod(f[11]) + std::stod(f[12]) + std::stod(f[13]) + std::stod(f[14])) / ticks;
    int64_t rss = std::stoll(f[21]) * ::sysconf(_SC_PAGESIZE);
    return {cpu, rss};
  } catch (const std::logic_error&) {  // invalid_argument, out_of_range: the process is gone
    return {0, 0};
  }
}

}  // namespace

TaskRun::~TaskRun() {
  // Exceptions (an observer throwing) must not leave a child behind.
  if (pid_ > 0 && !reaped_) {
    KillEverything();
    ::waitpid(pid_, nullptr, 0);
  }
}

Status TaskRun::Prepare() {
  std::string path_list = kDefaultPath;
  if (auto it = spec_.env.find("PATH"); it != spec_.env.end()) path_list = it->second;
  if (auto found = FindExecutable(spec_.command[0], path_list)) exe_ = *found;

  std::string base = SafeName(spec_);
  bool tmpfs = options_.use_tmpfs && ::geteuid() == 0 && spec_.limits.disk > 0;
  tmpfs_ = tmpfs;
  for (int n = 1;; ++n) {
    name_ = n == 1 ? base : base + "." + std::to_string(n);
    auto dir = work_root_.Acquire(name_, spec_.limits.disk, tmpfs);
    if (dir.ok()) {
      work_dir_ = std::move(dir).value();
      break;
    }
    if (dir.error().code != "exists" || n >= 100) return dir.error();
  }
  if (sandbox_ != nullptr && !sandbox_->user_namespace()) {
    // The task's user owns its work dir (a user namespace maps the runner's own uid to it).
    const SandboxOptions& so = sandbox_->options();
    for (const fs::path& d : {work_dir_->path(), work_dir_->tmp()}) {
      if (::chown(d.c_str(), so.uid, so.gid) != 0) {
        return MakeError("internal", "chown " + d.string() + ": " + std::strerror(errno));
      }
    }
  }
  if (options_.use_cgroups && !host_.empty()) {
    // Unique per process and run: two isolators (or nodes) may share the parent.
    static std::atomic<uint64_t> seq{0};
    std::string cg_name = name_ + "-" + std::to_string(::getpid()) + "-" + std::to_string(++seq);
    const Limits& lim = spec_.limits;
    bool limited = lim.memory > 0 || lim.cpus > 0 || lim.pids > 0 || lim.disk > 0;
    process::CgroupRoles roles;
    roles.memory = lim.memory > 0 || options_.full_accounting;
    roles.cpu =
        lim.cpus > 0 || (limited && options_.over_limit.action == OverLimitAction::kThrottle);
    roles.pids = lim.pids > 0;
    // A task with no limit needs only the accounting and kill hierarchies:
    // a reused cgroup, named for the isolator rather than the task.
    const bool limit_free = !roles.memory && !roles.cpu && !roles.pids;
    auto cg = limit_free ? spares_.Acquire(host_, "slot-" + std::to_string(::getpid()) + "-" +
                                                      std::to_string(++seq))
                         : TaskCgroup::Create(host_, cg_name, lim, roles);
    if (!cg.ok()) {
      // A leftover from a crashed run, or a host that changed under us.
      spdlog::warn("process isolation: running without a cgroup task_id={} worker_id={} error={}",
                   spec_.task_id, spec_.worker_id, cg.error().message);
    } else {
      cgroup_ = std::move(cg).value();
      cpu_limit_ = cgroup_->limits_cpu() ? spec_.limits.cpus : 0;
    }
  }
  return {};
}

std::vector<ChildPlan::Limit> TaskRun::RLimits() const {
  std::vector<ChildPlan::Limit> out;
  auto add_limit = [&](__rlimit_resource_t resource, rlim_t value) {
    out.push_back({resource, rlimit{value, value}});
  };
  add_limit(RLIMIT_CORE, 0);
  rlimit nofile{};
  ::getrlimit(RLIMIT_NOFILE, &nofile);
  add_limit(RLIMIT_NOFILE, std::min<rlim_t>(options_.open_files, nofile.rlim_max));
  const Limits& lim = spec_.limits;
  if (lim.disk > 0) add_limit(RLIMIT_FSIZE, static_cast<rlim_t>(lim.disk));
  if (lim.memory > 0 && !(cgroup_ && cgroup_->limits_memory())) {
    add_limit(RLIMIT_AS, static_cast<rlim_t>(std::max<int64_t>(lim.memory * 4, 64 << 20)));
  }
  if (lim.pids > 0 && !(cgroup_ && cgroup_->limits_pids()) && ::geteuid() != 0) {
    // Per user, not per task, and ignored for root: only a coarse floor.
    add_limit(RLIMIT_NPROC, static_cast<rlim_t>(lim.pids));
  }
  if (spec_.timeout.count() > 0) {
    double cores = lim.cpus > 0 ? std::ceil(lim.cpus) : static_cast<double>(HostCores());
    double secs = std::chrono::duration<double>(spec_.timeout).count() * std::max(cores, 1.0);
    add_limit(RLIMIT_CPU, static_cast<rlim_t>(std::ceil(secs)) + 5);
  }
  return out;
}

bool TaskRun::SpawnPrebuilt(Prebuilt& sb, const std::vector<std::string>& env) {
  PrebuiltRequest req;
  const fs::path& dir = work_dir_->path();
  std::string name = dir.filename().string();
  if (dir.parent_path() != options_.work_root || name.size() >= sizeof(req.name)) {
    Discard(sb);
    return false;
  }
  std::memcpy(req.name, name.c_str(), name.size() + 1);
  std::string strings = SandboxExePath(exe_, dir);
  strings.push_back('\0');
  for (const std::string& a : spec_.command) strings.append(a).push_back('\0');
  for (const std::string& e : env) strings.append(e).push_back('\0');
  req.strings_size = static_cast<unsigned>(strings.size());
  req.argc = static_cast<unsigned>(spec_.command.size());
  req.envc = static_cast<unsigned>(env.size());
  for (const ChildPlan::Limit& l : RLimits()) {
    req.limits[req.limit_count++] = {static_cast<int>(l.resource), l.value.rlim_cur,
                                     l.value.rlim_max};
  }
  // The init joins the v1 cgroups, and clones the task into the v2 one.
  std::vector<int> joins;
  if (cgroup_) {
    joins = cgroup_->JoinFds(cgroup_->v2_dir_fd() < 0);
    if (cgroup_->v2_dir_fd() >= 0) {
      req.cgroup_index = static_cast<int>(joins.size());
      joins.push_back(cgroup_->v2_dir_fd());
    }
  }
  std::vector<char> control(CMSG_SPACE(sizeof(int) * std::max<size_t>(joins.size(), 1)));
  iovec iov{&req, sizeof(req)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!joins.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * joins.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * joins.size());
    std::memcpy(CMSG_DATA(c), joins.data(), sizeof(int) * joins.size());
  }
  wake_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (wake_.get() < 0) {
    Discard(sb);
    return false;
  }
  start_ = Clock::now();
  ssize_t sent;
  do {
    sent = ::sendmsg(sb.ctrl.get(), &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  bool ok = sent == static_cast<ssize_t>(sizeof(req));
  for (size_t off = 0; ok && off < strings.size();) {
    ssize_t n = ::send(sb.ctrl.get(), strings.data() + off, strings.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ok = false;
    if (n > 0) off += static_cast<size_t>(n);
  }
  if (!ok) {
    // It died after Take() looked: the cgroups never saw it.
    spdlog::warn("process isolation: a pre-built sandbox (pid {}) did not take its task: {}",
                 sb.pid, std::strerror(errno));
    Discard(sb);
    return false;
  }
  sb.ctrl.Reset();
  pid_ = sb.pid;
  sb.pid = -1;
  pidfd_ = std::move(sb.pidfd);
  out_ = std::move(sb.out);
  err_ = std::move(sb.err);
  status_read_ = std::move(sb.status_read);
  mount_ns_ = std::move(sb.mount_ns);
  if (cgroup_) cgroup_->DoneJoining();
  return true;
}

Status TaskRun::Spawn() {
  // argv and envp, built before fork.
  std::vector<std::string> argv_storage = spec_.command;
  std::map<std::string, std::string> env = {
      {"PATH", kDefaultPath},
      {"HOME", sandbox_ ? std::string(kSandboxWorkDir) : work_dir_->path().string()},
      {"TMPDIR", sandbox_ ? std::string("/tmp") : work_dir_->tmp().string()},
  };
  for (const auto& [k, v] : spec_.env) env[k] = v;
  std::vector<std::string> env_storage;
  for (const auto& [k, v] : env) env_storage.push_back(k + "=" + v);
  if (sandbox_ != nullptr && prebuilt_ != nullptr && (!tmpfs_ || prebuilt_tmpfs_)) {
    if (std::optional<Prebuilt> sb = prebuilt_->Take()) {
      if (SpawnPrebuilt(*sb, env_storage)) return {};
    }
  }
  UniqueFd status_write;
  SandboxClone clone;
  if (sandbox_ != nullptr) {
    auto status = Pipe();
    if (!status.ok()) return status.error();
    status_read_ = std::move(status->first);
    status_write = std::move(status->second);
    clone = PlanSandboxClone(*sandbox_);
    argv_storage = SandboxInitArgs(*sandbox_, clone.loopback_up, sandbox_->filter_fd(),
                                   status_write.get(), exe_, work_dir_->path(), spec_.command);
  }
  std::vector<char*> argv = CStrings(argv_storage);
  std::vector<char*> envp = CStrings(env_storage);
  std::string cwd = work_dir_->path().string();

  UniqueFd own_devnull;
  int devnull = devnull_;
  if (devnull < 0) {
    own_devnull = UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (own_devnull.get() < 0) return MakeError("internal", "open /dev/null failed");
    devnull = own_devnull.get();
  }
  auto out = Pipe();
  if (!out.ok()) return out.error();
  auto err = Pipe();
  if (!err.ok()) return err.error();
  wake_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (wake_.get() < 0) return MakeError("internal", "eventfd failed");

  ChildPlan plan;
  plan.path = exe_.c_str();
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.cwd = cwd.c_str();
  plan.parent = ::getpid();
  if (sandbox_ != nullptr) {
    plan.parent = 0;  // getppid() is 0 in a new pid namespace
    plan.exec_fd = sandbox_->init_fd();
    plan.netns_fd = clone.netns.get();
    plan.uid_map = clone.uid_map.empty() ? nullptr : clone.uid_map.c_str();
    plan.gid_map = clone.gid_map.empty() ? nullptr : clone.gid_map.c_str();
    plan.keep_fds[0] = sandbox_->filter_fd();
    plan.keep_fds[1] = status_write.get();
  }
  plan.stdin_fd = devnull;
  plan.stdout_fd = out->second.get();
  plan.stderr_fd = err->second.get();
  // Cloned straight into the v2 cgroup the child joins only the v1 ones;
  // after a plain fork it joins them all.
  std::vector<int> joins_v1, joins_all;
  int v2_fd = -1;
  if (cgroup_) {
    joins_v1 = cgroup_->JoinFds(false);
    joins_all = cgroup_->JoinFds(true);
    v2_fd = cgroup_->v2_dir_fd();
    plan.join_fds = joins_all.data();
    plan.join_count = joins_all.size();
  }
  for (const ChildPlan::Limit& l : RLimits()) plan.limits[plan.limit_count++] = l;

  start_ = Clock::now();
  auto child = SpawnChild(plan, clone.ns_flags, v2_fd, joins_v1, options_.shared_memory_spawn);
  if (!child.ok()) {
    return MakeError("internal",
                     child.error().message + " (the host is out of processes or memory)");
  }
  pid_ = child->pid;
  status_write.Reset();  // the init holds the only write end now: EOF once it is gone
  if (sandbox_ != nullptr) {
    // The init is alive (it has just exec'd), so this is its new namespace.
    mount_ns_ = UniqueFd(
        ::open(("/proc/" + std::to_string(pid_) + "/ns/mnt").c_str(), O_RDONLY | O_CLOEXEC));
  }
  if (cgroup_) cgroup_->DoneJoining();
  out->second.Reset();
  err->second.Reset();
  out_ = std::move(out->first);
  err_ = std::move(err->first);

  exec_stage_ = child->stage;
  exec_errno_ = child->err;
  pidfd_ = std::move(child->pidfd);
  return {};
}

void TaskRun::KillEverything() {
  if (pid_ <= 0) return;
  // While the leader is unreaped its pid cannot be reused, so the group id is safe.
  ::killpg(pid_, SIGKILL);
  if (cgroup_) cgroup_->KillAll();
}

void TaskRun::Terminate(Ending why, std::string message) {
  if (ending_ != Ending::kNone) return;
  ending_ = why;
  ending_message_ = std::move(message);
  if (why == Ending::kTimeout || why == Ending::kStop) {
    ::killpg(pid_, SIGTERM);
    ::killpg(pid_, SIGCONT);
    if (cgroup_) cgroup_->Signal(SIGTERM);
    kill_at_ = Clock::now() + options_.stop_grace;
  } else {
    KillEverything();
  }
  spdlog::info("process isolation: stopping task task_id={} worker_id={} pid={} reason=\"{}\"",
               spec_.task_id, spec_.worker_id, pid_, ending_message_);
}

void TaskRun::CheckLimit(const std::string& resource, double value, double limit,
                         const std::string& what) {
  if (limit <= 0) return;
  double soft = options_.over_limit.soft_fraction * limit;
  bool& was = over_[resource];
  if (was) {
    // Re-arm only well below the line, so a value hovering at it (a busy
    // loop at its CPU quota) is reported once, not at every sample.
    if (value < soft * kRearmFraction) was = false;
    return;
  }
  if (value < soft) return;
  was = true;
  OverLimitAction action = options_.over_limit.action;
  std::string message = resource + " " + what + " is over the soft limit (" +
                        std::to_string(static_cast<int>(options_.over_limit.soft_fraction * 100)) +
                        "% of its limit)";
  if (action == OverLimitAction::kThrottle) {
    double from = cpu_limit_ > 0 ? cpu_limit_ : static_cast<double>(HostCores());
    double to = std::max(0.01, from / 2);
    if (cgroup_ && cgroup_->limits_cpu() && cgroup_->SetCpuLimit(to).ok()) {
      cpu_limit_ = to;
      char buf[96];
      std::snprintf(buf, sizeof(buf), "; CPU quota lowered from %.2f to %.2f cores", from, to);
      message += buf;
    } else {
      message += "; cannot throttle: no cpu cgroup on this host";
      action = OverLimitAction::kWarn;
    }
  } else if (action == OverLimitAction::kKill) {
    message += "; the over-limit policy kills it";
  }
  spdlog::warn("process isolation: over limit task_id={} worker_id={} resource={} message=\"{}\"",
               spec_.task_id, spec_.worker_id, resource, message);
  observer_.OnOverLimit(resource, action, message);
  if (action == OverLimitAction::kKill) Terminate(Ending::kPolicyKill, message);
}

void TaskRun::Sample() {
  Clock::time_point now = Clock::now();
  UsageSample s;
  CgroupStats stats = cgroup_ ? cgroup_->Stats() : CgroupStats{};
  auto [proc_cpu, proc_rss] = (stats.cpu_seconds && stats.memory) ? std::pair<double, int64_t>{0, 0}
                                                                  : ProcUsage(UsagePid());
  s.cpu_seconds = stats.cpu_seconds.value_or(proc_cpu);
  s.memory = stats.memory.value_or(proc_rss);
  s.pids = stats.pids.value_or(1);
  s.disk = work_dir_->UsedBytes();
  double dt = Seconds(now - last_sample_at_);
  s.cpu_percent = dt > 0 ? std::max(0.0, (s.cpu_seconds - last_cpu_) / dt * 100) : 0;
  last_cpu_ = s.cpu_seconds;
  last_sample_at_ = now;
  peak_memory_ = std::max(peak_memory_, s.memory);
  observer_.OnUsage(s);

  const Limits& lim = spec_.limits;
  if (lim.disk > 0 && (s.disk >= lim.disk || work_dir_->Full())) {
    Terminate(Ending::kDisk, "the task filled its work dir to the disk limit of " +
                                 Bytes(lim.disk) + "; raise limits.disk or write less");
    return;
  }
  CheckLimit("memory", static_cast<double>(s.memory), static_cast<double>(lim.memory),
             "usage " + Bytes(s.memory) + " of " + Bytes(lim.memory));
  CheckLimit("disk", static_cast<double>(s.disk), static_cast<double>(lim.disk),
             "usage " + Bytes(s.disk) + " of " + Bytes(lim.disk));
  CheckLimit("pids", static_cast<double>(s.pids), static_cast<double>(lim.pids),
             "count " + std::to_string(s.pids) + " of " + std::to_string(lim.pids));
  char cpu_text[64];
  std::snprintf(cpu_text, sizeof(cpu_text), "usage %.0f%% of %.0f%%", s.cpu_percent,
                lim.cpus * 100);
  CheckLimit("cpu", s.cpu_percent, lim.cpus * 100, cpu_text);
}

pid_t TaskRun::UsagePid() const {
  if (sandbox_ == nullptr) return pid_;
  std::istringstream in(ReadProcFile("/proc/" + std::to_string(pid_) + "/task/" +
                                     std::to_string(pid_) + "/children"));
  pid_t child = 0;
  return (in >> child) && child > 0 ? child : pid_;
}

void TaskRun::OnExit() {
  // The leader is a zombie now: kill what it left behind while its pid still
  // pins the process group id, read the final counters, then reap it.
  end_ = Clock::now();
  KillEverything();
  if (cgroup_) final_stats_ = cgroup_->Stats();
  pid_t r;
  do {
    r = ::wait4(pid_, &status_, 0, &rusage_);
  } while (r < 0 && errno == EINTR);
  reaped_ = true;
  if (status_read_.get() >= 0) {
    sandbox_report_ = ReadSandboxReport(status_read_.get());
    if (sandbox_report_.task_status) status_ = *sandbox_report_.task_status;
    status_read_.Reset();
  }
  drain_until_ = Clock::now() + kDrainAfterExit;
}

void TaskRun::Loop() {
  std::stop_callback wake_on_stop(stop_, [fd = wake_.get()] {
    uint64_t one = 1;
    ssize_t ignored = ::write(fd, &one, sizeof(one));
    (void)ignored;
  });
  std::optional<Clock::time_point> timeout_at;
  if (spec_.timeout.count() > 0) timeout_at = start_ + spec_.timeout;
  last_sample_at_ = start_;
  Clock::time_point next_sample = start_ + options_.sample_interval;
  std::vector<char> buf(kReadChunk);

  for (;;) {
    Clock::time_point now = Clock::now();
    if (reaped_ && ((out_.get() < 0 && err_.get() < 0) || now >= *drain_until_)) break;
    if (!reaped_) {
      if (stop_.stop_requested()) Terminate(Ending::kStop, "stop requested");
      if (timeout_at && now >= *timeout_at) {
        Terminate(Ending::kTimeout,
                  "timed out after " + std::to_string(Seconds(spec_.timeout)) + " s");
      }
      if (kill_at_ && now >= *kill_at_) {
        KillEverything();
        kill_at_.reset();
      }
      if (now >= next_sample) {
        Sample();
        next_sample = now + options_.sample_interval;
      }
    }

    Clock::time_point wake_at = now + std::chrono::seconds(1);
    if (!reaped_) {
      wake_at = std::min(wake_at, next_sample);
      if (timeout_at && ending_ == Ending::kNone) wake_at = std::min(wake_at, *timeout_at);
      if (kill_at_) wake_at = std::min(wake_at, *kill_at_);
    } else {
      wake_at = std::min(wake_at, *drain_until_);
    }
    pollfd fds[4];
    int n = 0;
    int out_i = -1, err_i = -1, pid_i = -1, wake_i = -1;
    if (out_.get() >= 0) fds[out_i = n++] = {out_.get(), POLLIN, 0};
    if (err_.get() >= 0) fds[err_i = n++] = {err_.get(), POLLIN, 0};
    if (!reaped_ && pidfd_.get() >= 0) fds[pid_i = n++] = {pidfd_.get(), POLLIN, 0};
    if (!reaped_ && ending_ == Ending::kNone) fds[wake_i = n++] = {wake_.get(), POLLIN, 0};
    auto wait_ms = std::chrono::ceil<std::chrono::milliseconds>(wake_at - Clock::now()).count();
    if (pidfd_.get() < 0 && !reaped_) wait_ms = std::min<long>(wait_ms, 10);  // no pidfd: poll
    int ready = ::poll(fds, static_cast<nfds_t>(n), static_cast<int>(std::max<long>(0, wait_ms)));
    if (ready < 0 && errno != EINTR) {
      spdlog::error("process isolation: poll failed task_id={} error={}", spec_.task_id,
                    std::strerror(errno));
      break;
    }
    auto drain = [&](int index, UniqueFd& fd, OutputStream stream) {
      if (index < 0 || !(fds[index].revents & (POLLIN | POLLHUP | POLLERR))) return;
      ssize_t got = ::read(fd.get(), buf.data(), buf.size());
      if (got > 0) {
        observer_.OnOutput(stream, std::string_view(buf.data(), static_cast<size_t>(got)));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        fd.Reset();
      }
    };
    if (ready > 0) {
      drain(out_i, out_, OutputStream::kStdout);
      drain(err_i, err_, OutputStream::kStderr);
      if (wake_i >= 0 && (fds[wake_i].revents & POLLIN)) {
        uint64_t v;
        ssize_t ignored = ::read(wake_.get(), &v, sizeof(v));
        (void)ignored;
      }
    }
    bool exited = false;
    if (pid_i >= 0) {
      exited = (fds[pid_i].revents & POLLIN) != 0;
    } else if (!reaped_) {
      siginfo_t info{};
      exited = ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
               info.si_pid == pid_;
    }
    if (exited) OnExit();
  }
}

RunResult TaskRun::Finish() {
  RunResult r;
  r.isolation = "process";
  if (!sandbox_report_.setup_error.empty() && ending_ == Ending::kNone) {
    return RunError("process", errc::kIsolationUnavailable,
                    "cannot build the process sandbox: " + sandbox_report_.setup_error +
                        " (check the runner's log at start; --process-sandbox off runs tasks "
                        "bare)");
  }
  if (sandbox_report_.exec_errno != 0 && ending_ == Ending::kNone) {
    int e = sandbox_report_.exec_errno;
    r.exit_code = e == ENOENT ? 127 : 126;
    SetEnding(r, RunResult::Kind::kExited,
              e == ENOENT ? "command not found in the sandbox: " + spec_.command[0]
                          : "cannot run " + spec_.command[0] + ": " + std::strerror(e));
    observer_.OnOutput(OutputStream::kStderr, "runner: " + r.message + "\n");
    return r;
  }
  r.usage.duration = Seconds(end_ - start_);
  double ru_cpu = Seconds(std::chrono::seconds(rusage_.ru_utime.tv_sec) +
                          std::chrono::microseconds(rusage_.ru_utime.tv_usec) +
                          std::chrono::seconds(rusage_.ru_stime.tv_sec) +
                          std::chrono::microseconds(rusage_.ru_stime.tv_usec));
  r.usage.cpu_seconds = final_stats_.cpu_seconds.value_or(ru_cpu);
  r.usage.peak_memory = final_stats_.memory_peak.value_or(
      std::max<int64_t>(peak_memory_, static_cast<int64_t>(rusage_.ru_maxrss) * 1024));

  bool signaled = WIFSIGNALED(status_);
  int code = signaled ? 128 + WTERMSIG(status_) : WEXITSTATUS(status_);
  r.exit_code = code;
  const Limits& lim = spec_.limits;
  switch (ending_) {
    case Ending::kTimeout:
      SetEnding(r, RunResult::Kind::kTimedOut,
                "the task " + ending_message_ + " (limit set by its timeout)");
      return r;
    case Ending::kStop:
      SetEnding(r, RunResult::Kind::kStopped, "the task was stopped before it finished");
      return r;
    case Ending::kPolicyKill:
    case Ending::kDisk:
      SetEnding(r, RunResult::Kind::kOverLimit, ending_message_);
      return r;
    case Ending::kNone:
      break;
  }
  if (final_stats_.oom_kills > 0 && code != 0) {
    SetEnding(r, RunResult::Kind::kOomKilled,
              "the task exceeded its memory limit of " + Bytes(lim.memory) +
                  " and was killed; raise limits.memory");
    return r;
  }
  bool disk_full = lim.disk > 0 && (work_dir_->Full() || work_dir_->UsedBytes() >= lim.disk);
  if (lim.disk > 0 && ((signaled && WTERMSIG(status_) == SIGXFSZ) || (disk_full && code != 0))) {
    SetEnding(r, RunResult::Kind::kOverLimit,
              "the task tried to write more than its disk limit of " + Bytes(lim.disk) +
                  "; raise limits.disk or write less");
    return r;
  }
  SetEnding(r, RunResult::Kind::kExited,
            signaled ? "the task was killed by " + SignalName(WTERMSIG(status_)) : "");
  return r;
}

RunResult TaskRun::Run() {
  if (spec_.command.empty() || spec_.command[0].empty()) {
    return RunError("process", errc::kValidationFailed, "the task has no command");
  }
  if (sandbox_ != nullptr && !sandbox_->usable()) {
    return RunError("process", errc::kIsolationUnavailable,
                    "process tasks must run in the sandbox, which this host cannot build: " +
                        sandbox_->unavailable_reason());
  }
  if (Status st = Prepare(); !st.ok()) {
    return RunError("process", errc::kInternal, st.error().message);
  }
  if (exe_.empty()) {
    exec_stage_ = kExec;
    exec_errno_ = ENOENT;
  } else if (Status st = Spawn(); !st.ok()) {
    return RunError("process", errc::kInternal, st.error().message);
  }
  if (exec_stage_ != 0) {
    if (pid_ > 0) {
      ::waitpid(pid_, nullptr, 0);
      reaped_ = true;
    }
    std::string what = exec_stage_ == kNamespaces ? "cannot enter the sandbox's namespaces"
                       : sandbox_ != nullptr && exec_stage_ == kExec
                           ? "cannot start the sandbox init"
                       : exec_stage_ == kExec      ? "cannot run " + spec_.command[0]
                       : exec_stage_ == kChdir     ? "cannot enter the work dir"
                       : exec_stage_ == kSetLimits ? "cannot set resource limits"
                                                   : "cannot join the task cgroup";
    std::string message = what + ": " + std::strerror(exec_errno_);
    if (exec_stage_ == kExec && (sandbox_ == nullptr || exe_.empty()) &&
        (exec_errno_ == ENOENT || exec_errno_ == EACCES)) {
      // What a shell does: the task ran and failed with 127/126.
      RunResult r;
      r.isolation = "process";
      r.exit_code = exec_errno_ == ENOENT ? 127 : 126;
      SetEnding(r, RunResult::Kind::kExited,
                exec_errno_ == ENOENT ? "command not found: " + spec_.command[0] : message);
      observer_.OnOutput(OutputStream::kStderr, "runner: " + r.message + "\n");
      return r;
    }
    return RunError("process", errc::kInternal, message);
  }
  observer_.OnStarted("process", std::to_string(pid_));
  spdlog::debug("process isolation: started task_id={} worker_id={} pid={} dir={}", spec_.task_id,
                spec_.worker_id, pid_, work_dir_->path().string());
  Loop();
  if (!reaped_) {  // poll failed: make sure nothing is left
    KillEverything();
    OnExit();
  }
  RunResult r = Finish();
  spdlog::debug("process isolation: finished task_id={} worker_id={} exit_code={} error={}",
                spec_.task_id, spec_.worker_id, r.exit_code, r.error_code);
  // Reaped, and what it left in its cgroup killed (OnExit): the rest of the
  // tear-down need not hold up the report.
  cleaner_.Take(Leftover(std::move(cgroup_), std::move(work_dir_), std::move(mount_ns_)));
  return r;
}

}  // namespace runner::isolation::process
