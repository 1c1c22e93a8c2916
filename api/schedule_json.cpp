#include "api/schedule_json.h"

#include <cmath>
#include <set>

#include "api/task_json.h"
#include "base/error_codes.h"

namespace runner::api {
namespace {

namespace json = boost::json;

Error Invalid(const std::string& field, const std::string& why) {
  return MakeError("validation_failed", field + ": " + why);
}

json::value OptTime(const std::optional<queue::TimePoint>& t) {
  if (!t) return nullptr;
  return json::value(FormatTime(*t));
}

}  // namespace

Result<schedule::ScheduleSpec> ParseScheduleSpec(std::string_view body,
                                                 const std::optional<std::string>& name_from_path) {
  json::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec || !v.is_object()) {
    return MakeError("bad_request", "the body must be a JSON object (a schedule)");
  }
  const auto& o = v.get_object();
  static const std::set<std::string, std::less<>> kKnown = {
      "name", "cron", "every", "timezone", "task", "overlap", "catch_up", "paused"};
  for (const auto& kv : o) {
    if (!kKnown.contains(kv.key())) {
      return Invalid(std::string(kv.key()),
                     "unknown field (allowed: name, cron, every, timezone, task, overlap, "
                     "catch_up, paused)");
    }
  }
  schedule::ScheduleSpec spec;
  auto str = [&](const char* key, std::string& out) -> std::optional<Error> {
    const json::value* f = o.if_contains(key);
    if (f == nullptr || f->is_null()) return std::nullopt;
    if (!f->is_string()) return Invalid(key, "must be a string");
    out = std::string(f->get_string());
    return std::nullopt;
  };
  if (auto e = str("name", spec.name)) return *e;
  if (name_from_path) {
    if (!spec.name.empty() && spec.name != *name_from_path) {
      return Invalid("name", "must match the name in the path (" + *name_from_path + ")");
    }
    spec.name = *name_from_path;
  } else if (spec.name.empty()) {
    return Invalid("name", "required: 1 to 64 characters of A-Z a-z 0-9 _ . -");
  }
  if (const json::value* f = o.if_contains("cron"); f != nullptr && !f->is_null()) {
    if (!f->is_string()) return Invalid("cron", "must be a string such as \"30 3 * * *\"");
    spec.cron = std::string(f->get_string());
  }
  if (const json::value* f = o.if_contains("every"); f != nullptr && !f->is_null()) {
    if (!f->is_number()) return Invalid("every", "must be a number of seconds (at least 1)");
    spec.every = f->to_number<double>();
  }
  if (auto e = str("timezone", spec.timezone)) return *e;
  std::string text;
  if (auto e = str("overlap", text)) return *e;
  if (!text.empty()) {
    auto ov = schedule::ParseOverlap(text);
    if (!ov) return Invalid("overlap", "must be skip, allow or cancel_previous");
    spec.overlap = *ov;
  }
  text.clear();
  if (auto e = str("catch_up", text)) return *e;
  if (!text.empty()) {
    auto cu = schedule::ParseCatchUp(text);
    if (!cu) return Invalid("catch_up", "must be none, latest or all");
    spec.catch_up = *cu;
  }
  if (const json::value* f = o.if_contains("paused"); f != nullptr && !f->is_null()) {
    if (!f->is_bool()) return Invalid("paused", "must be true or false");
    spec.paused = f->get_bool();
  }
  const json::value* task = o.if_contains("task");
  if (task == nullptr || task->is_null()) {
    return Invalid("task", "required: the body of POST /api/v1/tasks, e.g. {\"command\": [...]}");
  }
  if (!task->is_object()) return Invalid("task", "must be an object (a task)");
  json::object given = task->as_object();
  // Names alone (as a schedule shows its secrets): on PUT, keep the values
  // stored for them, so a schedule read and written back keeps its secrets.
  if (const json::value* names = given.if_contains("secrets"); names && names->is_array()) {
    if (!name_from_path) {
      return Invalid("task.secrets",
                     "give NAME: VALUE pairs (a list of names keeps stored values only on PUT)");
    }
    std::set<std::string> keep;
    for (const auto& n : names->get_array()) {
      if (!n.is_string()) return Invalid("task.secrets", "a list of secrets holds names (strings)");
      keep.emplace(n.get_string());
    }
    spec.keep_secrets.assign(keep.begin(), keep.end());
    given.erase("secrets");
  }
  auto parsed = ParseNewTask(json::serialize(given));
  if (!parsed) {
    Error e = parsed.error();
    e.code = "validation_failed";
    e.message = "task." + e.message;
    return e;
  }
  spec.task = std::move(*parsed);
  // The task is kept and shown back as sent, except its secrets: only their
  // names, as a task shows them (the store seals the values).
  json::object shown = task->as_object();
  if (shown.contains("secrets")) {
    json::array names;
    for (const auto& [name, value] : spec.task.secrets) names.emplace_back(name);
    for (const auto& name : spec.keep_secrets) names.emplace_back(name);
    shown["secrets"] = std::move(names);
  }
  spec.task_json = json::serialize(shown);
  return spec;
}

json::object ScheduleToJson(const schedule::Schedule& s) {
  json::object o;
  o["name"] = s.spec.name;
  if (s.spec.cron) {
    o["cron"] = *s.spec.cron;
  } else {
    o["cron"] = nullptr;
  }
  if (s.spec.every && std::floor(*s.spec.every) == *s.spec.every && *s.spec.every < 1e15) {
    o["every"] = static_cast<int64_t>(*s.spec.every);  // 3600, not 3.6E3
  } else if (s.spec.every) {
    o["every"] = *s.spec.every;
  } else {
    o["every"] = nullptr;
  }
  o["timezone"] = s.spec.timezone;
  json::error_code ec;
  json::value task = json::parse(s.spec.task_json, ec);
  o["task"] = ec ? json::value(json::object{}) : std::move(task);
  o["overlap"] = std::string(schedule::ToString(s.spec.overlap));
  o["catch_up"] = std::string(schedule::ToString(s.spec.catch_up));
  o["paused"] = s.spec.paused;
  o["next_run_at"] = OptTime(s.next_run_at);
  o["last_run_at"] = OptTime(s.last_run_at);
  if (s.last_task_id) {
    o["last_task_id"] = *s.last_task_id;
  } else {
    o["last_task_id"] = nullptr;
  }
  o["created_at"] = FormatTime(s.created_at);
  return o;
}

Result<schedule::Schedule> ScheduleFromJson(const json::value& value) {
  if (!value.is_object())
    return MakeError("internal", "the server sent a schedule that is not an object");
  const auto& o = value.get_object();
  auto str = [&](const char* key) -> std::optional<std::string> {
    const json::value* f = o.if_contains(key);
    if (f == nullptr || !f->is_string()) return std::nullopt;
    return std::string(f->get_string());
  };
  schedule::Schedule s;
  s.spec.name = str("name").value_or("");
  s.spec.cron = str("cron");
  if (const json::value* f = o.if_contains("every"); f != nullptr && f->is_number()) {
    s.spec.every = f->to_number<double>();
  }
  s.spec.timezone = str("timezone").value_or("UTC");
  if (const json::value* f = o.if_contains("task"); f != nullptr) {
    s.spec.task_json = json::serialize(*f);
  }
  s.spec.overlap =
      schedule::ParseOverlap(str("overlap").value_or("")).value_or(schedule::Overlap::kSkip);
  s.spec.catch_up =
      schedule::ParseCatchUp(str("catch_up").value_or("")).value_or(schedule::CatchUp::kNone);
  if (const json::value* f = o.if_contains("paused"); f != nullptr && f->is_bool()) {
    s.spec.paused = f->get_bool();
  }
  if (auto t = str("next_run_at")) s.next_run_at = ParseTime(*t);
  if (auto t = str("last_run_at")) s.last_run_at = ParseTime(*t);
  s.last_task_id = str("last_task_id");
  if (auto t = str("created_at")) s.created_at = ParseTime(*t).value_or(queue::TimePoint{});
  return s;
}

}  // namespace runner::api
