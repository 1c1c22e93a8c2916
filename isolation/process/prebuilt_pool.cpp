#include "isolation/process/prebuilt_pool.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

namespace runner::isolation::process {
namespace {

constexpr std::chrono::milliseconds kPrebuiltWait{5};

}  // namespace

void Discard(Prebuilt& p) {
  if (p.pid <= 0) return;
  p.ctrl.Reset();  // EOF: an idle init leaves by itself
  ::kill(p.pid, SIGKILL);
  while (::waitpid(p.pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  p.pid = -1;
}

ProcessIsolator::PrebuiltPool::PrebuiltPool(const ProcessIsolatorOptions& options, Sandbox& sandbox,
                                            int devnull, size_t size)
    : options_(options), sandbox_(sandbox), devnull_(devnull), size_(size) {
  thread_ = std::jthread([this](std::stop_token stop) { Loop(stop); });
}

ProcessIsolator::PrebuiltPool::~PrebuiltPool() {
  thread_.request_stop();
  cv_.notify_all();
  thread_.join();
  std::lock_guard lock(mu_);
  for (Prebuilt& p : ready_) Discard(p);
  ready_.clear();
}

std::optional<Prebuilt> ProcessIsolator::PrebuiltPool::Take() {
  for (;;) {
    std::optional<Prebuilt> p;
    {
      std::unique_lock lock(mu_);
      if (ready_.empty() && building_) {
        cv_.wait_for(lock, kPrebuiltWait, [&] { return !ready_.empty() || !building_; });
      }
      if (ready_.empty()) {
        ++misses_;
        cv_.notify_all();
        return std::nullopt;
      }
      p = std::move(ready_.front());
      ready_.pop_front();
    }
    cv_.notify_all();
    pollfd pfd{p->pidfd.get(), POLLIN, 0};
    if (p->pidfd.get() >= 0 && ::poll(&pfd, 1, 0) == 0) return p;
    Discard(*p);
    std::string why = ReadSandboxReport(p->status_read.get()).setup_error;
    spdlog::warn("process isolation: a pre-built sandbox died before its task ({}); replaced",
                 why.empty() ? "killed" : why);
    std::lock_guard lock(mu_);
    ++replaced_;
  }
}

size_t ProcessIsolator::PrebuiltPool::ready() {
  std::lock_guard lock(mu_);
  return ready_.size();
}

void ProcessIsolator::PrebuiltPool::Resize(size_t size) {
  std::deque<Prebuilt> extra;
  {
    std::lock_guard lock(mu_);
    size_ = size;
    while (ready_.size() > size_) {
      extra.push_back(std::move(ready_.back()));
      ready_.pop_back();
    }
  }
  cv_.notify_all();
  for (Prebuilt& p : extra) Discard(p);
}

std::vector<pid_t> ProcessIsolator::PrebuiltPool::pids() {
  std::lock_guard lock(mu_);
  std::vector<pid_t> out;
  for (const Prebuilt& p : ready_) out.push_back(p.pid);
  return out;
}

uint64_t ProcessIsolator::PrebuiltPool::replaced() {
  std::lock_guard lock(mu_);
  return replaced_;
}

void ProcessIsolator::PrebuiltPool::Loop(std::stop_token stop) {
  int failures = 0;
  while (!stop.stop_requested()) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, stop, [&] { return ready_.size() < size_; });
      if (stop.stop_requested()) break;
      building_ = true;
    }
    auto built = Build();
    {
      std::lock_guard lock(mu_);
      building_ = false;
      if (built.ok()) ready_.push_back(std::move(built).value());
    }
    cv_.notify_all();
    if (!built.ok()) {
      // Cold starts still work (and report the cause to their task).
      if (++failures == 1 || failures % 100 == 0) {
        spdlog::warn("process isolation: cannot pre-build a sandbox: {}", built.error().message);
      }
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, stop, std::chrono::milliseconds(200), [] { return false; });
      continue;
    }
    failures = 0;
  }
}

Result<Prebuilt> ProcessIsolator::PrebuiltPool::Build() {
  Prebuilt p;
  auto status = Pipe();
  if (!status.ok()) return status.error();
  auto out = Pipe();
  if (!out.ok()) return out.error();
  auto err = Pipe();
  if (!err.ok()) return err.error();
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return MakeError("internal", std::string("socketpair: ") + std::strerror(errno));
  }
  p.ctrl = UniqueFd(sv[0]);
  UniqueFd ctrl_child(sv[1]);
  SandboxClone clone = PlanSandboxClone(sandbox_);
  std::string work_root = options_.work_root.string();
  std::vector<std::string> argv_storage =
      PrebuiltInitArgs(sandbox_, clone.loopback_up, sandbox_.filter_fd(), status->second.get(),
                       ctrl_child.get(), work_root);
  std::vector<char*> argv = CStrings(argv_storage);
  std::vector<std::string> no_env;
  std::vector<char*> envp = CStrings(no_env);

  ChildPlan plan;
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.cwd = work_root.c_str();
  plan.parent = 0;
  plan.exec_fd = sandbox_.init_fd();
  plan.netns_fd = clone.netns.get();
  plan.uid_map = clone.uid_map.empty() ? nullptr : clone.uid_map.c_str();
  plan.gid_map = clone.gid_map.empty() ? nullptr : clone.gid_map.c_str();
  plan.keep_fds[0] = sandbox_.filter_fd();
  plan.keep_fds[1] = status->second.get();
  plan.keep_fds[2] = ctrl_child.get();
  plan.stdin_fd = devnull_;
  plan.stdout_fd = out->second.get();
  plan.stderr_fd = err->second.get();
  auto child = SpawnChild(plan, clone.ns_flags, -1, {}, options_.shared_memory_spawn);
  if (!child.ok()) return child.error();
  p.pid = child->pid;
  if (child->stage != 0) {
    Discard(p);
    return MakeError("internal",
                     std::string("cannot start a pre-built init: ") + std::strerror(child->err));
  }
  p.pidfd = std::move(child->pidfd);
  p.mount_ns = UniqueFd(
      ::open(("/proc/" + std::to_string(p.pid) + "/ns/mnt").c_str(), O_RDONLY | O_CLOEXEC));
  p.status_read = std::move(status->first);
  p.out = std::move(out->first);
  p.err = std::move(err->first);
  return p;
}

}  // namespace runner::isolation::process
