#pragma once

// Between the store's rows and its C++ values: PostgreSQL arrays, the JSON
// columns (env, labels, limits, usage, error), sealed secrets, times in
// microseconds, and a task row to a Task. Shared by the store's files.
//
// Thread-safety: pure functions.

#include <boost/json.hpp>
#include <chrono>
#include <map>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "runner/queue/postgres_store.h"
#include "runner/queue/task.h"

namespace runner::queue::rows {

namespace json = boost::json;

// Where the claims put RUNNER_SEALED_SECRETS_COLUMN: right after the task's.
inline constexpr int kSealedSecretsColumn = 35;

std::string PgArray(const std::vector<std::string>& items);

// NULL for an empty list (the claims read it as "all queues", "skip none").
std::optional<std::string> PgArrayOrNull(const std::vector<std::string>& items);

std::string PgArrayNullable(const std::vector<std::optional<std::string>>& items);

json::object MapObject(const std::map<std::string, std::string>& m);

std::string MapJson(const std::map<std::string, std::string>& m);

json::object LimitsObject(const isolation::Limits& l);

std::string UsageJson(const isolation::Usage& u);

std::optional<std::string> ErrorJson(const std::optional<TaskError>& e);

double Num(const json::value& v);

int64_t Int(const json::value& v);

const json::value* Field(const json::object& o, std::string_view key);

std::vector<std::string> SecretNames(const std::map<std::string, std::string>& secrets);

// The task's secrets sealed for row `id`, as hex; nullopt when it has none.
// Without a key the submission is refused: storing them in the clear, or
// dropping them, would both be worse.
Result<std::optional<std::string>> SealSecrets(const StoreOptions& opts, const NewTask& nt,
                                               const std::string& id);

// Opens the sealed secrets a claim returned (hex, or NULL) into t.secrets, or
// sets t.secrets_error when this node cannot: the worker then fails the task.
void OpenClaimedSecrets(const StoreOptions& opts, const pqxx::field& sealed_hex, Task& t);

std::vector<std::string> ParseStringArray(const pqxx::field& f);

std::map<std::string, std::string> ParseStringMap(const pqxx::field& f);

TimePoint Micros(const pqxx::field& f);

std::optional<TimePoint> OptMicros(const pqxx::field& f);

std::optional<std::string> OptString(const pqxx::field& f);

// Column order of sql::kTaskColumns.
Task RowToTask(const pqxx::row& r);

WorkerState ParseWorkerState(std::string_view s);

// Keeps the text valid UTF-8 (the API serves tails as JSON strings): drops NUL
// and replaces bytes that do not form a valid sequence with '?'.
std::string SanitizeUtf8(std::string_view in);

std::string AppendTail(const std::string& tail, std::string_view data);

inline const char* NullableCStr(const std::optional<std::string>& s) {
  return s ? s->c_str() : nullptr;
}

inline std::string LimitsJson(const isolation::Limits& l) {
  return json::serialize(LimitsObject(l));
}

inline std::string_view WorkerStateText(WorkerState s) { return ToString(s); }

}  // namespace runner::queue::rows
