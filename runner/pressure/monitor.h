#pragma once

// Host backpressure: samples CPU, memory and disk every `interval` from a
// ResourceSource and decides whether the node should stop claiming. It turns
// on when any resource reaches its high threshold (CPU only after
// `cpu_sustain` consecutive samples, so one busy second does not stall the
// node) and off only when every resource is back under its low threshold
// (hysteresis). A high mark of 100 or more disables that resource's check.
// Each change calls `on_change(throttled, reason)`; the pool acts on it
// (stops claiming, logs, emits pool.throttled / pool.resumed).
// Host gauges (runner_host_*) are updated on every sample.
//
// Whether the node is throttled is told, never asked: the monitor keeps only
// the hysteresis state it decides with, and the pool the flag it claims by
// (Pool::SetBackpressure), which the status and metrics read.
//
// Thread-safety: Start/Stop from one owner thread; SampleOnce and Last from
// any thread. Callbacks run on the sampling thread
// without the monitor's lock held.

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>

#include "base/clock.h"
#include "runner/config.h"
#include "runner/metrics/registry.h"
#include "runner/node/node_control.h"
#include "runner/pressure/resource_source.h"

namespace runner::pressure {

struct MonitorOptions {
  PressureThresholds thresholds;
  std::chrono::milliseconds interval{1000};
  int cpu_sustain = 3;  // consecutive samples at or over cpu_high before throttling
};

class Monitor {
 public:
  using ChangeCallback = std::function<void(bool throttled, const std::string& reason)>;
  using SampleCallback = std::function<void(const ResourceSample& sample)>;

  Monitor(std::unique_ptr<ResourceSource> source, MonitorOptions options,
          metrics::Registry& metrics, ChangeCallback on_change, SampleCallback on_sample = {},
          Clock& clock = SystemClock());
  ~Monitor();
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  void Start();  // one sample now, then every interval
  void Stop();   // idempotent; joins the sampling thread

  // Takes one reading and applies it (what the thread does each interval).
  void SampleOnce();

  ResourceSample Last() const;

 private:
  void Loop(std::stop_token stop);

  const MonitorOptions options_;
  Clock& clock_;  // paces the sampling thread
  ChangeCallback on_change_;
  SampleCallback on_sample_;
  metrics::Gauge& cpu_;
  metrics::Gauge& mem_used_;
  metrics::Gauge& mem_total_;
  metrics::Gauge& disk_used_;
  metrics::Gauge& disk_total_;

  std::mutex sample_mu_;                    // one SampleOnce at a time
  std::unique_ptr<ResourceSource> source_;  // guarded by sample_mu_
  int cpu_streak_ = 0;                      // guarded by sample_mu_

  mutable std::mutex mu_;
  bool throttled_ = false;  // guarded by mu_
  std::string reason_;      // guarded by mu_
  ResourceSample last_;     // guarded by mu_

  std::jthread thread_;
};

}  // namespace runner::pressure
