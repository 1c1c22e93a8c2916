#pragma once

// The queue routes (issue #18): GET /api/v1/queues, and GET, PUT and DELETE
// /api/v1/queues/{name}. `guard` is the server's handler wrapper (token auth,
// exceptions to 500).

#include <httplib.h>

#include <functional>
#include <mutex>
#include <set>
#include <string>

#include "runner/metrics/registry.h"
#include "runner/queue/queue_store.h"

namespace runner::api {

using Guard = std::function<httplib::Server::Handler(httplib::Server::Handler)>;

void QueueRoutes(httplib::Server& s, const Guard& guard, queue::QueueStore& store);

// Per-queue gauges for /metrics, cluster-wide (every node reports the same
// values, read from the database at each scrape): runner_queue_tasks{queue,
// state} (queued, running) and runner_queue_throttled{queue,reason} (1 while
// held back). A queue that leaves the list (no policy, nothing queued or
// running) reads 0, not its last value. The starts are the pools' counter
// runner_queue_starts_total{queue} (per node: sum over nodes).
//
// Thread-safety: Refresh may be called from any thread.
class QueueMetrics {
 public:
  QueueMetrics(queue::QueueStore& store, metrics::Registry& registry)
      : store_(store), registry_(registry) {}
  void Refresh();

 private:
  void Set(const std::string& queue, int64_t queued, int64_t running, const std::string& reason);

  queue::QueueStore& store_;
  metrics::Registry& registry_;
  std::mutex mu_;
  std::set<std::string> known_;  // guarded by mu_: queues with gauges
};

}  // namespace runner::api
