#pragma once

// The queue routes (issue #18): GET /api/v1/queues, and GET, PUT and DELETE
// /api/v1/queues/{name}. `guard` is the server's handler wrapper (token auth,
// exceptions to 500).

#include <httplib.h>

#include <functional>

#include "runner/metrics/registry.h"
#include "runner/queue/queue_store.h"

namespace runner::api {

using Guard = std::function<httplib::Server::Handler(httplib::Server::Handler)>;

void QueueRoutes(httplib::Server& s, const Guard& guard, queue::QueueStore& store);

// Per-queue gauges for /metrics: runner_queue_tasks{queue,state} (queued,
// running) and runner_queue_throttled{queue,reason} (1 while held back).
void QueueMetrics(queue::QueueStore& store, metrics::Registry& registry);

}  // namespace runner::api
