#pragma once

// JSON mapping of the REST contract (docs/api.md, docs/openapi.yaml): request bodies in, tasks,
// status, workers, nodes and events out. Parsing is strict: unknown fields,
// wrong types and out-of-range values are `validation_failed` errors whose
// message names the field; a body that is not JSON is `bad_request`. Times are
// RFC 3339 UTC with milliseconds ("2026-11-22T04:09:16.123Z").
//
// Thread-safety: pure functions.

#include <boost/json.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "runner/node/node_control.h"
#include "runner/queue/queue_store.h"
#include "runner/queue/task.h"

namespace runner::api {

// POST /api/v1/tasks body -> NewTask. This checks the JSON's shape (fields,
// types); the rules of a task (bounds, names, sizes) are queue::ValidateNewTask's,
// the only copy, which this calls, so the API and the store never disagree.
Result<queue::NewTask> ParseNewTask(std::string_view body);

struct ScaleRequest {
  int count = 0;
};
// POST /api/v1/pool/scale body. Range against max is the caller's check.
Result<ScaleRequest> ParseScaleRequest(std::string_view body);

struct StopRequest {
  bool force = false;
  std::optional<double> drain_timeout;  // seconds
};
// POST /api/v1/pool/stop body; an empty body means the defaults.
Result<StopRequest> ParseStopRequest(std::string_view body);

std::string FormatTime(queue::TimePoint at);
// Parses what FormatTime writes (and RFC 3339 "Z" times without fraction).
std::optional<queue::TimePoint> ParseTime(std::string_view text);

boost::json::object TaskToJson(const queue::Task& task);
// Inverse of TaskToJson, for the CLI client. Unknown fields are ignored here
// (a newer server may add some).
Result<queue::Task> TaskFromJson(const boost::json::value& value);

boost::json::object StatusToJson(const NodeStatus& node, const queue::StateCounts& counts,
                                 std::size_t nodes);
boost::json::object WorkerToJson(const queue::WorkerInfo& worker);
boost::json::object NodeToJson(const queue::NodeInfo& node);
// The data of an SSE event of /api/v1/events:
// {"id","at","kind","task_id","worker_id","data":{...}}.
boost::json::object EventToJson(const queue::Event& event);

// {"error":{"code","message"}}
std::string ErrorBody(const Error& error);

}  // namespace runner::api
