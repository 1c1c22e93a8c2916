#include "isolation/process/work_dir.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include <spdlog/spdlog.h>

namespace runner::isolation::process {
namespace {

namespace fs = std::filesystem;

constexpr int kMaxWalkEntries = 100000;

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
  if (mount_tmpfs && disk_limit > 0) {
    std::string options = "size=" + std::to_string(disk_limit) + ",mode=0700";
    if (::mount("tmpfs", path.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) != 0) {
      return MakeError("internal", "mount a tmpfs on " + path.string() + ": " +
                                       std::strerror(errno) +
                                       " (set use_tmpfs=false to rely on file-size limits)");
    }
    dir->mounted_ = true;
  }
  if (::mkdir(dir->tmp().c_str(), 0700) != 0) {
    return MakeError("internal",
                     "create " + dir->tmp().string() + ": " + std::strerror(errno));
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
  for (fs::recursive_directory_iterator it(path_, fs::directory_options::skip_permission_denied,
                                           ec),
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

}  // namespace runner::isolation::process
