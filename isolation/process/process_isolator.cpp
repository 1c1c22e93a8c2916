#include "isolation/process/process_isolator.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "isolation/cleanup_queue.h"
#include "isolation/process/sandbox.h"
#include "isolation/process/work_dir.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

// The child of a task shares the runner's memory until it execs (clone3 with
// CLONE_VM | CLONE_VFORK, as posix_spawn does), so starting a task does not
// copy the page tables of a runner with hundreds of threads: that copy was
// most of the per-task cost (a no-op task took 3 ms, the exec 1). The child
// needs its own stack and an entry point, which only assembly can give a raw
// clone3. ThreadSanitizer cannot follow a second process in its memory: its
// builds, and other architectures, use the copying clone3/fork path.
// Under AddressSanitizer the child's functions are left uninstrumented (its
// no-return handling would inspect the runner thread's stack while the child
// runs on its own), and the child stack's shadow is cleared before each use.
#if defined(__SANITIZE_ADDRESS__)
#define RUNNER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RUNNER_ASAN 1
#endif
#endif
#ifdef RUNNER_ASAN
#include <sanitizer/asan_interface.h>
#define RUNNER_CHILD_CODE __attribute__((no_sanitize_address))
#else
#define RUNNER_CHILD_CODE
#endif

// Under ThreadSanitizer the child must come from fork(), which TSan
// intercepts to hold its own locks across the fork: a raw clone3 copy can
// inherit a lock another thread held, and the child then hangs in the first
// intercepted call (sigaction) before exec (seen in CI: 10 s stuck, then
// killed). Production builds never call an interceptor there.
#if defined(__SANITIZE_THREAD__)
#define RUNNER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RUNNER_TSAN 1
#endif
#endif
#ifdef RUNNER_TSAN
constexpr bool kTsan = true;
#else
constexpr bool kTsan = false;
#endif

#if defined(__x86_64__) && !defined(RUNNER_TSAN)
#define RUNNER_SHARED_SPAWN 1
// long runner_clone3_call(clone_args* args, size_t size, int (*fn)(void*), void* arg):
// in the child, calls fn(arg) on the stack of `args` and exits with its
// result; in the parent, returns the pid or -errno. The syscall keeps r8/r9
// for the child; the stack top the kernel gives it is 16-byte aligned.
extern "C" long runner_clone3_call(void* args, unsigned long size, int (*fn)(void*), void* arg);
asm(R"(
  .text
  .globl runner_clone3_call
  .hidden runner_clone3_call
  .type runner_clone3_call, @function
runner_clone3_call:
  .cfi_startproc
  mov %rdx, %r8
  mov %rcx, %r9
  mov $435, %eax
  syscall
  test %rax, %rax
  jz 1f
  ret
1:
  .cfi_undefined rip
  xor %ebp, %ebp
  mov %r9, %rdi
  call *%r8
  mov %eax, %edi
  mov $60, %eax
  syscall
  hlt
  .cfi_endproc
  .size runner_clone3_call, .-runner_clone3_call
)");
#endif

namespace runner::isolation::process {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kDefaultPath = "/usr/local/bin:/usr/bin:/bin";
constexpr std::chrono::milliseconds kDrainAfterExit{2000};
constexpr std::chrono::milliseconds kExecReportTimeout{10000};
constexpr size_t kReadChunk = 64 * 1024;
constexpr double kRearmFraction = 0.8;
constexpr std::chrono::milliseconds kPrebuiltWait{5};

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

Result<std::pair<UniqueFd, UniqueFd>> Pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return MakeError("internal", std::string("pipe: ") + std::strerror(errno));
  }
  return std::make_pair(UniqueFd(fds[0]), UniqueFd(fds[1]));
}

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

RUNNER_CHILD_CODE bool WriteAll(const char* path, const char* text) {
  int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  size_t n = std::strlen(text);
  bool ok = ::write(fd, text, n) == static_cast<ssize_t>(n);
  ::close(fd);
  return ok;
}

[[noreturn]] RUNNER_CHILD_CODE void ReportAndExit(const ChildPlan& p, ChildStage stage) {
  int err = errno;
  if (p.report != nullptr) {
    p.report->stage = stage;
    p.report->err = err;
  } else {
    unsigned char msg[1 + sizeof(int)];
    msg[0] = stage;
    std::memcpy(msg + 1, &err, sizeof(int));
    ssize_t ignored = ::write(p.report_fd, msg, sizeof(msg));
    (void)ignored;
  }
  ::_exit(127);
}

[[noreturn]] RUNNER_CHILD_CODE void ChildMain(const ChildPlan& p) {
  ::setsid();
  // If the runner is killed (SIGKILL, OOM) the task must not run on: another
  // node re-runs it once the lease expires. The fork happens on the worker
  // thread that waits for the task, so the thread-scoped signal is safe.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (p.parent != 0 && ::getppid() != p.parent) ::_exit(127);
  for (size_t i = 0; i < p.join_count; ++i) {
    if (::write(p.join_fds[i], "0", 1) != 1) ReportAndExit(p, kJoinCgroup);
  }
  if (p.unshare_flags != 0 && ::unshare(p.unshare_flags) != 0) ReportAndExit(p, kNamespaces);
  if (p.netns_fd >= 0 && ::setns(p.netns_fd, CLONE_NEWNET) != 0) ReportAndExit(p, kNamespaces);
  if (p.uid_map != nullptr &&
      (!WriteAll("/proc/self/setgroups", "deny") || !WriteAll("/proc/self/uid_map", p.uid_map) ||
       !WriteAll("/proc/self/gid_map", p.gid_map))) {
    ReportAndExit(p, kNamespaces);
  }
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  for (size_t i = 0; i < p.limit_count; ++i) {
    if (::setrlimit(p.limits[i].resource, &p.limits[i].value) != 0) {
      ReportAndExit(p, kSetLimits);
    }
  }
  if (::chdir(p.cwd) != 0) ReportAndExit(p, kChdir);
  if (::dup2(p.stdin_fd, 0) < 0 || ::dup2(p.stdout_fd, 1) < 0 || ::dup2(p.stderr_fd, 2) < 0) {
    ReportAndExit(p, kChdir);
  }
  // Descriptors other threads of the runner opened without O_CLOEXEC must not
  // reach the task.
  ::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
  if (p.exec_fd < 0) {
    ::execve(p.path, p.argv, p.envp);
    ReportAndExit(p, kExec);
  }
  for (int fd : p.keep_fds) {
    if (fd >= 0) ::fcntl(fd, F_SETFD, 0);
  }
  // The sandbox's init starts with every signal blocked and unblocks them
  // once it forwards them: a stop's SIGTERM sent before then stays pending.
  // Unblocked, pid 1 of a new namespace drops it (no handler yet), and the
  // task ran on until the kill grace's SIGKILL.
  sigset_t blocked_all;
  sigfillset(&blocked_all);
  ::sigprocmask(SIG_SETMASK, &blocked_all, nullptr);
  if (p.unshare_flags & CLONE_NEWPID) {
    // A fork (ThreadSanitizer builds): our child is pid 1 of the namespace;
    // we wait for it and leave with its exit code (the task's status comes
    // through the status pipe).
    pid_t init = ::fork();
    if (init < 0) ReportAndExit(p, kNamespaces);
    if (init > 0) {
      // The runner waits for the report pipe to close at exec: this waiting
      // copy never execs, so it must not hold its end (every sandboxed start
      // on this path waited out kExecReportTimeout, 10 s), nor the ends of
      // other spawns' report pipes it inherited from a thread spawning at
      // the same moment (the pre-built pool's thread and a worker: the
      // worker's start waited 10 s, and a cancel with it). It needs none of
      // its descriptors but the task's stdio.
      ::syscall(SYS_close_range, 3U, ~0U, 0U);
      // killpg reaches the init itself; this copy must outlive a SIGTERM (its
      // signals stay blocked), or its death SIGKILLs the init (PDEATHSIG) and
      // the task gets no kill grace.
      int status = 0;
      while (::waitpid(init, &status, 0) < 0 && errno == EINTR) {
      }
      ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    }
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  }
  ::syscall(SYS_execveat, p.exec_fd, "", p.argv, p.envp, AT_EMPTY_PATH);
  ReportAndExit(p, kExec);
}

#ifdef RUNNER_SHARED_SPAWN
RUNNER_CHILD_CODE int ChildEntry(void* plan) { ChildMain(*static_cast<const ChildPlan*>(plan)); }

// clone3 with `args` plus CLONE_VM | CLONE_VFORK: returns once the child has
// exec'd or exited, with its pid, or -1 and errno (the caller then copies).
// The child's stack: one per thread that spawns (a worker spawns one task at
// a time, and CLONE_VFORK returns only once the child is off the stack), kept
// for the thread's life rather than mapped and unmapped for every task.
class ChildStack {
 public:
  static constexpr size_t kSize = 256 * 1024;
  ~ChildStack() {
    if (base_ != nullptr) ::munmap(base_, kSize);
  }
  void* Get() {
    if (base_ == nullptr) {
      void* p = ::mmap(nullptr, kSize, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      base_ = p;
    }
#ifdef RUNNER_ASAN
    __asan_unpoison_memory_region(base_, kSize);  // marks left by the last child
#endif
    return base_;
  }

 private:
  void* base_ = nullptr;
};

long CloneSharingMemory(clone_args args, const ChildPlan& plan) {
  thread_local ChildStack stack;
  void* base = stack.Get();
  if (base == nullptr) return -1;
  args.flags |= CLONE_VM | CLONE_VFORK;
  args.stack = reinterpret_cast<uint64_t>(base);
  args.stack_size = ChildStack::kSize;
  long r = runner_clone3_call(&args, sizeof(args), &ChildEntry, const_cast<ChildPlan*>(&plan));
  if (r < 0) {
    errno = static_cast<int>(-r);
    return -1;
  }
  return r;
}
#endif

// "SIGKILL", or "signal 42" for one without a name.
std::string SignalName(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

// Null-terminated array of C strings pointing into `storage`.
std::vector<char*> CStrings(std::vector<std::string>& storage) {
  std::vector<char*> out;
  out.reserve(storage.size() + 1);
  for (std::string& s : storage) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

bool IsExecutableFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// Looks `file` up in `path_list` the way a shell would; nullopt when absent.
std::optional<std::string> FindExecutable(const std::string& file, const std::string& path_list) {
  if (file.find('/') != std::string::npos) return file;
  std::istringstream in(path_list);
  std::string dir;
  while (std::getline(in, dir, ':')) {
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + file;
    if (IsExecutableFile(candidate)) return candidate;
  }
  return std::nullopt;
}

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

// A pre-built sandbox (see PrebuiltPool): the init waits on `ctrl`.
struct Prebuilt {
  pid_t pid = -1;  // the init (a fork's waiting copy in TSan builds)
  UniqueFd pidfd, ctrl, status_read, out, err, mount_ns;
};

// The request a pre-built init waits for (layout of init/task_init.cpp's
// Request), followed by the strings.
struct PrebuiltRequest {
  unsigned magic = 0x72756e31;
  unsigned strings_size = 0;
  unsigned argc = 0, envc = 0;
  unsigned limit_count = 0;
  int cgroup_index = -1;
  struct {
    int resource;
    unsigned long long cur, max;
  } limits[8]{};
  char name[256]{};
};

// Kills a pre-built init that no task will use, and reaps it.
void Discard(Prebuilt& p) {
  if (p.pid <= 0) return;
  p.ctrl.Reset();  // EOF: an idle init leaves by itself
  ::kill(p.pid, SIGKILL);
  while (::waitpid(p.pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  p.pid = -1;
}

}  // namespace

// Sandboxes built ahead of their task (namespaces, root, network; the init
// waiting for its request), kept ready by a thread of their own so that a
// task's start pays only its per-task parts. Single use: each is handed to
// one task and never back. The thread that builds them must outlive them
// (PR_SET_PDEATHSIG is per thread): the pool's own.
class ProcessIsolator::PrebuiltPool {
 public:
  PrebuiltPool(const ProcessIsolatorOptions& options, Sandbox& sandbox, int devnull, size_t size)
      : options_(options), sandbox_(sandbox), devnull_(devnull), size_(size) {
    thread_ = std::jthread([this](std::stop_token stop) { Loop(stop); });
  }
  ~PrebuiltPool() {
    thread_.request_stop();
    cv_.notify_all();
    thread_.join();
    std::lock_guard lock(mu_);
    for (Prebuilt& p : ready_) Discard(p);
    ready_.clear();
  }

  // A live pre-built sandbox, or nullopt (none ready: the caller builds one
  // cold). When none is ready but one is being built, waits up to
  // kPrebuiltWait for it: its build is already under way on another core,
  // and a cold start would do all of it again. Dead ones met on the way are
  // reaped and replaced.
  std::optional<Prebuilt> Take() {
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

  size_t ready() {
    std::lock_guard lock(mu_);
    return ready_.size();
  }
  // Keeps `size` ready from now on; idle ones beyond it are let go.
  void Resize(size_t size) {
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
  std::vector<pid_t> pids() {
    std::lock_guard lock(mu_);
    std::vector<pid_t> out;
    for (const Prebuilt& p : ready_) out.push_back(p.pid);
    return out;
  }
  uint64_t replaced() {
    std::lock_guard lock(mu_);
    return replaced_;
  }

 private:
  void Loop(std::stop_token stop) {
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

  Result<Prebuilt> Build();

  const ProcessIsolatorOptions& options_;
  Sandbox& sandbox_;
  const int devnull_;
  std::mutex mu_;
  size_t size_;  // guarded by mu_
  std::condition_variable_any cv_;
  std::deque<Prebuilt> ready_;  // guarded by mu_
  uint64_t replaced_ = 0;       // guarded by mu_
  uint64_t misses_ = 0;         // guarded by mu_
  bool building_ = false;       // guarded by mu_
  std::jthread thread_;         // last: started once the rest is set
};

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
  int ns_flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
  const SandboxOptions& so = sandbox_.options();
  UniqueFd netns;
  bool lo_up = false;
  if (!so.allow_network) {
    netns = UniqueFd(sandbox_.TakeNetns());
    if (netns.get() < 0) {
      ns_flags |= CLONE_NEWNET;
      lo_up = true;
    }
  }
  std::string uid_map, gid_map;
  if (sandbox_.user_namespace()) {
    ns_flags |= CLONE_NEWUSER;
    uid_map = "0 " + std::to_string(::geteuid()) + " 1\n";
    gid_map = "0 " + std::to_string(::getegid()) + " 1\n";
  }
  std::string work_root = options_.work_root.string();
  std::vector<std::string> argv_storage = PrebuiltInitArgs(
      sandbox_, lo_up, sandbox_.filter_fd(), status->second.get(), ctrl_child.get(), work_root);
  std::vector<char*> argv = CStrings(argv_storage);
  std::vector<std::string> no_env;
  std::vector<char*> envp = CStrings(no_env);

  ChildPlan plan;
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.cwd = work_root.c_str();
  plan.parent = 0;
  plan.exec_fd = sandbox_.init_fd();
  plan.netns_fd = netns.get();
  plan.uid_map = uid_map.empty() ? nullptr : uid_map.c_str();
  plan.gid_map = gid_map.empty() ? nullptr : gid_map.c_str();
  plan.keep_fds[0] = sandbox_.filter_fd();
  plan.keep_fds[1] = status->second.get();
  plan.keep_fds[2] = ctrl_child.get();
  plan.stdin_fd = devnull_;
  plan.stdout_fd = out->second.get();
  plan.stderr_fd = err->second.get();
  ChildReport shared_report;
  plan.report = &shared_report;

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int pidfd = -1;
  pid_t pid = -1;
#ifdef RUNNER_SHARED_SPAWN
  if (options_.shared_memory_spawn) {
    clone_args args{};
    args.flags = CLONE_PIDFD | static_cast<uint64_t>(ns_flags);
    args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
    args.exit_signal = SIGCHLD;
    pid = static_cast<pid_t>(CloneSharingMemory(args, plan));
    if (pid < 0) pidfd = -1;
  }
#endif
  int spawn_errno = 0;
  UniqueFd report_read;
  if (pid < 0) {
    auto report = Pipe();
    if (!report.ok()) {
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      return report.error();
    }
    report_read = std::move(report->first);
    plan.report = nullptr;
    plan.report_fd = report->second.get();
    if (!kTsan) {
      // As TaskRun::Spawn: raw clone3, only raw system calls until exec.
      clone_args args{};
      args.flags = CLONE_PIDFD | static_cast<uint64_t>(ns_flags);
      args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
      args.exit_signal = SIGCHLD;
      long r = ::syscall(SYS_clone3, &args, sizeof(args));
      if (r == 0) ChildMain(plan);
      pid = static_cast<pid_t>(r);
      if (r < 0) pidfd = -1;
    }
    if (pid < 0) {
      plan.unshare_flags = ns_flags;  // the fork makes its child pid 1 of the new namespace
      pid = ::fork();
      if (pid == 0) ChildMain(plan);
    }
    spawn_errno = errno;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) return MakeError("internal", std::string("fork: ") + std::strerror(spawn_errno));
  p.pid = pid;
  ChildStage stage = shared_report.stage;
  int stage_errno = shared_report.err;
  if (report_read.get() >= 0) {
    pollfd pfd{report_read.get(), POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(kExecReportTimeout.count())) > 0) {
      unsigned char msg[1 + sizeof(int)];
      if (::read(report_read.get(), msg, sizeof(msg)) == static_cast<ssize_t>(sizeof(msg))) {
        stage = static_cast<ChildStage>(msg[0]);
        std::memcpy(&stage_errno, msg + 1, sizeof(int));
      }
    }
  }
  if (stage != 0) {
    Discard(p);
    return MakeError("internal",
                     std::string("cannot start a pre-built init: ") + std::strerror(stage_errno));
  }
  p.pidfd = UniqueFd(pidfd >= 0 ? pidfd : static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  p.mount_ns =
      UniqueFd(::open(("/proc/" + std::to_string(pid) + "/ns/mnt").c_str(), O_RDONLY | O_CLOEXEC));
  p.status_read = std::move(status->first);
  p.out = std::move(out->first);
  p.err = std::move(err->first);
  return p;
}

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

namespace {

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

  ~TaskRun() {
    // Exceptions (an observer throwing) must not leave a child behind.
    if (pid_ > 0 && !reaped_) {
      KillEverything();
      ::waitpid(pid_, nullptr, 0);
    }
  }

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
  Clock::time_point start_, end_;
  std::optional<Clock::time_point> kill_at_, drain_until_;
  Ending ending_ = Ending::kNone;
  std::string ending_message_;
  int exec_errno_ = 0;
  ChildStage exec_stage_{};
  UniqueFd status_read_;          // the sandbox init's reports (StatusRecord)
  UniqueFd mount_ns_;             // the sandbox's mount namespace (see Leftover)
  SandboxReport sandbox_report_;  // read once the init has exited

  // Sampling state.
  Clock::time_point last_sample_at_;
  double last_cpu_ = 0;
  int64_t peak_memory_ = 0;
  double cpu_limit_ = 0;              // current quota in cores, 0 = none
  std::map<std::string, bool> over_;  // resource -> currently over its soft limit
  CgroupStats final_stats_;
};

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
  int netns_fd = -1;
  UniqueFd netns;
  int ns_flags = 0;
  std::string uid_map, gid_map;
  if (sandbox_ != nullptr) {
    auto status = Pipe();
    if (!status.ok()) return status.error();
    status_read_ = std::move(status->first);
    status_write = std::move(status->second);
    ns_flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
    const SandboxOptions& so = sandbox_->options();
    bool lo_up = false;
    if (!so.allow_network) {
      netns = UniqueFd(sandbox_->TakeNetns());
      netns_fd = netns.get();
      if (netns_fd < 0) {
        ns_flags |= CLONE_NEWNET;
        lo_up = true;
      }
    }
    if (sandbox_->user_namespace()) {
      ns_flags |= CLONE_NEWUSER;
      uid_map = "0 " + std::to_string(::geteuid()) + " 1\n";
      gid_map = "0 " + std::to_string(::getegid()) + " 1\n";
    }
    argv_storage = SandboxInitArgs(*sandbox_, lo_up, sandbox_->filter_fd(), status_write.get(),
                                   exe_, work_dir_->path(), spec_.command);
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
    plan.netns_fd = netns_fd;
    plan.uid_map = uid_map.empty() ? nullptr : uid_map.c_str();
    plan.gid_map = gid_map.empty() ? nullptr : gid_map.c_str();
    plan.keep_fds[0] = sandbox_->filter_fd();
    plan.keep_fds[1] = status_write.get();
  }
  plan.stdin_fd = devnull;
  plan.stdout_fd = out->second.get();
  plan.stderr_fd = err->second.get();
  ChildReport shared_report;
  plan.report = &shared_report;
  // Two plans: cloned straight into the v2 cgroup the child joins only the
  // v1 ones; after a plain fork it joins them all.
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

  ChildPlan cloned_plan = plan;
  cloned_plan.join_fds = joins_v1.data();
  cloned_plan.join_count = joins_v1.size();

  // Signals stay blocked across fork so no handler of the runner runs in the
  // child before it resets them.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  start_ = Clock::now();
  int pidfd = -1;
  pid_t pid = -1;
#ifdef RUNNER_SHARED_SPAWN
  if (options_.shared_memory_spawn) {
    clone_args args{};
    args.flags = CLONE_PIDFD | static_cast<uint64_t>(ns_flags);
    args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
    args.exit_signal = SIGCHLD;
    if (v2_fd >= 0) {
      clone_args into = args;
      into.flags |= CLONE_INTO_CGROUP;
      into.cgroup = static_cast<uint64_t>(v2_fd);
      pid = static_cast<pid_t>(CloneSharingMemory(into, cloned_plan));
    }
    if (pid < 0) {  // an old kernel or an unusable cgroup: join after the clone
      pidfd = -1;
      pid = static_cast<pid_t>(CloneSharingMemory(args, plan));
    }
    if (pid < 0) pidfd = -1;
  }
#endif
  int spawn_errno = 0;
  UniqueFd report_read;
  if (pid < 0) {
    // A copy of the runner reports through a pipe that closes on exec.
    auto report = Pipe();
    if (!report.ok()) {
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      return report.error();
    }
    report_read = std::move(report->first);
    plan.report = cloned_plan.report = nullptr;
    plan.report_fd = cloned_plan.report_fd = report->second.get();
    if (v2_fd >= 0 && !kTsan) {
      // Raw clone3 skips glibc's fork handlers: the child only makes raw
      // system calls until exec, like after vfork.
      clone_args args{};
      args.flags = CLONE_INTO_CGROUP | CLONE_PIDFD | static_cast<uint64_t>(ns_flags);
      args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
      args.exit_signal = SIGCHLD;
      args.cgroup = static_cast<uint64_t>(v2_fd);
      long r = ::syscall(SYS_clone3, &args, sizeof(args));
      if (r == 0) ChildMain(cloned_plan);
      pid = static_cast<pid_t>(r);  // -1: old kernel or unusable cgroup, fork below
      if (r < 0) pidfd = -1;
    }
    if (pid < 0) {
      plan.unshare_flags = ns_flags;  // the fork makes its child pid 1 of the new namespace
      pid = ::fork();
      if (pid == 0) ChildMain(plan);
    }
    spawn_errno = errno;
  }  // the parent's end of the report pipe closes here
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) {
    return MakeError("internal", std::string("fork: ") + std::strerror(spawn_errno) +
                                     " (the host is out of processes or memory)");
  }
  pid_ = pid;
  status_write.Reset();  // the init holds the only write end now: EOF once it is gone
  if (sandbox_ != nullptr) {
    // The init is alive (it has just exec'd), so this is its new namespace.
    mount_ns_ = UniqueFd(
        ::open(("/proc/" + std::to_string(pid) + "/ns/mnt").c_str(), O_RDONLY | O_CLOEXEC));
  }
  if (cgroup_) cgroup_->DoneJoining();
  out->second.Reset();
  err->second.Reset();
  out_ = std::move(out->first);
  err_ = std::move(err->first);

  if (report_read.get() >= 0) {
    pollfd pfd{report_read.get(), POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(kExecReportTimeout.count())) > 0) {
      unsigned char msg[1 + sizeof(int)];
      ssize_t n;
      do {
        n = ::read(report_read.get(), msg, sizeof(msg));
      } while (n < 0 && errno == EINTR);
      if (n == static_cast<ssize_t>(sizeof(msg))) {
        exec_stage_ = static_cast<ChildStage>(msg[0]);
        std::memcpy(&exec_errno_, msg + 1, sizeof(int));
      }
    }
  } else if (shared_report.stage != 0) {
    exec_stage_ = shared_report.stage;
    exec_errno_ = shared_report.err;
  }
  pidfd_ = UniqueFd(pidfd >= 0 ? pidfd : static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
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
    r.kind = RunResult::Kind::kError;
    r.error_code = "isolation_unavailable";
    r.message = "cannot build the process sandbox: " + sandbox_report_.setup_error +
                " (check the runner's log at start; --process-sandbox off runs tasks bare)";
    return r;
  }
  if (sandbox_report_.exec_errno != 0 && ending_ == Ending::kNone) {
    int e = sandbox_report_.exec_errno;
    r.kind = RunResult::Kind::kExited;
    r.exit_code = e == ENOENT ? 127 : 126;
    r.error_code = "nonzero_exit";
    r.message = e == ENOENT ? "command not found in the sandbox: " + spec_.command[0]
                            : "cannot run " + spec_.command[0] + ": " + std::strerror(e);
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
      r.kind = RunResult::Kind::kTimedOut;
      r.error_code = "timed_out";
      r.message = "the task " + ending_message_ + " (limit set by its timeout)";
      return r;
    case Ending::kStop:
      r.kind = RunResult::Kind::kStopped;
      r.error_code = "cancelled";
      r.message = "the task was stopped before it finished";
      return r;
    case Ending::kPolicyKill:
    case Ending::kDisk:
      r.kind = RunResult::Kind::kOverLimit;
      r.error_code = "over_limit";
      r.message = ending_message_;
      return r;
    case Ending::kNone:
      break;
  }
  if (final_stats_.oom_kills > 0 && code != 0) {
    r.kind = RunResult::Kind::kOomKilled;
    r.error_code = "oom_killed";
    r.message = "the task exceeded its memory limit of " + Bytes(lim.memory) +
                " and was killed; raise limits.memory";
    return r;
  }
  bool disk_full = lim.disk > 0 && (work_dir_->Full() || work_dir_->UsedBytes() >= lim.disk);
  if (lim.disk > 0 && ((signaled && WTERMSIG(status_) == SIGXFSZ) || (disk_full && code != 0))) {
    r.kind = RunResult::Kind::kOverLimit;
    r.error_code = "over_limit";
    r.message = "the task tried to write more than its disk limit of " + Bytes(lim.disk) +
                "; raise limits.disk or write less";
    return r;
  }
  r.kind = RunResult::Kind::kExited;
  if (code != 0) r.error_code = "nonzero_exit";
  if (signaled) r.message = "the task was killed by " + SignalName(WTERMSIG(status_));
  return r;
}

RunResult TaskRun::Run() {
  RunResult failed;
  failed.isolation = "process";
  if (spec_.command.empty() || spec_.command[0].empty()) {
    failed.error_code = "validation_failed";
    failed.message = "the task has no command";
    return failed;
  }
  if (sandbox_ != nullptr && !sandbox_->usable()) {
    failed.error_code = "isolation_unavailable";
    failed.message = "process tasks must run in the sandbox, which this host cannot build: " +
                     sandbox_->unavailable_reason();
    return failed;
  }
  if (Status st = Prepare(); !st.ok()) {
    failed.error_code = "internal";
    failed.message = st.error().message;
    return failed;
  }
  if (exe_.empty()) {
    exec_stage_ = kExec;
    exec_errno_ = ENOENT;
  } else if (Status st = Spawn(); !st.ok()) {
    failed.error_code = "internal";
    failed.message = st.error().message;
    return failed;
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
      r.kind = RunResult::Kind::kExited;
      r.exit_code = exec_errno_ == ENOENT ? 127 : 126;
      r.error_code = "nonzero_exit";
      r.message = exec_errno_ == ENOENT ? "command not found: " + spec_.command[0] : message;
      observer_.OnOutput(OutputStream::kStderr, "runner: " + r.message + "\n");
      return r;
    }
    failed.error_code = "internal";
    failed.message = message;
    return failed;
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

}  // namespace

ProcessIsolator::ProcessIsolator(ProcessIsolatorOptions options) : options_(std::move(options)) {
  if (options_.work_root.empty()) {
    throw std::invalid_argument("process isolation needs a work root (set the data dir)");
  }
  // The task's HOME and cwd must not depend on the runner's cwd.
  options_.work_root = std::filesystem::absolute(options_.work_root);
  if (options_.use_cgroups) {
    cgroups_ = CgroupHost::Detect(options_.cgroup_parent);
    cgroups_.RemoveStale();
  }
  work_root_ = std::make_unique<WorkRoot>(options_.work_root);
  cgroup_spares_ = std::make_unique<CgroupSpares>();
  sandbox_ = std::make_unique<Sandbox>(options_.sandbox);
  cleaner_ = std::make_unique<Cleaner>();
  // Last: nothing after it throws, so the destructor closes it. -1: each
  // task opens its own.
  devnull_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (options_.prebuilt_sandboxes > 0 && sandbox_->usable() && devnull_ >= 0) {
    // A tmpfs work dir (root, a disk limit) is mounted after the sandbox that
    // would run it was built, and would reach it only if the work root were a
    // shared mount: making it one is a host mount that outlives a crashed
    // runner. Such tasks start cold (shared_work_root_ stays false).
    prebuilt_ =
        std::make_unique<PrebuiltPool>(options_, *sandbox_, devnull_, options_.prebuilt_sandboxes);
    spdlog::info(
        "process isolation: {} pre-built sandboxes{}", options_.prebuilt_sandboxes,
        ::geteuid() != 0 || !options_.use_tmpfs ? "" : " (tasks with a disk limit start cold)");
  }
}

ProcessIsolator::~ProcessIsolator() {
  // Idle pre-built sandboxes go first (their inits killed and reaped).
  prebuilt_.reset();
  if (devnull_ >= 0) ::close(devnull_);
}

void ProcessIsolator::WaitForCleanup() { cleaner_->Wait(); }

size_t ProcessIsolator::PrebuiltReady() const { return prebuilt_ ? prebuilt_->ready() : 0; }
std::vector<int> ProcessIsolator::PrebuiltPids() const {
  return prebuilt_ ? prebuilt_->pids() : std::vector<int>{};
}
uint64_t ProcessIsolator::PrebuiltReplaced() const { return prebuilt_ ? prebuilt_->replaced() : 0; }
void ProcessIsolator::SetPrebuiltSandboxes(size_t count) {
  if (prebuilt_) prebuilt_->Resize(count);
}

RunResult ProcessIsolator::Run(const TaskSpec& spec, Observer& observer, std::stop_token stop) {
  TaskRun run(options_, cgroups_, *cgroup_spares_, *cleaner_, *work_root_, devnull_,
              sandbox_->enabled() ? sandbox_.get() : nullptr, prebuilt_.get(), shared_work_root_,
              spec, observer, std::move(stop));
  return run.Run();
}

}  // namespace runner::isolation::process
