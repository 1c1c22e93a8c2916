#pragma once

// A task's private work directory: `<work_root>/<name>`, mode 0700, with a
// `tmp/` inside for TMPDIR. When asked (root, a disk limit) it is a tmpfs
// mount of exactly that size, so the limit holds for every file the task
// writes there (ENOSPC for the writer); otherwise its size is measured by
// walking it. The destructor unmounts (lazily when something still holds it)
// and removes the directory with everything in it, on every path.
//
// Thread-safety: one WorkDir per Run() call; UsedBytes() may be called from
// that call's thread while the task runs.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "isolation/result.h"

namespace runner::isolation::process {

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
  WorkDir() = default;

  std::filesystem::path path_;
  bool mounted_ = false;
};

}  // namespace runner::isolation::process
