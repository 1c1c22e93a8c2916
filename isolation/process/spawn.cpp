#include "isolation/process/spawn.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>

#include "isolation/process/sandbox.h"

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

constexpr std::chrono::milliseconds kExecReportTimeout{10000};

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

bool IsExecutableFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

}  // namespace

Result<std::pair<UniqueFd, UniqueFd>> Pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return MakeError("internal", std::string("pipe: ") + std::strerror(errno));
  }
  return std::make_pair(UniqueFd(fds[0]), UniqueFd(fds[1]));
}

Result<SpawnedChild> SpawnChild(const ChildPlan& base, int ns_flags, int cgroup_fd,
                                const std::vector<int>& joins_into_cgroup, bool shared_memory) {
  ChildPlan plan = base;
  ChildReport shared_report;
  plan.report = &shared_report;
  plan.report_fd = -1;
  ChildPlan cloned_plan = plan;  // started in cgroup_fd: joins only the rest
  cloned_plan.join_fds = joins_into_cgroup.data();
  cloned_plan.join_count = joins_into_cgroup.size();

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int pidfd = -1;
  pid_t pid = -1;
#ifdef RUNNER_SHARED_SPAWN
  if (shared_memory) {
    clone_args args{};
    args.flags = CLONE_PIDFD | static_cast<uint64_t>(ns_flags);
    args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
    args.exit_signal = SIGCHLD;
    if (cgroup_fd >= 0) {
      clone_args into = args;
      into.flags |= CLONE_INTO_CGROUP;
      into.cgroup = static_cast<uint64_t>(cgroup_fd);
      pid = static_cast<pid_t>(CloneSharingMemory(into, cloned_plan));
    }
    if (pid < 0) {  // an old kernel or an unusable cgroup: join after the clone
      pidfd = -1;
      pid = static_cast<pid_t>(CloneSharingMemory(args, plan));
    }
    if (pid < 0) pidfd = -1;
  }
#else
  (void)shared_memory;
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
    if (!kTsan) {
      // Raw clone3 skips glibc's fork handlers: the child only makes raw
      // system calls until exec, like after vfork.
      clone_args args{};
      args.flags = CLONE_PIDFD | static_cast<uint64_t>(ns_flags);
      args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
      args.exit_signal = SIGCHLD;
      if (cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = static_cast<uint64_t>(cgroup_fd);
      }
      long r = ::syscall(SYS_clone3, &args, sizeof(args));
      if (r == 0) ChildMain(cgroup_fd >= 0 ? cloned_plan : plan);
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
  if (pid < 0) return MakeError("internal", std::string("fork: ") + std::strerror(spawn_errno));

  SpawnedChild child;
  child.pid = pid;
  if (report_read.get() >= 0) {
    pollfd pfd{report_read.get(), POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(kExecReportTimeout.count())) > 0) {
      unsigned char msg[1 + sizeof(int)];
      ssize_t n;
      do {
        n = ::read(report_read.get(), msg, sizeof(msg));
      } while (n < 0 && errno == EINTR);
      if (n == static_cast<ssize_t>(sizeof(msg))) {
        child.stage = static_cast<ChildStage>(msg[0]);
        std::memcpy(&child.err, msg + 1, sizeof(int));
      }
    }
  } else if (shared_report.stage != 0) {
    child.stage = shared_report.stage;
    child.err = shared_report.err;
  }
  child.pidfd = UniqueFd(pidfd >= 0 ? pidfd : static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  return child;
}

SandboxClone PlanSandboxClone(Sandbox& sandbox) {
  SandboxClone c;
  c.ns_flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
  if (!sandbox.options().allow_network) {
    c.netns = UniqueFd(sandbox.TakeNetns());
    if (c.netns.get() < 0) {
      c.ns_flags |= CLONE_NEWNET;
      c.loopback_up = true;
    }
  }
  if (sandbox.user_namespace()) {
    c.ns_flags |= CLONE_NEWUSER;
    c.uid_map = "0 " + std::to_string(::geteuid()) + " 1\n";
    c.gid_map = "0 " + std::to_string(::getegid()) + " 1\n";
  }
  return c;
}

std::string SignalName(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

std::vector<char*> CStrings(std::vector<std::string>& storage) {
  std::vector<char*> out;
  out.reserve(storage.size() + 1);
  for (std::string& s : storage) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

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

}  // namespace runner::isolation::process
