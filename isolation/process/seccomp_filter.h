#pragma once

// The seccomp filter of sandboxed process tasks, compiled once with
// libseccomp into classic BPF and handed to every task's init (see
// sandbox.h), which loads it into the task's process after no_new_privs.
//
// It denies, with EPERM (the task sees a failed call, it is not killed),
// what Docker's default profile denies an unprivileged container: mount and
// the new mount API, umount, pivot_root, new namespaces (unshare, setns,
// clone with a CLONE_NEW* flag; clone3 gets ENOSYS so libc falls back to
// clone, whose flags a filter can see), kernel modules, kexec, bpf,
// perf_event_open, the keyring (keyctl, add_key, request_key), userfaultfd,
// reboot, swapon/swapoff, setting clocks and time, acct, quotactl,
// open_by_handle_at and name_to_handle_at, and the rest of that list
// (ptrace helpers process_vm_*, kcmp, NUMA policy, iopl/ioperm, syslog,
// vhangup, lookup_dcookie, obsolete calls). Everything else is allowed. The
// rules cover x86-64, and the i386 and x32 entry points too.
//
// Thread-safety: a pure function.

#include "base/result.h"

namespace runner::isolation::process {

// A sealed memfd (O_CLOEXEC) holding the filter as an array of sock_filter.
Result<int> CompileSeccompFilter();

}  // namespace runner::isolation::process
