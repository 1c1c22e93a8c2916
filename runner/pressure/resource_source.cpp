#include "runner/pressure/resource_source.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

namespace runner::pressure {

ProcResourceSource::ProcResourceSource(std::vector<std::string> disk_paths, std::string proc_root)
    : disk_paths_(std::move(disk_paths)), proc_root_(std::move(proc_root)) {}

Reading ProcResourceSource::Read() {
  Reading r;
  {
    std::ifstream stat(proc_root_ + "/stat");
    std::string label;
    uint64_t v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (stat >> label && label == "cpu") {
      for (auto& x : v) stat >> x;  // user nice system idle iowait irq softirq steal
      uint64_t total = 0;
      for (auto x : v) total += x;
      const uint64_t idle = v[3] + v[4];
      if (have_prev_ && total > prev_total_) {
        const double dt = static_cast<double>(total - prev_total_);
        const double di = static_cast<double>(idle >= prev_idle_ ? idle - prev_idle_ : 0);
        r.cpu_percent = std::clamp(100.0 * (dt - di) / dt, 0.0, 100.0);
      }
      prev_total_ = total;
      prev_idle_ = idle;
      have_prev_ = true;
    }
  }
  {
    std::ifstream meminfo(proc_root_ + "/meminfo");
    std::string line;
    int64_t total_kb = -1, avail_kb = -1;
    while (std::getline(meminfo, line) && (total_kb < 0 || avail_kb < 0)) {
      std::istringstream in(line);
      std::string key;
      int64_t kb = 0;
      in >> key >> kb;
      if (key == "MemTotal:") total_kb = kb;
      if (key == "MemAvailable:") avail_kb = kb;
    }
    if (total_kb > 0 && avail_kb >= 0) {
      r.memory_total = total_kb * 1024;
      r.memory_used = (total_kb - avail_kb) * 1024;
    }
  }
  double worst = -1;
  for (const auto& path : disk_paths_) {
    struct statvfs vfs {};
    if (path.empty() || ::statvfs(path.c_str(), &vfs) != 0 || vfs.f_blocks == 0) continue;
    const auto frsize = static_cast<int64_t>(vfs.f_frsize);
    const int64_t used = static_cast<int64_t>(vfs.f_blocks - vfs.f_bfree) * frsize;
    const int64_t avail = static_cast<int64_t>(vfs.f_bavail) * frsize;
    const int64_t total = used + avail;
    if (total <= 0) continue;
    const double pct = static_cast<double>(used) / static_cast<double>(total);
    if (pct > worst) {
      worst = pct;
      r.disk_used = used;
      r.disk_total = total;
      r.disk_path = path;
    }
  }
  return r;
}

}  // namespace runner::pressure
