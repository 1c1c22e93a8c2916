#pragma once

// Where the pressure monitor reads the host's CPU, memory and disk. The /proc
// implementation is the real one; tests inject readings through their own
// ResourceSource.
//
// Thread-safety: Read() is called from one thread (the monitor's) at a time.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace runner::pressure {

struct Reading {
  // Percent of all CPUs busy since the previous Read(); nullopt on the first.
  std::optional<double> cpu_percent;
  int64_t memory_used = 0;  // MemTotal - MemAvailable
  int64_t memory_total = 0;
  // The fullest of the watched filesystems (data dir, Docker's root dir).
  int64_t disk_used = 0;
  int64_t disk_total = 0;  // used + available to unprivileged users, like df
  std::string disk_path;
};

class ResourceSource {
 public:
  virtual ~ResourceSource() = default;
  virtual Reading Read() = 0;
};

// /proc/stat deltas, /proc/meminfo MemAvailable, statvfs of each disk path
// (missing paths are skipped).
class ProcResourceSource : public ResourceSource {
 public:
  explicit ProcResourceSource(std::vector<std::string> disk_paths, std::string proc_root = "/proc");
  Reading Read() override;

 private:
  std::vector<std::string> disk_paths_;
  std::string proc_root_;
  uint64_t prev_total_ = 0;
  uint64_t prev_idle_ = 0;
  bool have_prev_ = false;
};

}  // namespace runner::pressure
