#include "api/task_json.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <initializer_list>
#include <limits>

#include "api/json_text.h"
#include "runner/queue/validation.h"

namespace runner::api {
namespace {

namespace json = boost::json;
using queue::NewTask;

Error Invalid(std::string_view field, std::string_view what) {
  return MakeError("validation_failed", std::string(field) + ": " + std::string(what));
}

std::optional<Error> CheckKnown(const json::object& obj, std::string_view prefix,
                                std::initializer_list<std::string_view> known) {
  for (const auto& kv : obj) {
    std::string_view key = kv.key();
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string allowed;
      for (auto k : known) {
        if (!allowed.empty()) allowed += ", ";
        allowed += k;
      }
      return Invalid(std::string(prefix) + std::string(key),
                     "unknown field (allowed: " + allowed + ")");
    }
  }
  return std::nullopt;
}

Result<json::object> ParseObject(std::string_view body, bool empty_is_object) {
  if (empty_is_object && std::all_of(body.begin(), body.end(), [](char c) {
        return c == ' ' || c == '\n' || c == '\r' || c == '\t';
      })) {
    return json::object();
  }
  json::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) {
    return MakeError("bad_request", "the body is not valid JSON (" + ec.message() +
                                        "); send a JSON object with Content-Type: "
                                        "application/json");
  }
  if (!v.is_object()) return MakeError("bad_request", "the body must be a JSON object");
  return std::move(v.as_object());
}

// Ranges of the C++ types a field is read into: the bounds of a task's fields
// are queue::ValidateNewTask's, checked after the whole body is read.
constexpr int64_t kIntLo = std::numeric_limits<int>::min();
constexpr int64_t kIntHi = std::numeric_limits<int>::max();
constexpr int64_t kInt64Lo = std::numeric_limits<int64_t>::min();
constexpr int64_t kInt64Hi = std::numeric_limits<int64_t>::max();
constexpr double kNumberLo = -std::numeric_limits<double>::max();
constexpr double kNumberHi = std::numeric_limits<double>::max();

// Integer from a JSON number; doubles are accepted only when integral.
std::optional<Error> ReadInt(const json::value& v, std::string_view field, int64_t lo, int64_t hi,
                             int64_t& out) {
  int64_t n = 0;
  if (v.is_int64()) {
    n = v.get_int64();
  } else if (v.is_uint64()) {
    if (v.get_uint64() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Invalid(field,
                     "out of range (" + std::to_string(lo) + ".." + std::to_string(hi) + ")");
    }
    n = static_cast<int64_t>(v.get_uint64());
  } else if (v.is_double()) {
    double d = v.get_double();
    if (!std::isfinite(d) || std::floor(d) != d) return Invalid(field, "must be an integer");
    if (d < -9.2e18 || d > 9.2e18) {
      return Invalid(field,
                     "out of range (" + std::to_string(lo) + ".." + std::to_string(hi) + ")");
    }
    n = static_cast<int64_t>(d);
  } else {
    return Invalid(field, "must be an integer");
  }
  if (n < lo || n > hi) {
    return Invalid(field, "out of range (" + std::to_string(lo) + ".." + std::to_string(hi) + ")");
  }
  out = n;
  return std::nullopt;
}

std::optional<Error> ReadNumber(const json::value& v, std::string_view field, double lo, double hi,
                                double& out) {
  double d = 0;
  if (v.is_int64()) {
    d = static_cast<double>(v.get_int64());
  } else if (v.is_uint64()) {
    d = static_cast<double>(v.get_uint64());
  } else if (v.is_double()) {
    d = v.get_double();
  } else {
    return Invalid(field, "must be a number");
  }
  if (!std::isfinite(d) || d < lo || d > hi) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "out of range (%g..%g)", lo, hi);
    return Invalid(field, buf);
  }
  out = d;
  return std::nullopt;
}

std::optional<Error> ReadString(const json::value& v, std::string_view field, std::string& out) {
  if (!v.is_string()) return Invalid(field, "must be a string");
  const json::string& s = v.get_string();
  out.assign(s.data(), s.size());
  return std::nullopt;
}

std::optional<Error> ReadStringMap(const json::value& v, std::string_view field,
                                   std::map<std::string, std::string>& out) {
  if (!v.is_object()) return Invalid(field, "must be an object of strings");
  for (const auto& kv : v.get_object()) {
    std::string key(kv.key());
    if (!kv.value().is_string()) return Invalid(std::string(field) + "." + key, "must be a string");
    const auto& s = kv.value().get_string();
    out[key] = std::string(s.data(), s.size());
  }
  return std::nullopt;
}

std::optional<Error> ReadLimits(const json::value& v, isolation::Limits& out) {
  if (!v.is_object()) return Invalid("limits", "must be an object");
  const auto& obj = v.get_object();
  if (auto e = CheckKnown(obj, "limits.", {"cpus", "memory", "disk", "pids"})) return e;
  for (const auto& kv : obj) {
    if (kv.value().is_null()) continue;
    std::string name = "limits." + std::string(kv.key());
    if (kv.key() == "cpus") {
      if (auto e = ReadNumber(kv.value(), name, kNumberLo, kNumberHi, out.cpus)) return e;
    } else if (kv.key() == "pids") {
      if (auto e = ReadInt(kv.value(), name, kInt64Lo, kInt64Hi, out.pids)) return e;
    } else {
      int64_t n = 0;
      if (auto e = ReadInt(kv.value(), name, kInt64Lo, kInt64Hi, n)) return e;
      (kv.key() == "memory" ? out.memory : out.disk) = n;
    }
  }
  return std::nullopt;
}

// Whole numbers go out as integers ("timeout": 600, not 6E2), so clients
// that decode into integer types (Go, Rust) accept them.
json::value Num(double v) {
  if (std::isfinite(v) && std::floor(v) == v && std::fabs(v) < 9.0e15) {
    return static_cast<int64_t>(v);
  }
  return v;
}

json::value OptString(const std::optional<std::string>& s) {
  if (s) return json::string(*s);
  return nullptr;
}

json::value OptTime(const std::optional<queue::TimePoint>& t) {
  if (t) return json::string(FormatTime(*t));
  return nullptr;
}

json::object StringMap(const std::map<std::string, std::string>& m) {
  json::object o;
  for (const auto& [k, v] : m) o[k] = v;
  return o;
}

json::array StringArray(const std::vector<std::string>& v) {
  json::array a;
  for (const auto& s : v) a.emplace_back(s);
  return a;
}

}  // namespace

Result<NewTask> ParseNewTask(std::string_view body) {
  auto parsed = ParseObject(body, false);
  if (!parsed) return parsed.error();
  const json::object& obj = *parsed;
  if (auto e = CheckKnown(obj, "",
                          {"command", "image", "isolation", "env", "limits", "timeout", "priority",
                           "queue", "max_attempts", "delay", "depends_on", "idempotency_key",
                           "labels", "backoff", "group", "secrets"})) {
    return *e;
  }
  NewTask task;
  const json::value* command = obj.if_contains("command");
  if (command == nullptr || command->is_null()) {
    return Invalid("command", "required: an array of strings, e.g. [\"sh\", \"-c\", \"echo hi\"]");
  }
  if (!command->is_array()) return Invalid("command", "must be an array of strings");
  const auto& args = command->get_array();
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string arg;
    if (auto e = ReadString(args[i], "command[" + std::to_string(i) + "]", arg)) return *e;
    task.command.push_back(std::move(arg));
  }

  for (const auto& kv : obj) {
    const json::value& v = kv.value();
    std::string_view key = kv.key();
    if (key == "command" || v.is_null()) continue;
    std::optional<Error> err;
    if (key == "image") {
      std::string image;
      err = ReadString(v, key, image);
      task.image = image;
    } else if (key == "isolation") {
      std::string mode;
      err = ReadString(v, key, mode);
      if (!err) {
        auto parsed_mode = isolation::ParseIsolationMode(mode);
        if (!parsed_mode) {
          err = Invalid(key, "must be one of auto, docker, process");
        } else {
          task.isolation = *parsed_mode;
        }
      }
    } else if (key == "env") {
      err = ReadStringMap(v, key, task.env);
    } else if (key == "secrets") {
      err = ReadStringMap(v, key, task.secrets);
    } else if (key == "labels") {
      err = ReadStringMap(v, key, task.labels);
    } else if (key == "limits") {
      err = ReadLimits(v, task.limits);
    } else if (key == "timeout") {
      double t = 0;
      err = ReadNumber(v, key, kNumberLo, kNumberHi, t);
      task.timeout = t;
    } else if (key == "delay") {
      err = ReadNumber(v, key, kNumberLo, kNumberHi, task.delay);
    } else if (key == "backoff") {
      double b = 0;
      err = ReadNumber(v, key, kNumberLo, kNumberHi, b);
      task.backoff = b;
    } else if (key == "priority") {
      int64_t p = 0;
      err = ReadInt(v, key, kIntLo, kIntHi, p);
      task.priority = static_cast<int>(p);
    } else if (key == "max_attempts") {
      int64_t n = 0;
      err = ReadInt(v, key, kIntLo, kIntHi, n);
      task.max_attempts = static_cast<int>(n);
    } else if (key == "queue") {
      err = ReadString(v, key, task.queue);
    } else if (key == "group") {
      std::string g;
      err = ReadString(v, key, g);
      task.group = g;
    } else if (key == "idempotency_key") {
      std::string k;
      err = ReadString(v, key, k);
      task.idempotency_key = k;
    } else if (key == "depends_on") {
      if (!v.is_array()) {
        err = Invalid(key, "must be an array of task ids");
      } else {
        const auto& deps = v.get_array();
        for (std::size_t i = 0; i < deps.size() && !err; ++i) {
          std::string id;
          err = ReadString(deps[i], "depends_on[" + std::to_string(i) + "]", id);
          if (!err) task.depends_on.push_back(std::move(id));
        }
      }
    }
    if (err) return *err;
  }
  if (auto e = queue::ValidateNewTask(task)) return *e;
  return task;
}

Result<ScaleRequest> ParseScaleRequest(std::string_view body) {
  auto parsed = ParseObject(body, false);
  if (!parsed) return parsed.error();
  if (auto e = CheckKnown(*parsed, "", {"count"})) return *e;
  const json::value* count = parsed->if_contains("count");
  if (count == nullptr || count->is_null()) return Invalid("count", "required: an integer >= 1");
  int64_t n = 0;
  if (auto e = ReadInt(*count, "count", std::numeric_limits<int>::min(),
                       std::numeric_limits<int>::max(), n)) {
    return *e;
  }
  return ScaleRequest{static_cast<int>(n)};
}

Result<StopRequest> ParseStopRequest(std::string_view body) {
  auto parsed = ParseObject(body, true);
  if (!parsed) return parsed.error();
  if (auto e = CheckKnown(*parsed, "", {"force", "drain_timeout"})) return *e;
  StopRequest req;
  if (const json::value* f = parsed->if_contains("force"); f != nullptr && !f->is_null()) {
    if (!f->is_bool()) return Invalid("force", "must be true or false");
    req.force = f->get_bool();
  }
  if (const json::value* d = parsed->if_contains("drain_timeout"); d != nullptr && !d->is_null()) {
    double t = 0;
    if (auto e = ReadNumber(*d, "drain_timeout", 0, 24 * 3600, t)) return *e;
    req.drain_timeout = t;
  }
  return req;
}

std::string FormatTime(queue::TimePoint at) {
  using namespace std::chrono;
  auto ms = duration_cast<milliseconds>(at.time_since_epoch()).count();
  auto secs = static_cast<std::time_t>(ms / 1000);
  auto frac = ms % 1000;
  if (frac < 0) {
    frac += 1000;
    secs -= 1;
  }
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(frac));
  return buf;
}

std::optional<queue::TimePoint> ParseTime(std::string_view text) {
  std::tm tm{};
  int year = 0, mon = 0, day = 0, hour = 0, min = 0, sec = 0, consumed = 0;
  std::string s(text);
  if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &year, &mon, &day, &hour, &min, &sec,
                  &consumed) != 6) {
    return std::nullopt;
  }
  std::string rest = s.substr(static_cast<std::size_t>(consumed));
  int millis = 0;
  if (!rest.empty() && rest[0] == '.') {
    std::size_t i = 1;
    int digits = 0;
    while (i < rest.size() && rest[i] >= '0' && rest[i] <= '9') {
      if (digits < 3) millis = millis * 10 + (rest[i] - '0');
      ++digits;
      ++i;
    }
    for (; digits < 3; ++digits) millis *= 10;
    rest = rest.substr(i);
  }
  if (rest != "Z" && rest != "+00:00") return std::nullopt;
  tm.tm_year = year - 1900;
  tm.tm_mon = mon - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = min;
  tm.tm_sec = sec;
  std::time_t t = timegm(&tm);
  return queue::Clock::from_time_t(t) + std::chrono::milliseconds(millis);
}

json::object TaskToJson(const queue::Task& task) {
  json::object o;
  o["id"] = task.id;
  o["state"] = std::string(queue::ToString(task.state));
  o["queue"] = task.queue;
  o["group"] = OptString(task.group);
  o["priority"] = task.priority;
  o["command"] = StringArray(task.command);
  o["image"] = task.image;
  o["isolation"] = std::string(isolation::ToString(task.isolation));
  o["isolation_used"] = OptString(task.isolation_used);
  o["env"] = StringMap(task.env);
  // Names only: the values never leave the node that runs the task.
  o["secrets"] = StringArray(task.secret_names);
  o["limits"] = json::object{{"cpus", Num(task.limits.cpus)},
                             {"memory", task.limits.memory},
                             {"disk", task.limits.disk},
                             {"pids", task.limits.pids}};
  o["timeout"] = Num(task.timeout);
  o["attempt"] = task.attempt;
  o["max_attempts"] = task.max_attempts;
  o["depends_on"] = StringArray(task.depends_on);
  o["idempotency_key"] = OptString(task.idempotency_key);
  o["labels"] = StringMap(task.labels);
  o["worker_id"] = OptString(task.worker_id);
  o["node_id"] = OptString(task.node_id);
  if (task.exit_code) {
    o["exit_code"] = *task.exit_code;
  } else {
    o["exit_code"] = nullptr;
  }
  if (task.error) {
    o["error"] = json::object{{"code", task.error->code}, {"message", task.error->message}};
  } else {
    o["error"] = nullptr;
  }
  if (task.usage) {
    o["usage"] = json::object{{"cpu_seconds", Num(task.usage->cpu_seconds)},
                              {"peak_memory", task.usage->peak_memory},
                              {"duration", Num(task.usage->duration)}};
  } else {
    o["usage"] = nullptr;
  }
  o["created_at"] = FormatTime(task.created_at);
  o["started_at"] = OptTime(task.started_at);
  o["finished_at"] = OptTime(task.finished_at);
  o["cancel_requested"] = task.cancel_requested;
  o["schedule"] = OptString(task.schedule);
  o["scheduled_for"] = OptTime(task.scheduled_for);
  return o;
}

Result<queue::Task> TaskFromJson(const json::value& value) {
  if (!value.is_object())
    return MakeError("internal", "the server sent a task that is not an object");
  const auto& o = value.get_object();
  queue::Task t;
  auto str = [&](std::string_view k) -> std::optional<std::string> {
    const json::value* v = o.if_contains(k);
    if (v == nullptr || !v->is_string()) return std::nullopt;
    return std::string(v->get_string());
  };
  auto num = [&](std::string_view k) -> std::optional<double> {
    const json::value* v = o.if_contains(k);
    if (v == nullptr || !v->is_number()) return std::nullopt;
    return v->to_number<double>();
  };
  t.id = str("id").value_or("");
  if (auto s = str("state"))
    t.state = queue::ParseTaskState(*s).value_or(queue::TaskState::kQueued);
  t.queue = str("queue").value_or("default");
  t.group = str("group");
  t.priority = static_cast<int>(num("priority").value_or(0));
  if (const auto* c = o.if_contains("command"); c != nullptr && c->is_array()) {
    for (const auto& a : c->get_array()) {
      if (a.is_string()) t.command.emplace_back(a.get_string());
    }
  }
  t.image = str("image").value_or("");
  if (auto s = str("isolation")) {
    t.isolation = isolation::ParseIsolationMode(*s).value_or(isolation::IsolationMode::kAuto);
  }
  t.isolation_used = str("isolation_used");
  t.timeout = num("timeout").value_or(0);
  t.attempt = static_cast<int>(num("attempt").value_or(0));
  t.max_attempts = static_cast<int>(num("max_attempts").value_or(1));
  t.worker_id = str("worker_id");
  t.node_id = str("node_id");
  if (auto e = num("exit_code")) t.exit_code = static_cast<int>(*e);
  if (const auto* e = o.if_contains("error"); e != nullptr && e->is_object()) {
    queue::TaskError err;
    if (const auto* c = e->get_object().if_contains("code"); c != nullptr && c->is_string()) {
      err.code = std::string(c->get_string());
    }
    if (const auto* m = e->get_object().if_contains("message"); m != nullptr && m->is_string()) {
      err.message = std::string(m->get_string());
    }
    t.error = err;
  }
  if (auto s = str("created_at")) t.created_at = ParseTime(*s).value_or(queue::TimePoint{});
  if (auto s = str("started_at")) t.started_at = ParseTime(*s);
  if (auto s = str("finished_at")) t.finished_at = ParseTime(*s);
  t.schedule = str("schedule");
  if (auto s = str("scheduled_for")) t.scheduled_for = ParseTime(*s);
  return t;
}

json::object StatusToJson(const NodeStatus& node, const queue::StateCounts& counts,
                          std::size_t nodes) {
  json::object o;
  o["node_id"] = node.node_id;
  o["mode"] = node.mode;
  json::object docker;
  docker["available"] = node.docker_available;
  if (node.docker_version.empty()) {
    docker["version"] = nullptr;
  } else {
    docker["version"] = node.docker_version;
  }
  docker["warm"] =
      json::object{{"target", node.docker_warm.target}, {"ready", node.docker_warm.ready}};
  o["docker"] = std::move(docker);
  o["process_sandbox"] = json::object{{"enabled", node.process_sandbox.enabled},
                                      {"user", node.process_sandbox.user},
                                      {"network", node.process_sandbox.network}};
  o["pool"] = json::object{{"state", std::string(ToString(node.pool.state))},
                           {"target", node.pool.target},
                           {"active", node.pool.active},
                           {"idle", node.pool.idle},
                           {"busy", node.pool.busy},
                           {"starting", node.pool.starting},
                           {"stopping", node.pool.stopping},
                           {"max", node.pool.max}};
  json::object q;
  for (auto s :
       {queue::TaskState::kQueued, queue::TaskState::kRunning, queue::TaskState::kSucceeded,
        queue::TaskState::kFailed, queue::TaskState::kCancelled, queue::TaskState::kTimedOut}) {
    auto it = counts.find(s);
    q[queue::ToString(s)] = it == counts.end() ? int64_t{0} : it->second;
  }
  o["queue"] = std::move(q);
  o["resources"] = json::object{{"cpu_percent", Num(node.resources.cpu_percent)},
                                {"memory_used", node.resources.memory_used},
                                {"memory_total", node.resources.memory_total},
                                {"disk_used", node.resources.disk_used},
                                {"disk_total", node.resources.disk_total}};
  o["backpressure"] =
      json::object{{"active", node.backpressure}, {"reason", OptString(node.backpressure_reason)}};
  o["nodes"] = static_cast<int64_t>(nodes);
  return o;
}

json::object WorkerToJson(const queue::WorkerInfo& worker) {
  return json::object{{"id", worker.id},
                      {"node_id", worker.node_id},
                      {"state", std::string(queue::ToString(worker.state))},
                      {"task_id", OptString(worker.task_id)},
                      {"started_at", FormatTime(worker.started_at)},
                      {"heartbeat_at", FormatTime(worker.heartbeat_at)}};
}

json::object NodeToJson(const queue::NodeInfo& node) {
  return json::object{{"id", node.id},         {"host", node.host},
                      {"pid", node.pid},       {"mode", node.mode},
                      {"target", node.target}, {"heartbeat_at", FormatTime(node.heartbeat_at)}};
}

json::object EventToJson(const queue::Event& event) {
  json::object o;
  o["id"] = event.id;
  o["at"] = FormatTime(event.at);
  o["kind"] = event.kind;
  o["task_id"] = OptString(event.task_id);
  o["worker_id"] = OptString(event.worker_id);
  json::error_code ec;
  json::value data = json::parse(event.data_json, ec);
  if (ec) {
    o["data"] = event.data_json;
  } else {
    o["data"] = std::move(data);
  }
  return o;
}

std::string ErrorBody(const Error& error) {
  return WriteJson(
      json::object{{"error", json::object{{"code", error.code}, {"message", error.message}}}});
}

}  // namespace runner::api
