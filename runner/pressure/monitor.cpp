#include "runner/pressure/monitor.h"

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <utility>
#include <vector>

namespace runner::pressure {
namespace {

double Percent(int64_t used, int64_t total) {
  return total > 0 ? 100.0 * static_cast<double>(used) / static_cast<double>(total) : 0.0;
}

}  // namespace

Monitor::Monitor(std::unique_ptr<ResourceSource> source, MonitorOptions options,
                 metrics::Registry& metrics, ChangeCallback on_change, SampleCallback on_sample,
                 Clock& clock)
    : options_(options),
      clock_(clock),
      on_change_(std::move(on_change)),
      on_sample_(std::move(on_sample)),
      cpu_(metrics.GetGauge("runner_host_cpu_percent", "Host CPU busy, percent of all cores")),
      mem_used_(metrics.GetGauge("runner_host_memory_used_bytes",
                                 "Host memory in use (MemTotal - MemAvailable)")),
      mem_total_(metrics.GetGauge("runner_host_memory_total_bytes", "Host memory")),
      disk_used_(metrics.GetGauge("runner_host_disk_used_bytes",
                                  "Used bytes of the fullest watched filesystem")),
      disk_total_(metrics.GetGauge("runner_host_disk_total_bytes",
                                   "Size of the fullest watched filesystem")),
      source_(std::move(source)) {
  (void)spdlog::default_logger_raw();  // build spdlog's registry before our thread logs
}

Monitor::~Monitor() { Stop(); }

void Monitor::Start() {
  if (thread_.joinable()) return;
  thread_ = std::jthread([this](std::stop_token st) { Loop(st); });
}

void Monitor::Stop() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void Monitor::Loop(std::stop_token stop) {
  std::mutex m;
  std::condition_variable_any cv;
  while (!stop.stop_requested()) {
    SampleOnce();
    std::unique_lock lock(m);
    clock_.WaitFor(cv, lock, stop, options_.interval, [] { return false; });
  }
}

void Monitor::SampleOnce() {
  std::lock_guard sample_lock(sample_mu_);
  const Reading r = source_->Read();
  const auto& t = options_.thresholds;
  const double mem_pct = Percent(r.memory_used, r.memory_total);
  const double disk_pct = Percent(r.disk_used, r.disk_total);
  const double cpu = r.cpu_percent.value_or(0);
  // A high mark of 100 or more disables that check (a saturated host reads
  // exactly 100% CPU).
  if (r.cpu_percent && t.cpu_high < 100 && cpu >= t.cpu_high) {
    ++cpu_streak_;
  } else {
    cpu_streak_ = 0;
  }

  // Over the high marks: the reasons to throttle.
  std::vector<std::string> over;
  if (cpu_streak_ >= std::max(1, options_.cpu_sustain)) {
    over.push_back(fmt::format("cpu {:.1f}% >= {:.0f}%", cpu, t.cpu_high));
  }
  if (r.memory_total > 0 && t.memory_high < 100 && mem_pct >= t.memory_high) {
    over.push_back(fmt::format("memory {:.1f}% >= {:.0f}%", mem_pct, t.memory_high));
  }
  if (r.disk_total > 0 && t.disk_high < 100 && disk_pct >= t.disk_high) {
    over.push_back(fmt::format("disk {:.1f}% >= {:.0f}% ({})", disk_pct, t.disk_high, r.disk_path));
  }
  // Still over the low marks: the reasons to stay throttled. A disabled check
  // (high mark 100) must not hold the pool either: a saturated host reads 100%.
  std::vector<std::string> still;
  if (r.cpu_percent && t.cpu_high < 100 && cpu >= t.cpu_low) {
    still.push_back(fmt::format("cpu {:.1f}% >= {:.0f}%", cpu, t.cpu_low));
  }
  if (r.memory_total > 0 && t.memory_high < 100 && mem_pct >= t.memory_low) {
    still.push_back(fmt::format("memory {:.1f}% >= {:.0f}%", mem_pct, t.memory_low));
  }
  if (r.disk_total > 0 && t.disk_high < 100 && disk_pct >= t.disk_low) {
    still.push_back(fmt::format("disk {:.1f}% >= {:.0f}% ({})", disk_pct, t.disk_low, r.disk_path));
  }

  ResourceSample sample;
  sample.cpu_percent = cpu;
  sample.memory_used = r.memory_used;
  sample.memory_total = r.memory_total;
  sample.disk_used = r.disk_used;
  sample.disk_total = r.disk_total;
  cpu_.Set(cpu);
  mem_used_.Set(static_cast<double>(r.memory_used));
  mem_total_.Set(static_cast<double>(r.memory_total));
  disk_used_.Set(static_cast<double>(r.disk_used));
  disk_total_.Set(static_cast<double>(r.disk_total));

  bool changed = false;
  bool now_throttled = false;
  std::string reason;
  {
    std::lock_guard lock(mu_);
    last_ = sample;
    if (!throttled_ && !over.empty()) {
      throttled_ = true;
      changed = true;
      reason_ = fmt::format("{}", fmt::join(over, ", "));
    } else if (throttled_ && still.empty()) {
      throttled_ = false;
      changed = true;
      reason_.clear();
    } else if (throttled_) {
      reason_ = fmt::format("{}", fmt::join(over.empty() ? still : over, ", "));
    }
    now_throttled = throttled_;
    reason = reason_;
  }
  if (on_sample_) on_sample_(sample);
  if (changed) {
    if (now_throttled) {
      spdlog::warn("host under pressure: throttling reason=\"{}\"", reason);
    } else {
      spdlog::info("host pressure relieved: resuming");
    }
    if (on_change_) on_change_(now_throttled, reason);
  }
}

ResourceSample Monitor::Last() const {
  std::lock_guard lock(mu_);
  return last_;
}

}  // namespace runner::pressure
