// What keeps a node's tasks its own: the heartbeat renews every lease and
// worker heartbeat in one statement and stops the tasks whose lease was lost;
// the cancel watcher stops tasks flagged cancel_requested.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/json.hpp>
#include <utility>

#include "base/ulid.h"
#include "runner/pool/idle_backoff.h"
#include "runner/pool/pool.h"
#include "runner/pool/pool_internal.h"

namespace runner::pool {

using internal::Seconds;
using internal::SleepFor;
using internal::SteadyClock;
using std::chrono::milliseconds;

void Pool::HeartbeatLoop(std::stop_token stop) {
  const auto interval = std::max(milliseconds(10), options_.lease / 3);
  auto last_ok = SteadyClock::now();
  bool lost_all = false;
  while (!stop.stop_requested()) {
    queue::HeartbeatRequest req;
    req.node_id = options_.node_id;
    req.lease = options_.lease;
    {
      std::lock_guard lock(mu_);
      req.target_workers = target_;
      for (const auto& [id, w] : workers_) {
        if (w->exited) continue;
        req.workers.push_back(queue::WorkerBeat{w->id, w->state, w->task_id});
      }
    }
    const auto t0 = SteadyClock::now();
    auto r = store_.Heartbeat(req);
    const auto t1 = SteadyClock::now();
    metrics_->heartbeat_duration.Observe(Seconds(t1 - t0));
    if (r.ok()) {
      last_ok = t1;
      lost_all = false;
      for (const auto& id : r->lost_task_ids) {
        // A task that finished while the heartbeat was in flight is reported
        // too; only one still running is news (StopTask skips a worker that
        // is writing its task's outcome).
        if (StopTask(id, StopCause::kLeaseLost)) {
          spdlog::warn("lease lost task_id={} node_id={}: stopped it", id, options_.node_id);
        }
      }
    } else {
      spdlog::warn("heartbeat failed node_id={} error={}", options_.node_id, ErrorText(r.error()));
      // Past the lease another node may already run our tasks: stop them.
      if (!lost_all && t1 - last_ok > options_.lease) {
        spdlog::error("no heartbeat for longer than the lease node_id={}: stopping running tasks",
                      options_.node_id);
        StopAllRunning(StopCause::kLeaseLost);
        lost_all = true;
      }
    }
    SleepFor(stop, interval);
  }
}

bool Pool::StopTask(const std::string& task_id, StopCause cause) {
  std::optional<std::stop_source> source;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, w] : workers_) {
      if (w->task_id && *w->task_id == task_id) {
        if (w->reporting) break;  // ended already: nothing to stop
        StopCause expected = StopCause::kNone;
        w->cause.compare_exchange_strong(expected, cause);
        source = w->task_stop;
        break;
      }
    }
  }
  // Outside the lock: the isolator's stop callbacks run in this thread.
  if (source) source->request_stop();
  return source.has_value();
}

void Pool::StopAllRunning(StopCause cause) {
  std::vector<std::stop_source> sources;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, w] : workers_) {
      if (!w->task_id) continue;
      StopCause expected = StopCause::kNone;
      w->cause.compare_exchange_strong(expected, cause);
      sources.push_back(w->task_stop);
    }
  }
  for (auto& s : sources) s.request_stop();
}

void Pool::CancelLoop(std::stop_token stop) {
  while (!stop.stop_requested()) {
    std::vector<std::string> ids;
    {
      std::lock_guard lock(mu_);
      for (const auto& [id, w] : workers_) {
        if (w->task_id && !w->exited) ids.push_back(*w->task_id);
      }
    }
    if (!ids.empty()) {
      auto r = store_.CancelRequested(ids);
      if (r.ok()) {
        for (const auto& id : *r) {
          spdlog::info("cancel requested task_id={} node_id={}: stopping it", id, options_.node_id);
          StopTask(id, StopCause::kCancel);
        }
      } else {
        spdlog::warn("cancel check failed node_id={} error={}", options_.node_id,
                     ErrorText(r.error()));
      }
    }
    std::unique_lock lock(mu_);
    cancel_cv_.wait_for(lock, stop, options_.cancel_check_interval, [&] { return cancel_wake_; });
    cancel_wake_ = false;
  }
}

}  // namespace runner::pool
