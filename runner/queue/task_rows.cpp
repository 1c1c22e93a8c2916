#include "runner/queue/task_rows.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "base/error_codes.h"
#include "runner/queue/queue_sql.h"

namespace runner::queue::rows {

std::string PgArray(const std::vector<std::string>& items) {
  std::string out = "{";
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (char c : items[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

// NULL for an empty list (the claims read it as "all queues", "skip none").
std::optional<std::string> PgArrayOrNull(const std::vector<std::string>& items) {
  if (items.empty()) return std::nullopt;
  return PgArray(items);
}

std::string PgArrayNullable(const std::vector<std::optional<std::string>>& items) {
  std::string out = "{";
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    if (!items[i]) {
      out += "NULL";
      continue;
    }
    out += '"';
    for (char c : *items[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

json::object MapObject(const std::map<std::string, std::string>& m) {
  json::object o;
  for (const auto& [k, v] : m) o[k] = v;
  return o;
}

std::string MapJson(const std::map<std::string, std::string>& m) {
  return json::serialize(MapObject(m));
}

json::object LimitsObject(const isolation::Limits& l) {
  return json::object{{"cpus", l.cpus}, {"memory", l.memory}, {"disk", l.disk}, {"pids", l.pids}};
}

std::string UsageJson(const isolation::Usage& u) {
  return json::serialize(json::object{
      {"cpu_seconds", u.cpu_seconds}, {"peak_memory", u.peak_memory}, {"duration", u.duration}});
}

std::optional<std::string> ErrorJson(const std::optional<TaskError>& e) {
  if (!e) return std::nullopt;
  return json::serialize(json::object{{"code", e->code}, {"message", e->message}});
}

double Num(const json::value& v) {
  if (v.is_double()) return v.get_double();
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  return 0;
}

int64_t Int(const json::value& v) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64()) return static_cast<int64_t>(v.get_uint64());
  if (v.is_double()) return static_cast<int64_t>(v.get_double());
  return 0;
}

const json::value* Field(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  return it == o.end() ? nullptr : &it->value();
}

std::vector<std::string> SecretNames(const std::map<std::string, std::string>& secrets) {
  std::vector<std::string> names;
  names.reserve(secrets.size());
  for (const auto& [name, value] : secrets) names.push_back(name);
  return names;
}

// The task's secrets sealed for row `id`, as hex; nullopt when it has none.
// Without a key the submission is refused: storing them in the clear, or
// dropping them, would both be worse.
Result<std::optional<std::string>> SealSecrets(const StoreOptions& opts, const NewTask& nt,
                                               const std::string& id) {
  if (nt.secrets.empty()) return std::optional<std::string>();
  if (!opts.secret_key) {
    return Error{"internal",
                 "secrets: this node has no secret key to seal them with; start it with "
                 "--secret-key-file"};
  }
  return std::optional<std::string>(
      secrets::ToHex(secrets::Seal(*opts.secret_key, MapJson(nt.secrets), id)));
}

// Opens the sealed secrets a claim returned (hex, or NULL) into t.secrets, or
// sets t.secrets_error when this node cannot: the worker then fails the task.
void OpenClaimedSecrets(const StoreOptions& opts, const pqxx::field& sealed_hex, Task& t) {
  if (sealed_hex.is_null()) return;
  if (!opts.secret_key) {
    t.secrets_error = TaskError{errc::kSecretsUnavailable,
                                "the task has secrets but this node has no secret key; start "
                                "every node sharing the database with the same --secret-key-file"};
    return;
  }
  auto opened = secrets::Open(*opts.secret_key, secrets::FromHex(sealed_hex.c_str()), t.id);
  if (!opened.ok()) {
    t.secrets_error = TaskError{opened.error().code, opened.error().message};
    return;
  }
  try {
    const json::value parsed = json::parse(*opened);
    for (const auto& [k, v] : parsed.as_object()) {
      if (v.is_string()) t.secrets.emplace(std::string(k), std::string(v.get_string()));
    }
  } catch (const std::exception&) {
    // Never include the text: it is the plaintext.
    t.secrets_error = TaskError{errc::kSecretsUnavailable,
                                "the task's secrets opened but are not a JSON object of strings"};
  }
}

std::vector<std::string> ParseStringArray(const pqxx::field& f) {
  std::vector<std::string> out;
  if (f.is_null()) return out;
  json::value parsed = json::parse(f.c_str());
  for (const auto& v : parsed.as_array()) {
    out.emplace_back(v.is_string() ? std::string(v.get_string()) : "");
  }
  return out;
}

std::map<std::string, std::string> ParseStringMap(const pqxx::field& f) {
  std::map<std::string, std::string> out;
  if (f.is_null()) return out;
  json::value parsed = json::parse(f.c_str());
  for (const auto& [k, v] : parsed.as_object()) {
    out[std::string(k)] = v.is_string() ? std::string(v.get_string()) : json::serialize(v);
  }
  return out;
}

TimePoint Micros(const pqxx::field& f) {
  return TimePoint(
      std::chrono::duration_cast<Clock::duration>(std::chrono::microseconds(f.as<int64_t>())));
}

std::optional<TimePoint> OptMicros(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return Micros(f);
}

std::optional<std::string> OptString(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<std::string>();
}

// Column order of sql::kTaskColumns.
Task RowToTask(const pqxx::row& r) {
  Task t;
  t.id = r[0].as<std::string>();
  t.state = ParseTaskState(r[1].c_str()).value_or(TaskState::kQueued);
  t.queue = r[2].as<std::string>();
  t.priority = r[3].as<int>();
  t.command = ParseStringArray(r[4]);
  t.image = r[5].as<std::string>();
  t.isolation =
      isolation::ParseIsolationMode(r[6].c_str()).value_or(isolation::IsolationMode::kAuto);
  t.isolation_used = OptString(r[7]);
  t.env = ParseStringMap(r[8]);
  {
    auto o = json::parse(r[9].c_str()).as_object();
    if (auto* v = Field(o, "cpus")) t.limits.cpus = Num(*v);
    if (auto* v = Field(o, "memory")) t.limits.memory = Int(*v);
    if (auto* v = Field(o, "disk")) t.limits.disk = Int(*v);
    if (auto* v = Field(o, "pids")) t.limits.pids = Int(*v);
  }
  t.timeout = r[10].as<double>();
  t.attempt = r[11].as<int>();
  t.max_attempts = r[12].as<int>();
  t.backoff = r[13].as<double>();
  t.depends_on = ParseStringArray(r[14]);
  t.idempotency_key = OptString(r[15]);
  t.labels = ParseStringMap(r[16]);
  t.worker_id = OptString(r[17]);
  t.node_id = OptString(r[18]);
  if (!r[19].is_null()) t.exit_code = r[19].as<int>();
  if (!r[20].is_null()) {
    auto o = json::parse(r[20].c_str()).as_object();
    TaskError e;
    if (auto* v = Field(o, "code"); v && v->is_string()) e.code = v->get_string();
    if (auto* v = Field(o, "message"); v && v->is_string()) e.message = v->get_string();
    t.error = e;
  }
  if (!r[21].is_null()) {
    auto o = json::parse(r[21].c_str()).as_object();
    isolation::Usage u;
    if (auto* v = Field(o, "cpu_seconds")) u.cpu_seconds = Num(*v);
    if (auto* v = Field(o, "peak_memory")) u.peak_memory = Int(*v);
    if (auto* v = Field(o, "duration")) u.duration = Num(*v);
    t.usage = u;
  }
  t.created_at = Micros(r[22]);
  t.run_at = Micros(r[23]);
  t.started_at = OptMicros(r[24]);
  t.finished_at = OptMicros(r[25]);
  t.lease_expires_at = OptMicros(r[26]);
  t.cancel_requested = r[27].as<bool>();
  t.stdout_tail = r[28].as<std::string>();
  t.stderr_tail = r[29].as<std::string>();
  t.logs_truncated = r[30].as<bool>();
  t.schedule = OptString(r[31]);
  t.scheduled_for = OptMicros(r[32]);
  t.group = OptString(r[33]);
  t.secret_names = ParseStringArray(r[34]);
  return t;
}

WorkerState ParseWorkerState(std::string_view s) {
  for (auto w :
       {WorkerState::kStarting, WorkerState::kIdle, WorkerState::kBusy, WorkerState::kStopping}) {
    if (ToString(w) == s) return w;
  }
  return WorkerState::kStarting;
}

// Keeps the text valid UTF-8 (the API serves tails as JSON strings): drops NUL
// and replaces bytes that do not form a valid sequence with '?'.
std::string SanitizeUtf8(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  std::size_t i = 0;
  while (i < in.size()) {
    auto c = static_cast<unsigned char>(in[i]);
    std::size_t len = 0;
    if (c < 0x80) {
      if (c != 0) out += static_cast<char>(c);
      ++i;
      continue;
    }
    if ((c & 0xE0) == 0xC0 && c >= 0xC2) {
      len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
    } else if ((c & 0xF8) == 0xF0 && c <= 0xF4) {
      len = 4;
    }
    bool ok = len > 0 && i + len <= in.size();
    for (std::size_t k = 1; ok && k < len; ++k) {
      ok = (static_cast<unsigned char>(in[i + k]) & 0xC0) == 0x80;
    }
    if (ok) {
      out.append(in.substr(i, len));
      i += len;
    } else {
      out += '?';
      ++i;
    }
  }
  return out;
}

std::string AppendTail(const std::string& tail, std::string_view data) {
  std::string combined = tail;
  combined.append(data);
  if (combined.size() <= kTailBytes) return SanitizeUtf8(combined);
  std::size_t start = combined.size() - kTailBytes;
  // Do not start in the middle of a UTF-8 sequence.
  while (start < combined.size() && (static_cast<unsigned char>(combined[start]) & 0xC0) == 0x80) {
    ++start;
  }
  return SanitizeUtf8(std::string_view(combined).substr(start));
}

}  // namespace runner::queue::rows
