#pragma once

// JSON mapping of schedules (docs/api.md "Schedules"): the body of POST and
// PUT /api/v1/schedules[/NAME] in, a schedule out. Strict like task_json.h:
// unknown fields and wrong types are `validation_failed` naming the field;
// `task` is read by the rules of POST /api/v1/tasks, its errors prefixed
// "task.". Value checks (cron, zone, name) belong to the schedule store.
//
// Thread-safety: pure functions.

#include <boost/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "base/result.h"
#include "runner/schedule/schedule.h"

namespace runner::api {

// `name_from_path`: PUT takes the name from the path (a body name must match).
Result<schedule::ScheduleSpec> ParseScheduleSpec(
    std::string_view body, const std::optional<std::string>& name_from_path = std::nullopt);

boost::json::object ScheduleToJson(const schedule::Schedule& schedule);
// Inverse of ScheduleToJson, for the CLI client (task kept as JSON text).
Result<schedule::Schedule> ScheduleFromJson(const boost::json::value& value);

}  // namespace runner::api
