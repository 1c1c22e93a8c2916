#include "isolation/process/work_dir.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <system_error>

namespace runner::isolation::process {
namespace {

namespace fs = std::filesystem;

constexpr int kMaxWalkEntries = 100000;

}  // namespace

namespace {

// Mounts the tmpfs (when asked) and makes sure `tmp/` exists.
Status Finish(WorkDir& dir, const fs::path& path, int64_t disk_limit, bool mount_tmpfs,
              bool& mounted) {
  if (mount_tmpfs && disk_limit > 0) {
    std::string options = "size=" + std::to_string(disk_limit) + ",mode=0700";
    if (::mount("tmpfs", path.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) != 0) {
      return MakeError("internal", "mount a tmpfs on " + path.string() + ": " +
                                       std::strerror(errno) +
                                       " (set use_tmpfs=false to rely on file-size limits)");
    }
    mounted = true;
  }
  if (::mkdir(dir.tmp().c_str(), 0700) != 0 && !(errno == EEXIST && !mounted)) {
    return MakeError("internal", "create " + dir.tmp().string() + ": " + std::strerror(errno));
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<WorkDir>> WorkDir::Create(const fs::path& root, const std::string& name,
                                                 int64_t disk_limit, bool mount_tmpfs) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) {
    return MakeError("internal", "create work root " + root.string() + ": " + ec.message() +
                                     " (check the data dir is writable)");
  }
  std::unique_ptr<WorkDir> dir(new WorkDir());
  fs::path path = root / name;
  if (::mkdir(path.c_str(), 0700) != 0) {
    if (errno == EEXIST) return MakeError("exists", path.string() + " exists");
    return MakeError("internal", "create work dir " + path.string() + ": " + std::strerror(errno));
  }
  dir->path_ = path;  // from here on the destructor cleans up
  if (Status st = Finish(*dir, path, disk_limit, mount_tmpfs, dir->mounted_); !st.ok()) {
    return st.error();
  }
  return dir;
}

WorkDir::~WorkDir() {
  if (path_.empty()) return;
  if (mounted_ && ::umount2(path_.c_str(), 0) != 0) {
    // Something (a process that escaped every kill) still holds it: detach
    // now, the kernel frees it when the last user goes.
    spdlog::warn("process isolation: work dir busy, detaching dir={} error={}", path_.string(),
                 std::strerror(errno));
    ::umount2(path_.c_str(), MNT_DETACH);
  }
  if (root_ != nullptr && root_->Recycle(path_)) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
  if (ec) {
    spdlog::warn("process isolation: cannot remove work dir dir={} error={}", path_.string(),
                 ec.message());
  }
}

int64_t WorkDir::UsedBytes() const {
  if (mounted_) {
    struct statvfs st {};
    if (::statvfs(path_.c_str(), &st) != 0) return 0;
    return static_cast<int64_t>((st.f_blocks - st.f_bfree) * st.f_frsize);
  }
  int64_t used = 0;
  int entries = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator
           it(path_, fs::directory_options::skip_permission_denied, ec),
       end;
       !ec && it != end && entries < kMaxWalkEntries; it.increment(ec), ++entries) {
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
      used += static_cast<int64_t>(st.st_blocks) * 512;
    }
  }
  return used;
}

bool WorkDir::Full() const {
  if (!mounted_) return false;
  struct statvfs st {};
  return ::statvfs(path_.c_str(), &st) == 0 && st.f_bavail == 0;
}

WorkRoot::WorkRoot(fs::path root, size_t max_spares)
    : root_(std::move(root)), spare_dir_(root_ / ".spare"), max_spares_(max_spares) {
  std::error_code ec;
  fs::create_directories(root_, ec);
  if (ec) {
    throw std::runtime_error("cannot create the work root " + root_.string() + ": " + ec.message() +
                             " (check the data dir is writable)");
  }
  for (fs::directory_iterator it(root_, ec), end; !ec && it != end; it.increment(ec)) {
    fs::path leftover = it->path();
    if (leftover != spare_dir_) {
      spdlog::warn("process isolation: removing a work dir left by an earlier run dir={}",
                   leftover.string());
    }
    ::umount2(leftover.c_str(), MNT_DETACH);  // EINVAL when not a mount point
    std::error_code rm_ec;
    fs::remove_all(leftover, rm_ec);
  }
  fs::create_directories(spare_dir_, ec);
}

size_t WorkRoot::spares() {
  std::lock_guard lock(mu_);
  return spares_.size();
}

Result<std::unique_ptr<WorkDir>> WorkRoot::Acquire(const std::string& name, int64_t disk_limit,
                                                   bool mount_tmpfs) {
  fs::path path = root_ / name;
  std::optional<fs::path> spare;
  {
    std::lock_guard lock(mu_);
    if (!spares_.empty()) {
      spare = std::move(spares_.back());
      spares_.pop_back();
    }
  }
  if (!spare) {
    auto dir = WorkDir::Create(root_, name, disk_limit, mount_tmpfs);
    if (dir.ok()) (*dir)->root_ = this;
    return dir;
  }
  // RENAME_NOREPLACE: never take over a path that exists.
  if (::renameat2(AT_FDCWD, spare->c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) != 0) {
    int err = errno;
    std::lock_guard lock(mu_);
    spares_.push_back(*spare);
    if (err == EEXIST) return MakeError("exists", path.string() + " exists");
    return MakeError("internal", "rename " + spare->string() + " to " + path.string() + ": " +
                                     std::strerror(err));
  }
  std::unique_ptr<WorkDir> dir(new WorkDir());
  dir->path_ = path;
  dir->root_ = this;
  if (Status st = Finish(*dir, path, disk_limit, mount_tmpfs, dir->mounted_); !st.ok()) {
    return st.error();
  }
  return dir;
}

bool WorkRoot::Recycle(const fs::path& dir) {
  {
    std::lock_guard lock(mu_);
    if (spares_.size() >= max_spares_) return false;
  }
  // Empty it without following links the task may have planted; keep tmp/
  // (a real directory) since making it again costs as much as the rmdir.
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path& entry = it->path();
    if (entry.filename() == "tmp" && it->is_directory() && !it->is_symlink()) {
      for (fs::directory_iterator t(entry, ec), tend; !ec && t != tend; t.increment(ec)) {
        fs::remove_all(t->path(), ec);
        if (ec) return false;
      }
      if (ec) return false;
      continue;
    }
    fs::remove_all(entry, ec);
    if (ec) return false;
  }
  if (ec) return false;
  fs::path tmp = dir / "tmp";
  if (::lchown(dir.c_str(), ::geteuid(), ::getegid()) != 0 || ::chmod(dir.c_str(), 0700) != 0) {
    return false;
  }
  if (fs::is_directory(fs::symlink_status(tmp)) &&
      (::lchown(tmp.c_str(), ::geteuid(), ::getegid()) != 0 || ::chmod(tmp.c_str(), 0700) != 0)) {
    return false;
  }
  std::lock_guard lock(mu_);
  if (spares_.size() >= max_spares_) return false;
  fs::path spare = spare_dir_ / std::to_string(next_spare_++);
  if (::renameat2(AT_FDCWD, dir.c_str(), AT_FDCWD, spare.c_str(), RENAME_NOREPLACE) != 0) {
    return false;
  }
  spares_.push_back(std::move(spare));
  return true;
}

}  // namespace runner::isolation::process
