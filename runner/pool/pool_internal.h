#pragma once

// What the pool's translation units share (pool.cpp, pool_workers.cpp,
// claimer.cpp, lease_keeper.cpp): its metrics and two small helpers. Not for
// use outside runner/pool/.

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <stop_token>
#include <string>

#include "runner/metrics/registry.h"
#include "runner/pool/pool.h"

namespace runner::pool::internal {

using SteadyClock = std::chrono::steady_clock;

inline double Seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }

// Sleeps for `d` or until `stop` fires. Returns false when stopped.
inline bool SleepFor(const std::stop_token& stop, SteadyClock::duration d) {
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  cv.wait_for(lock, stop, d, [] { return false; });
  return !stop.stop_requested();
}

}  // namespace runner::pool::internal

namespace runner::pool {

struct Pool::Metrics {
  explicit Metrics(metrics::Registry& r)
      : claims(r.GetCounter("runner_claims_total", "Claim statements issued by this node")),
        claimed(r.GetCounter("runner_claimed_tasks_total", "Tasks claimed by this node")),
        claim_duration(r.GetHistogram("runner_claim_duration_seconds", "Latency of one batch claim",
                                      metrics::LatencyBuckets())),
        finish_and_claim_duration(
            r.GetHistogram("runner_finish_and_claim_duration_seconds",
                           "Latency of one busy worker's report that also claims its next task",
                           metrics::LatencyBuckets())),
        task_duration(r.GetHistogram("runner_task_duration_seconds",
                                     "Wall time of a task run by this node, claim to report",
                                     metrics::LatencyBuckets())),
        heartbeat_duration(r.GetHistogram("runner_heartbeat_duration_seconds",
                                          "Latency of the node's heartbeat statement",
                                          metrics::LatencyBuckets())),
        backpressure(r.GetGauge("runner_backpressure_active",
                                "1 while the node does not claim because the host is busy")),
        target(r.GetGauge("runner_pool_target_workers", "Desired worker count of this node")),
        registry(r) {
    for (auto s : {queue::WorkerState::kStarting, queue::WorkerState::kIdle,
                   queue::WorkerState::kBusy, queue::WorkerState::kStopping}) {
      workers[static_cast<int>(s)] = &r.GetGauge("runner_workers", "Workers of this node by state",
                                                 {{"state", std::string(queue::ToString(s))}});
    }
  }

  metrics::Counter& Finished(const std::string& state) {
    std::lock_guard lock(mu);
    auto it = finished.find(state);
    if (it != finished.end()) return *it->second;
    auto& c = registry.GetCounter("runner_tasks_finished_total",
                                  "Tasks this node finished, by outcome", {{"state", state}});
    finished.emplace(state, &c);
    return c;
  }

  // A task of `queue` started on this node (issue #18: starts per queue).
  void Started(const std::string& queue) {
    metrics::Counter* c = nullptr;
    {
      std::lock_guard lock(mu);
      auto it = started.find(queue);
      if (it == started.end()) {
        it = started
                 .emplace(queue, &registry.GetCounter("runner_queue_starts_total",
                                                      "Tasks of a queue this node started",
                                                      {{"queue", queue}}))
                 .first;
      }
      c = it->second;
    }
    c->Inc();
  }

  metrics::Counter& claims;
  metrics::Counter& claimed;
  metrics::Histogram& claim_duration;
  metrics::Histogram& finish_and_claim_duration;
  metrics::Histogram& task_duration;
  metrics::Histogram& heartbeat_duration;
  metrics::Gauge& backpressure;
  metrics::Gauge& target;
  metrics::Gauge* workers[4] = {};
  metrics::Registry& registry;
  std::mutex mu;
  std::map<std::string, metrics::Counter*> finished;  // guarded by mu
  std::map<std::string, metrics::Counter*> started;   // guarded by mu: by queue
};

}  // namespace runner::pool
