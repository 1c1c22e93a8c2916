#include "app/client/commands.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "api/json_text.h"

namespace runner::app {
namespace {

namespace json = boost::json;

int Fail(const Error& e) {
  std::cerr << "runner: " << e.message << "\n";
  return 1;
}

std::string Str(const json::value* v) {
  if (v == nullptr || v->is_null()) return "-";
  if (v->is_string()) return std::string(v->get_string());
  if (v->is_bool()) return v->get_bool() ? "true" : "false";
  if (v->is_double()) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", v->get_double());
    return buf;
  }
  return api::WriteJson(*v);
}

std::string Field(const json::object& o, std::string_view key) { return Str(o.if_contains(key)); }

// Prints rows with columns padded to their widest cell.
void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  if (rows.empty()) return;
  std::vector<std::size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size() && i < width.size(); ++i) {
      width[i] = std::max(width[i], std::min<std::size_t>(r[i].size(), 60));
    }
  }
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      std::string cell = r[i].size() > 60 ? r[i].substr(0, 57) + "..." : r[i];
      line += cell;
      if (i + 1 < r.size()) line += std::string(width[i] - cell.size() + 2, ' ');
    }
    std::cout << line << "\n";
  }
}

std::string Join(const json::value* v) {
  if (v == nullptr || !v->is_array()) return "-";
  std::string out;
  for (const auto& a : v->get_array()) {
    if (!out.empty()) out += ' ';
    out += a.is_string() ? std::string(a.get_string()) : api::WriteJson(a);
  }
  return out;
}

std::string Encode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

bool SplitKv(const std::string& kv, std::string& key, std::string& value) {
  auto eq = kv.find('=');
  if (eq == std::string::npos || eq == 0) return false;
  key = kv.substr(0, eq);
  value = kv.substr(eq + 1);
  return true;
}

bool IsFinalState(const std::string& s) {
  return s == "succeeded" || s == "failed" || s == "cancelled" || s == "timed_out";
}

int ExitCodeOf(const json::object& task) {
  std::string state = Field(task, "state");
  const json::value* code = task.if_contains("exit_code");
  if (state == "succeeded") return 0;
  if (code != nullptr && code->is_number()) {
    int c = static_cast<int>(code->to_number<int64_t>());
    if (c > 0 && c < 256) return c;
  }
  return 1;
}

}  // namespace

std::optional<int64_t> ParseBytes(const std::string& text) {
  if (text.empty()) return std::nullopt;
  std::size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) {
    ++i;
  }
  if (i == 0) return std::nullopt;
  double n = 0;
  try {
    n = std::stod(text.substr(0, i));
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::string unit = text.substr(i);
  std::transform(unit.begin(), unit.end(), unit.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (!unit.empty() && unit.back() == 'b') unit.pop_back();
  if (!unit.empty() && unit.back() == 'i') unit.pop_back();
  double mult = 1;
  if (unit == "k") {
    mult = 1024;
  } else if (unit == "m") {
    mult = 1024.0 * 1024;
  } else if (unit == "g") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "t") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else if (!unit.empty()) {
    return std::nullopt;
  }
  double bytes = n * mult;
  if (!std::isfinite(bytes) || bytes > 9.0e18) return std::nullopt;
  return static_cast<int64_t>(bytes);
}

namespace {

// The body of POST /api/v1/tasks from the task options; nullopt (after a
// message naming `who`) when an option is malformed.
std::optional<json::object> TaskBody(const SubmitArgs& a, const std::string& who) {
  json::object body;
  json::array cmd;
  for (const auto& c : a.command) cmd.emplace_back(c);
  body["command"] = std::move(cmd);
  if (a.image) body["image"] = *a.image;
  if (a.isolation) body["isolation"] = *a.isolation;
  if (a.queue) body["queue"] = *a.queue;
  if (a.group) body["group"] = *a.group;
  if (a.idempotency_key) body["idempotency_key"] = *a.idempotency_key;
  if (a.timeout) body["timeout"] = *a.timeout;
  if (a.delay) body["delay"] = *a.delay;
  if (a.priority) body["priority"] = *a.priority;
  if (a.max_attempts) body["max_attempts"] = *a.max_attempts;
  json::object limits;
  if (a.cpus) {
    try {
      limits["cpus"] = std::stod(*a.cpus);
    } catch (const std::exception&) {
      std::cerr << who << ": --cpus '" << *a.cpus << "' is not a number (e.g. 0.5)\n";
      return std::nullopt;
    }
  }
  for (auto [name, value] : {std::pair{"memory", &a.memory}, std::pair{"disk", &a.disk}}) {
    if (!*value) continue;
    auto bytes = ParseBytes(**value);
    if (!bytes) {
      std::cerr << who << ": --" << name << " '" << **value
                << "' is not a size (e.g. 268435456, 256M, 1G)\n";
      return std::nullopt;
    }
    limits[name] = *bytes;
  }
  if (a.pids) limits["pids"] = *a.pids;
  if (!limits.empty()) body["limits"] = std::move(limits);
  for (auto [name, list] : {std::pair{"env", &a.env}, std::pair{"labels", &a.labels}}) {
    if (list->empty()) continue;
    json::object m;
    for (const auto& kv : *list) {
      std::string k, v;
      if (!SplitKv(kv, k, v)) {
        std::cerr << who << ": '" << kv << "' is not KEY=VALUE\n";
        return std::nullopt;
      }
      m[k] = v;
    }
    body[name] = std::move(m);
  }
  if (!a.secrets.empty()) {
    json::object m;
    for (const auto& item : a.secrets) {
      std::string k, v;
      if (!SplitKv(item, k, v)) {
        if (item.find('=') != std::string::npos) {
          // Never echo it: the text may be the value.
          std::cerr << who << ": a --secret is not NAME=VALUE (the name is empty)\n";
          return std::nullopt;
        }
        const char* from_env = std::getenv(item.c_str());
        if (from_env == nullptr) {
          std::cerr << who << ": --secret " << item
                    << ": no such environment variable; export it or give NAME=VALUE\n";
          return std::nullopt;
        }
        k = item;
        v = from_env;
      }
      m[k] = v;
    }
    body["secrets"] = std::move(m);
  }
  if (!a.depends_on.empty()) {
    json::array deps;
    for (const auto& d : a.depends_on) deps.emplace_back(d);
    body["depends_on"] = std::move(deps);
  }
  return body;
}

}  // namespace

int RunSubmit(const CommandContext& ctx, const SubmitArgs& a) {
  if (a.command.empty()) {
    std::cerr << "runner submit: give the command after --, e.g. runner submit -- sh -c 'echo "
                 "hi'\n";
    return 2;
  }
  auto body = TaskBody(a, "runner submit");
  if (!body) return 2;
  ApiClient client(ctx.client);
  auto res = client.PostJson("/api/v1/tasks", *body);
  if (!res) return Fail(res.error());
  if (!res->is_object()) return Fail(MakeError("internal", "the server sent no task"));
  std::string id = Field(res->get_object(), "id");
  if (!a.wait) {
    if (ctx.json) {
      std::cout << api::WriteJson(*res) << "\n";
    } else {
      std::cout << id << "\n";
    }
    return 0;
  }
  if (!ctx.json) std::cout << id << std::endl;
  // Poll with a gentle backoff: simple, and survives server restarts.
  auto delay = std::chrono::milliseconds(100);
  for (;;) {
    auto task = client.GetJson("/api/v1/tasks/" + Encode(id));
    if (!task) return Fail(task.error());
    const auto& t = task->get_object();
    std::string state = Field(t, "state");
    if (IsFinalState(state)) {
      if (ctx.json) std::cout << api::WriteJson(*task) << "\n";
      int code = ExitCodeOf(t);
      if (state != "succeeded") {
        std::cerr << "runner: task " << id << " " << state;
        if (const auto* e = t.if_contains("error"); e != nullptr && e->is_object()) {
          std::cerr << ": " << Field(e->get_object(), "message");
        }
        std::cerr << "\n";
      }
      return code;
    }
    std::this_thread::sleep_for(delay);
    delay = std::min(delay * 2, std::chrono::milliseconds(1000));
  }
}

int RunStatus(const CommandContext& ctx) {
  ApiClient client(ctx.client);
  auto res = client.GetJson("/api/v1/status");
  if (!res) return Fail(res.error());
  if (ctx.json) {
    std::cout << api::WriteJson(*res) << "\n";
    return 0;
  }
  const auto& s = res->get_object();
  auto sub = [&](std::string_view key) -> json::object {
    const auto* v = s.if_contains(key);
    return v != nullptr && v->is_object() ? v->get_object() : json::object();
  };
  json::object pool = sub("pool"), queue = sub("queue"), res_o = sub("resources"),
               docker = sub("docker"), bp = sub("backpressure");
  auto gib = [](const json::object& o, std::string_view k) {
    const auto* v = o.if_contains(k);
    double b = v != nullptr && v->is_number() ? v->to_number<double>() : 0;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1fGiB", b / (1024.0 * 1024 * 1024));
    return std::string(buf);
  };
  std::cout << "Worker Pool Status\n==================\n";
  PrintTable({
      {"Node:", Field(s, "node_id") + " (" + Field(s, "nodes") + " node(s) live)"},
      {"Mode:", Field(s, "mode")},
      {"Docker:", Field(docker, "available") == "true" ? "available " + Field(docker, "version")
                                                       : "unavailable"},
      {"Pool:", Field(pool, "state") + ", target " + Field(pool, "target")},
      {"Workers:", "active " + Field(pool, "active") + ", idle " + Field(pool, "idle") + ", busy " +
                       Field(pool, "busy") + ", starting " + Field(pool, "starting") +
                       ", stopping " + Field(pool, "stopping")},
      {"Queue:", Field(queue, "queued") + " queued, " + Field(queue, "running") + " running, " +
                     Field(queue, "succeeded") + " succeeded, " + Field(queue, "failed") +
                     " failed, " + Field(queue, "cancelled") + " cancelled, " +
                     Field(queue, "timed_out") + " timed out"},
      {"Resources:", "CPU " + Field(res_o, "cpu_percent") + "%, memory " +
                         gib(res_o, "memory_used") + " / " + gib(res_o, "memory_total") +
                         ", disk " + gib(res_o, "disk_used") + " / " + gib(res_o, "disk_total")},
      {"Backpressure:", Field(bp, "active") == "true" ? "active: " + Field(bp, "reason") : "none"},
  });
  return 0;
}

int RunList(const CommandContext& ctx, const std::optional<std::string>& state,
            const std::optional<std::string>& queue, int limit) {
  std::string path = "/api/v1/tasks?limit=" + std::to_string(limit);
  if (state) path += "&state=" + Encode(*state);
  if (queue) path += "&queue=" + Encode(*queue);
  ApiClient client(ctx.client);
  auto res = client.GetJson(path);
  if (!res) return Fail(res.error());
  if (ctx.json) {
    std::cout << api::WriteJson(*res) << "\n";
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"ID", "STATE", "QUEUE", "EXIT", "CREATED", "COMMAND"}};
  if (const auto* tasks = res->get_object().if_contains("tasks"); tasks && tasks->is_array()) {
    for (const auto& t : tasks->get_array()) {
      const auto& o = t.get_object();
      rows.push_back({Field(o, "id"), Field(o, "state"), Field(o, "queue"), Field(o, "exit_code"),
                      Field(o, "created_at"), Join(o.if_contains("command"))});
    }
  }
  PrintTable(rows);
  return 0;
}

int RunWorkers(const CommandContext& ctx) {
  ApiClient client(ctx.client);
  auto res = client.GetJson("/api/v1/workers");
  if (!res) return Fail(res.error());
  if (ctx.json) {
    std::cout << api::WriteJson(*res) << "\n";
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"ID", "NODE", "STATE", "TASK", "STARTED", "HEARTBEAT"}};
  if (const auto* ws = res->get_object().if_contains("workers"); ws && ws->is_array()) {
    for (const auto& w : ws->get_array()) {
      const auto& o = w.get_object();
      rows.push_back({Field(o, "id"), Field(o, "node_id"), Field(o, "state"), Field(o, "task_id"),
                      Field(o, "started_at"), Field(o, "heartbeat_at")});
    }
  }
  PrintTable(rows);
  return 0;
}

namespace {
int PoolAction(const CommandContext& ctx, const std::string& path, const json::object& body,
               const std::string& done) {
  ApiClient client(ctx.client);
  auto res = client.PostJson(path, body);
  if (!res) return Fail(res.error());
  if (ctx.json) {
    std::cout << api::WriteJson(*res) << "\n";
    return 0;
  }
  json::object pool;
  if (const auto* p = res->get_object().if_contains("pool"); p && p->is_object()) {
    pool = p->get_object();
  }
  std::cout << done << ": pool " << Field(pool, "state") << ", target " << Field(pool, "target")
            << ", active " << Field(pool, "active") << "\n";
  return 0;
}
}  // namespace

int RunScale(const CommandContext& ctx, int count) {
  return PoolAction(ctx, "/api/v1/pool/scale", json::object{{"count", count}}, "scaling");
}

int RunStop(const CommandContext& ctx, bool force, std::optional<double> drain_timeout) {
  json::object body{{"force", force}};
  if (drain_timeout) body["drain_timeout"] = *drain_timeout;
  return PoolAction(ctx, "/api/v1/pool/stop", body, force ? "stopping (force)" : "draining");
}

int RunStart(const CommandContext& ctx) {
  return PoolAction(ctx, "/api/v1/pool/start", json::object{}, "starting");
}

int RunLogs(const CommandContext& ctx, const std::string& id, bool follow,
            const std::string& stream) {
  ApiClient client(ctx.client);
  std::string base = "/api/v1/tasks/" + Encode(id) + "/logs?stream=" + Encode(stream);
  if (!follow) {
    auto text = client.GetText(base);
    if (!text) return Fail(text.error());
    std::cout << *text << std::flush;
    return 0;
  }
  int exit_code = 0;
  auto st = client.Stream(base + "&follow=1", [&](const SseMessage& m) {
    json::error_code ec;
    json::value v = json::parse(m.data, ec);
    if (ec || !v.is_object()) return true;
    if (m.event == "log") {
      if (ctx.json) {
        std::cout << m.data << "\n" << std::flush;
        return true;
      }
      const auto& o = v.get_object();
      std::string data = Field(o, "data");
      if (Field(o, "stream") == "stderr") {
        std::cerr << data << std::flush;
      } else {
        std::cout << data << std::flush;
      }
      return true;
    }
    if (m.event == "end") {
      if (ctx.json) std::cout << m.data << "\n";
      exit_code = ExitCodeOf(v.get_object());
      return false;
    }
    return true;
  });
  if (!st) return Fail(st.error());
  return exit_code;
}

int RunCancel(const CommandContext& ctx, const std::string& id) {
  ApiClient client(ctx.client);
  auto res = client.PostJson("/api/v1/tasks/" + Encode(id) + "/cancel", json::object{});
  if (!res) return Fail(res.error());
  if (ctx.json) {
    std::cout << api::WriteJson(*res) << "\n";
    return 0;
  }
  const auto& t = res->get_object();
  std::cout << Field(t, "id") << " " << Field(t, "state")
            << (Field(t, "cancel_requested") == "true" && Field(t, "state") == "running"
                    ? " (cancel requested)"
                    : "")
            << "\n";
  return 0;
}

// --- schedules ---------------------------------------------------------------

int RunSchedules(const CommandContext& ctx) {
  ApiClient client(ctx.client);
  auto res = client.GetJson("/api/v1/schedules");
  if (!res) return Fail(res.error());
  if (ctx.json) {
    std::cout << api::WriteJson(*res) << "\n";
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "WHEN", "TIMEZONE", "OVERLAP", "CATCH_UP", "PAUSED", "NEXT_RUN_AT", "LAST_TASK"}};
  for (const auto& v : res->at("schedules").as_array()) {
    const auto& o = v.as_object();
    std::string when = Field(o, "cron");
    if (when == "-") when = "every " + Field(o, "every") + "s";
    rows.push_back({Field(o, "name"), when, Field(o, "timezone"), Field(o, "overlap"),
                    Field(o, "catch_up"), Field(o, "paused"), Field(o, "next_run_at"),
                    Field(o, "last_task_id")});
  }
  PrintTable(rows);
  return 0;
}

int RunScheduleAdd(const CommandContext& ctx, const ScheduleArgs& a) {
  if (a.task.command.empty()) {
    std::cerr << "runner schedule add: give the command after --, e.g. runner schedule add "
                 "nightly --cron '30 3 * * *' -- sh -c 'make report'\n";
    return 2;
  }
  if (a.cron.has_value() == a.every.has_value()) {
    std::cerr << "runner schedule add: give exactly one of --cron EXPR and --every SECONDS\n";
    return 2;
  }
  auto task = TaskBody(a.task, "runner schedule add");
  if (!task) return 2;
  json::object body{{"name", a.name}, {"task", std::move(*task)}};
  if (a.cron) body["cron"] = *a.cron;
  if (a.every) body["every"] = *a.every;
  if (a.timezone) body["timezone"] = *a.timezone;
  if (a.overlap) body["overlap"] = *a.overlap;
  if (a.catch_up) body["catch_up"] = *a.catch_up;
  if (a.paused) body["paused"] = true;
  ApiClient client(ctx.client);
  auto res = client.PostJson("/api/v1/schedules", body);
  if (!res) return Fail(res.error());
  if (ctx.json) {
    std::cout << api::WriteJson(*res) << "\n";
  } else {
    std::cout << a.name << ": next run " << Field(res->as_object(), "next_run_at") << "\n";
  }
  return 0;
}

int RunScheduleAction(const CommandContext& ctx, const std::string& action,
                      const std::string& name) {
  ApiClient client(ctx.client);
  const std::string path = "/api/v1/schedules/" + Encode(name);
  if (action == "rm") {
    auto res = client.Delete(path);
    if (!res) return Fail(res.error());
    if (!ctx.json) std::cout << name << ": deleted\n";
    return 0;
  }
  if (action == "trigger") {
    auto res = client.PostJson(path + "/trigger", json::object{});
    if (!res) return Fail(res.error());
    std::cout << (ctx.json ? api::WriteJson(*res) : Field(res->as_object(), "id")) << "\n";
    return 0;
  }
  // pause, resume: the schedule as it is, with `paused` changed.
  auto got = client.GetJson(path);
  if (!got) return Fail(got.error());
  json::object body;
  for (const char* key : {"cron", "every", "timezone", "task", "overlap", "catch_up"}) {
    if (const auto* v = got->as_object().if_contains(key)) body[key] = *v;
  }
  body["paused"] = action == "pause";
  auto res = client.PutJson(path, body);
  if (!res) return Fail(res.error());
  if (ctx.json) {
    std::cout << api::WriteJson(*res) << "\n";
  } else {
    std::cout << name << ": " << (action == "pause" ? "paused" : "resumed") << ", next run "
              << Field(res->as_object(), "next_run_at") << "\n";
  }
  return 0;
}

}  // namespace runner::app
