#pragma once

// The routes of /api/v1/schedules (docs/api.md "Schedules"): create, list,
// get, replace, delete, trigger. `wrap` is the server's handler wrapper
// (token check, exceptions to 500). Without a schedule store (a server
// built without one) every route answers 503 `unavailable`.
//
// Thread-safety: handlers run on the server's pool; the stores are thread-safe.

#include <httplib.h>

#include <functional>

#include "runner/queue/queue_store.h"
#include "runner/schedule/schedule_store.h"

namespace runner::api {

using RouteWrap = std::function<httplib::Server::Handler(httplib::Server::Handler)>;

void ScheduleRoutes(httplib::Server& server, const RouteWrap& wrap,
                    schedule::ScheduleStore* schedules, queue::QueueStore& tasks);

}  // namespace runner::api
