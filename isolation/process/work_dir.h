#pragma once

// A task's private work directory: `<work_root>/<name>`, mode 0700, with a
// `tmp/` inside for TMPDIR. When asked (root, a disk limit) it is a tmpfs
// mount of exactly that size, so the limit holds for every file the task
// writes there (ENOSPC for the writer); otherwise its size is measured by
// walking it. The destructor unmounts (lazily when something still holds it)
// and removes the directory with everything in it, on every path.
//
// WorkRoot owns `<work_root>` and recycles emptied work dirs (kept under
// `<work_root>/.spare/`) instead of removing them: on ext4 with online discard
// (this appliance's disks) every rmdir of a directory costs ~4 ms, more than
// the fork/exec of a short task. A recycled dir is emptied completely and its
// mode and owner reset before it is renamed back into the spares; whatever
// cannot be emptied is removed instead. The task-named path is gone either way.
//
// Thread-safety: one WorkDir per Run() call; UsedBytes() may be called from
// that call's thread while the task runs. WorkRoot is shared by all Run()
// calls of an isolator (its spares list is guarded by a mutex).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/result.h"

namespace runner::isolation::process {

class WorkRoot;

class WorkDir {
 public:
  // Error `exists` when `<root>/<name>` already exists (the caller picks
  // another name); `internal` for anything else (message says what failed).
  static Result<std::unique_ptr<WorkDir>> Create(const std::filesystem::path& root,
                                                 const std::string& name, int64_t disk_limit,
                                                 bool mount_tmpfs);
  ~WorkDir();
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path tmp() const { return path_ / "tmp"; }
  bool is_tmpfs() const { return mounted_; }
  // Bytes the task has stored in the work dir: tmpfs usage, or a walk that
  // counts allocated blocks (stops after a bounded number of entries).
  int64_t UsedBytes() const;
  // True when a size-capped tmpfs has no free block left.
  bool Full() const;

 private:
  friend class WorkRoot;
  WorkDir() = default;

  std::filesystem::path path_;
  bool mounted_ = false;
  WorkRoot* root_ = nullptr;  // recycles the dir when set
};

class WorkRoot {
 public:
  // Creates `root`. Removes what a crashed run left there (task dirs, their
  // tmpfs mounts, spares): call it before any task of this root runs.
  explicit WorkRoot(std::filesystem::path root, size_t max_spares = 32);
  WorkRoot(const WorkRoot&) = delete;
  WorkRoot& operator=(const WorkRoot&) = delete;

  const std::filesystem::path& path() const { return root_; }
  // Like WorkDir::Create under this root, reusing a spare dir when one is left.
  Result<std::unique_ptr<WorkDir>> Acquire(const std::string& name, int64_t disk_limit,
                                           bool mount_tmpfs);
  size_t spares();

 private:
  friend class WorkDir;
  // Empties `dir` (unmounted already) and keeps it as a spare; false when it
  // could not, and the caller removes it.
  bool Recycle(const std::filesystem::path& dir);

  std::filesystem::path root_;
  std::filesystem::path spare_dir_;
  size_t max_spares_;
  std::mutex mu_;
  std::vector<std::filesystem::path> spares_;  // guarded by mu_
  uint64_t next_spare_ = 0;                    // guarded by mu_
};

}  // namespace runner::isolation::process
