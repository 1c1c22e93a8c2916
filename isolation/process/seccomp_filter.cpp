#include "isolation/process/seccomp_filter.h"

#include <fcntl.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

namespace runner::isolation::process {
namespace {

// Docker's default profile (moby/profiles seccomp/default.json) allows a
// list; these are the calls it leaves out (or allows only with a capability
// our tasks never have).
constexpr const char* kDenied[] = {"acct",
                                   "add_key",
                                   "adjtimex",
                                   "bpf",
                                   "clock_adjtime",
                                   "clock_settime",
                                   "create_module",
                                   "delete_module",
                                   "finit_module",
                                   "fsconfig",
                                   "fsmount",
                                   "fsopen",
                                   "fspick",
                                   "get_kernel_syms",
                                   "get_mempolicy",
                                   "init_module",
                                   "ioperm",
                                   "iopl",
                                   "kcmp",
                                   "kexec_file_load",
                                   "kexec_load",
                                   "keyctl",
                                   "lookup_dcookie",
                                   "mbind",
                                   "mount",
                                   "mount_setattr",
                                   "move_mount",
                                   "move_pages",
                                   "name_to_handle_at",
                                   "nfsservctl",
                                   "open_by_handle_at",
                                   "open_tree",
                                   "perf_event_open",
                                   "pivot_root",
                                   "process_vm_readv",
                                   "process_vm_writev",
                                   "query_module",
                                   "quotactl",
                                   "quotactl_fd",
                                   "reboot",
                                   "request_key",
                                   "set_mempolicy",
                                   "setns",
                                   "settimeofday",
                                   "stime",
                                   "swapoff",
                                   "swapon",
                                   "_sysctl",
                                   "sysfs",
                                   "syslog",
                                   "umount",
                                   "umount2",
                                   "unshare",
                                   "uselib",
                                   "userfaultfd",
                                   "ustat",
                                   "vhangup",
                                   "vm86",
                                   "vm86old"};

constexpr uint64_t kNamespaceFlags[] = {CLONE_NEWNS,     CLONE_NEWUTS, CLONE_NEWIPC,
                                        CLONE_NEWUSER,   CLONE_NEWPID, CLONE_NEWNET,
                                        CLONE_NEWCGROUP, 0x00000080 /* CLONE_NEWTIME */};

struct CtxRelease {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};

Error Failed(const std::string& what, int rc) {
  return MakeError("isolation_unavailable",
                   "cannot build the seccomp filter (" + what + ": " + std::strerror(-rc) +
                       "); install libseccomp 2.5 or later, or run with --process-sandbox off");
}

}  // namespace

Result<int> CompileSeccompFilter() {
  std::unique_ptr<void, CtxRelease> ctx(seccomp_init(SCMP_ACT_ALLOW));
  if (!ctx) return Failed("seccomp_init", -ENOMEM);
  // The task's init sets no_new_privs itself, just before loading it.
  int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_NNP, 0);
  if (rc != 0) return Failed("no_new_privs attribute", rc);
  if (seccomp_arch_native() == SCMP_ARCH_X86_64) {
    for (uint32_t arch : {SCMP_ARCH_X86, SCMP_ARCH_X32}) {
      rc = seccomp_arch_add(ctx.get(), arch);
      if (rc != 0 && rc != -EEXIST) return Failed("add arch", rc);
    }
  }
  for (const char* name : kDenied) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not a call of this architecture
    rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), nr, 0);
    if (rc != 0 && rc != -EDOM) return Failed(std::string("rule for ") + name, rc);
  }
  for (uint64_t flag : kNamespaceFlags) {
    rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                          SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag));
    if (rc != 0) return Failed("rule for clone", rc);
  }
  rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  if (rc != 0) return Failed("rule for clone3", rc);

  int fd = ::memfd_create("runner-seccomp", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return Failed("memfd_create", -errno);
  rc = seccomp_export_bpf(ctx.get(), fd);
  if (rc != 0) {
    ::close(fd);
    return Failed("export", rc);
  }
  ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
  return fd;
}

}  // namespace runner::isolation::process
