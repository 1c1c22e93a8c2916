#include "isolation/process/sandbox.h"

#include <fcntl.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "isolation/process/seccomp_filter.h"

// The init program, linked into the library by the build (see CMakeLists.txt).
extern "C" const char runner_task_init_start[];
extern "C" const char runner_task_init_end[];

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

namespace runner::isolation::process {
namespace {

// Forks a child that tries the namespaces a task gets; "" when it works.
std::string ProbeNamespaces(bool user_namespace) {
  int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET;
  if (user_namespace) flags |= CLONE_NEWUSER;
  pid_t pid = ::fork();
  if (pid < 0) return std::string("fork: ") + std::strerror(errno);
  if (pid == 0) ::_exit(::unshare(flags) == 0 ? 0 : errno);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
  return std::string("unshare: ") + std::strerror(WIFEXITED(status) ? WEXITSTATUS(status) : EPERM);
}

int LoadInit(std::string& error) {
  int fd = ::memfd_create("runner-task-init", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
  if (fd < 0 && errno == EINVAL)
    fd = ::memfd_create("runner-task-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    error = std::string("memfd_create: ") + std::strerror(errno);
    return -1;
  }
  const char* p = runner_task_init_start;
  while (p < runner_task_init_end) {
    ssize_t n = ::write(fd, p, static_cast<size_t>(runner_task_init_end - p));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error = std::string("write the init: ") + std::strerror(errno);
      ::close(fd);
      return -1;
    }
    p += n;
  }
  ::fchmod(fd, 0555);
  ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
  return fd;
}

}  // namespace

Sandbox::Sandbox(SandboxOptions options) : options_(options) {
  if (!options_.enabled) {
    spdlog::warn(
        "process isolation: the sandbox is OFF (--process-sandbox off): process tasks run as "
        "the runner's user ({}) with its view of the host, its network and no seccomp filter; "
        "use this only for trusted work",
        ::geteuid() == 0 ? "root" : "uid " + std::to_string(::geteuid()));
    return;
  }
  user_namespace_ = ::geteuid() != 0;
  if (std::string why = ProbeNamespaces(user_namespace_); !why.empty()) {
    reason_ = user_namespace_
                  ? "the runner is not root and cannot create user namespaces (" + why +
                        "); run it as root, or allow unprivileged user namespaces "
                        "(sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > "
                        "0), or opt out with --process-sandbox off"
                  : "the kernel refused new namespaces (" + why +
                        "); give the runner CAP_SYS_ADMIN (a privileged container) or opt out "
                        "with --process-sandbox off";
  }
  if (reason_.empty()) {
    auto filter = CompileSeccompFilter();
    if (filter.ok()) {
      filter_fd_ = *filter;
    } else {
      reason_ = filter.error().message;
    }
  }
  if (reason_.empty()) {
    std::string error;
    init_fd_ = LoadInit(error);
    if (init_fd_ < 0) reason_ = "cannot load the task init (" + error + ")";
  }
  if (!reason_.empty()) {
    spdlog::error(
        "process isolation: cannot build the process sandbox: {}. Process tasks fail with "
        "isolation_unavailable until this is fixed",
        reason_);
    return;
  }
  if (!user_namespace_ && !options_.allow_network && options_.netns_spares > 0) {
    netns_ = std::make_unique<NetnsPool>(options_.netns_spares);
  }
  spdlog::info("process isolation: sandbox {}", Describe());
}

Sandbox::~Sandbox() {
  netns_.reset();
  if (init_fd_ >= 0) ::close(init_fd_);
  if (filter_fd_ >= 0) ::close(filter_fd_);
}

std::string Sandbox::Describe() const {
  if (!options_.enabled) return "off";
  return std::string(usable() ? "on" : "unavailable") + " uid=" + std::to_string(options_.uid) +
         " gid=" + std::to_string(options_.gid) +
         " network=" + (options_.allow_network ? "host" : "none") +
         " userns=" + (user_namespace_ ? "yes" : "no");
}

std::vector<std::string> SandboxInitArgs(const Sandbox& sandbox, bool loopback_up, int filter_fd,
                                         int status_fd, const std::string& exe,
                                         const std::filesystem::path& work_dir,
                                         const std::vector<std::string>& command) {
  std::string flags = "-";
  if (sandbox.user_namespace()) flags += "u";
  if (loopback_up) flags += "l";
  if (sandbox.options().allow_network) flags += "h";
  if (sandbox.options().trace_phases) flags += "t";
  std::string path = SandboxExePath(exe, work_dir);
  std::vector<std::string> args = {"runner-task-init",
                                   flags,
                                   std::to_string(sandbox.options().uid),
                                   std::to_string(sandbox.options().gid),
                                   std::to_string(filter_fd),
                                   std::to_string(status_fd),
                                   path};
  args.insert(args.end(), command.begin(), command.end());
  return args;
}

std::string SandboxExePath(const std::string& exe, const std::filesystem::path& work_dir) {
  const std::string prefix = work_dir.string() + "/";
  if (exe.rfind(prefix, 0) == 0)
    return std::string(kSandboxWorkDir) + "/" + exe.substr(prefix.size());
  return exe;
}

std::vector<std::string> PrebuiltInitArgs(const Sandbox& sandbox, bool loopback_up, int filter_fd,
                                          int status_fd, int ctrl_fd,
                                          const std::string& work_root) {
  std::string flags = "-w";
  if (sandbox.user_namespace()) flags += "u";
  if (loopback_up) flags += "l";
  if (sandbox.options().allow_network) flags += "h";
  if (sandbox.options().trace_phases) flags += "t";
  return {"runner-task-init",
          flags,
          std::to_string(sandbox.options().uid),
          std::to_string(sandbox.options().gid),
          std::to_string(filter_fd),
          std::to_string(status_fd),
          std::to_string(ctrl_fd),
          work_root};
}

SandboxReport ReadSandboxReport(int fd) {
  // Layout of init/task_init.cpp's StatusRecord.
  struct Record {
    int kind;
    int value;
    int err;
    char step[52];
  };
  SandboxReport report;
  ::fcntl(fd, F_SETFL, O_NONBLOCK);
  Record r{};
  for (int i = 0; i < 16; ++i) {
    ssize_t n = ::read(fd, &r, sizeof(r));
    if (n != static_cast<ssize_t>(sizeof(r))) break;
    r.step[sizeof(r.step) - 1] = '\0';
    if (r.kind == 0) {
      report.task_status = r.value;
    } else if (r.kind == 1) {
      report.setup_error = std::string(r.step) + ": " + std::strerror(r.err);
    } else if (r.kind == 2) {
      report.exec_errno = r.err;
    }
  }
  return report;
}

}  // namespace runner::isolation::process
