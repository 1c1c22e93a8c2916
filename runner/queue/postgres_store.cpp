#include "runner/queue/postgres_store.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <map>
#include <pqxx/pqxx>
#include <set>

#include "base/error_codes.h"
#include "base/ulid.h"
#include "runner/queue/connection_pool.h"
#include "runner/queue/queue_sql.h"
#include "runner/queue/store_execute.h"
#include "runner/queue/task_rows.h"
#include "runner/queue/validation.h"

namespace runner::queue {
namespace json = boost::json;
using internal::Execute;
using internal::ToMillis;
using namespace rows;  // NOLINT: the row mapping is this file's vocabulary

namespace {

Error NotFound(std::string_view id) {
  return Error{"not_found", "no task with id " + std::string(id)};
}

// A task's limits, each one it leaves at 0 taken from the store's defaults.
isolation::Limits WithDefaults(isolation::Limits limits, const StoreOptions& opts) {
  if (limits.cpus == 0) limits.cpus = opts.default_limits.cpus;
  if (limits.memory == 0) limits.memory = opts.default_limits.memory;
  if (limits.disk == 0) limits.disk = opts.default_limits.disk;
  if (limits.pids == 0) limits.pids = opts.default_limits.pids;
  return limits;
}

// Shared by Submit and SubmitBatch: inserts one validated task in tx.
// Returns the outcome; fills `notify_queues` when a queued task was created.
SubmitOutcome InsertTask(pqxx::work& tx, const StoreOptions& opts, const NewTask& nt,
                         std::set<std::string>& notify_queues, std::optional<Error>& error) {
  if (nt.idempotency_key) {
    auto r = tx.exec_prepared(sql::kTaskByKey.name, *nt.idempotency_key);
    if (!r.empty()) return SubmitOutcome{RowToTask(r[0]), false};
  }
  std::string state = "queued";
  std::optional<TaskError> dep_error;
  if (!nt.depends_on.empty()) {
    // Row-locked: a dependency cannot finish between this check and our commit,
    // so its dependents-failing statement always sees this task.
    auto r = tx.exec_prepared(sql::kLockDependencies.name, PgArray(nt.depends_on));
    std::set<std::string> found;
    for (const auto& row : r) {
      found.insert(row[0].as<std::string>());
      std::string s = row[1].as<std::string>();
      if (s == "failed" || s == "cancelled" || s == "timed_out") {
        dep_error = TaskError{"dependency_failed",
                              "dependency " + row[0].as<std::string>() + " ended " + s};
      }
    }
    for (const auto& id : nt.depends_on) {
      if (!found.count(id)) {
        error = Error{"validation_failed", "depends_on: no task with id " + id};
        return {};
      }
    }
    if (dep_error) state = "failed";
  }
  std::string id = NewUlid();
  auto sealed = SealSecrets(opts, nt, id);
  if (!sealed.ok()) {
    error = sealed.error();
    return {};
  }
  auto err = ErrorJson(dep_error);
  auto r = tx.exec_prepared(
      sql::kInsertTask.name, id, nt.queue, state, nt.priority, nt.delay, nt.max_attempts,
      nt.backoff.value_or(opts.default_backoff), std::string(isolation::ToString(nt.isolation)),
      nt.image.value_or(opts.default_image), PgArray(nt.command), MapJson(nt.env),
      LimitsJson(WithDefaults(nt.limits, opts)), nt.timeout.value_or(opts.default_timeout),
      PgArray(nt.depends_on), NullableCStr(nt.idempotency_key), MapJson(nt.labels),
      NullableCStr(err), NullableCStr(nt.group), PgArray(SecretNames(nt.secrets)),
      NullableCStr(*sealed));
  if (r.empty()) {
    // Lost an insert race on the idempotency key: the winner has committed.
    auto existing = tx.exec_prepared(sql::kTaskByKey.name, *nt.idempotency_key);
    if (existing.empty()) {
      error = Error{"conflict", "idempotency_key is being used by a concurrent submission"};
      return {};
    }
    return SubmitOutcome{RowToTask(existing[0]), false};
  }
  SubmitOutcome out{RowToTask(r[0]), true};
  if (state == "queued") {
    notify_queues.insert(nt.queue);
    tx.exec_prepared(sql::kInsertEvent.name, "task.queued", id, nullptr,
                     json::serialize(json::object{{"queue", nt.queue}}));
  } else {
    tx.exec_prepared(sql::kInsertEvent.name, "task.failed", id, nullptr,
                     json::serialize(json::object{{"error", "dependency_failed"}}));
  }
  return out;
}

// The submit of tasks none of which depends on another: one statement
// (kInsertTasks) for the whole batch instead of an insert and an event per
// task inside a transaction. The same defaults and outcomes as InsertTask:
// a task whose idempotency_key exists comes back as that task, not created;
// a key repeated in the batch makes one task.
Result<std::vector<SubmitOutcome>> InsertIndependentTasks(pqxx::connection& c,
                                                          const StoreOptions& opts,
                                                          std::span<const NewTask> tasks) {
  json::array rows;
  std::vector<std::string> ids(tasks.size());
  std::map<std::string, std::size_t> first_with_key;  // key -> index of its first task
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    const NewTask& nt = tasks[i];
    if (nt.idempotency_key && !first_with_key.emplace(*nt.idempotency_key, i).second) continue;
    ids[i] = NewUlid();
    auto sealed = SealSecrets(opts, nt, ids[i]);
    if (!sealed.ok()) return sealed.error();
    auto names = SecretNames(nt.secrets);
    json::object row = TaskInsertRecord(nt, opts);
    row["id"] = ids[i];
    row["secret_names"] = json::array(names.begin(), names.end());
    row["secrets_sealed"] = *sealed ? json::value(**sealed) : json::value(nullptr);
    rows.push_back(std::move(row));
  }
  pqxx::nontransaction tx(c);
  std::map<std::string, Task> inserted;
  for (const auto& row : tx.exec_prepared(sql::kInsertTasks.name, json::serialize(rows))) {
    Task t = RowToTask(row);
    inserted.emplace(t.id, std::move(t));
  }
  // Keys whose first task was not inserted: taken before this batch.
  std::vector<std::string> taken;
  for (const auto& [key, first] : first_with_key) {
    if (!inserted.contains(ids[first])) taken.push_back(key);
  }
  std::map<std::string, Task> existing;
  if (!taken.empty()) {
    for (const auto& row : tx.exec_prepared(sql::kTasksByKeys.name, PgArray(taken))) {
      Task t = RowToTask(row);
      std::string key = *t.idempotency_key;
      existing.emplace(std::move(key), std::move(t));
    }
  }
  std::vector<SubmitOutcome> out;
  out.reserve(tasks.size());
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    if (auto it = inserted.find(ids[i]); it != inserted.end()) {
      out.push_back(SubmitOutcome{it->second, true});
      continue;
    }
    // Not inserted: a key taken before, or repeated from earlier in the batch.
    const std::string& key = *tasks[i].idempotency_key;
    if (auto it = inserted.find(ids[first_with_key.at(key)]); it != inserted.end()) {
      out.push_back(SubmitOutcome{it->second, false});
    } else if (auto found = existing.find(key); found != existing.end()) {
      out.push_back(SubmitOutcome{found->second, false});
    } else {
      // The holder of the key went away between the two statements.
      return Error{"conflict", "idempotency_key " + key +
                                   " is being used by a concurrent submission; submit again"};
    }
  }
  return out;
}

}  // namespace

json::object TaskInsertRecord(const NewTask& nt, const StoreOptions& opts) {
  json::array command(nt.command.begin(), nt.command.end());
  return json::object{
      {"queue", nt.queue},
      {"priority", nt.priority},
      {"delay", nt.delay},
      {"max_attempts", nt.max_attempts},
      {"backoff", nt.backoff.value_or(opts.default_backoff)},
      {"isolation", isolation::ToString(nt.isolation)},
      {"image", nt.image.value_or(opts.default_image)},
      {"command", std::move(command)},
      {"env", MapObject(nt.env)},
      {"limits", LimitsObject(WithDefaults(nt.limits, opts))},
      {"timeout", nt.timeout.value_or(opts.default_timeout)},
      {"idempotency_key",
       nt.idempotency_key ? json::value(*nt.idempotency_key) : json::value(nullptr)},
      {"labels", MapObject(nt.labels)},
      {"group", nt.group ? json::value(*nt.group) : json::value(nullptr)},
  };
}

// ---------------------------------------------------------------------------

PostgresStore::PostgresStore(StoreOptions options)
    : options_(std::move(options)),
      connections_(
          std::make_unique<ConnectionPool>(options_.conninfo, std::max(1, options_.pool_size),
                                           options_.acquire_timeout, options_.statement_timeout)) {}

PostgresStore::~PostgresStore() = default;

Result<std::unique_ptr<PostgresStore>> PostgresStore::Open(const StoreOptions& options) {
  if (options.pool_size < 1) {
    throw std::invalid_argument("StoreOptions.pool_size must be at least 1");
  }
  if (options.migrate) {
    auto migrated = Migrate(options.conninfo);
    if (!migrated.ok()) return migrated.error();
  }
  std::unique_ptr<PostgresStore> store(new PostgresStore(options));
  auto ping = store->Ping();
  if (!ping.ok()) return ping.error();
  return Result<std::unique_ptr<PostgresStore>>(std::move(store));
}

Status PostgresStore::Ping() {
  return Execute<Status>(*connections_, "ping", [&](pqxx::connection& c) -> Status {
    pqxx::nontransaction tx(c);
    tx.exec("SELECT 1");
    return {};
  });
}

Result<SubmitOutcome> PostgresStore::Submit(const NewTask& task) {
  auto batch = SubmitBatch(std::span<const NewTask>(&task, 1));
  if (!batch.ok()) return batch.error();
  return std::move(batch.value().front());
}

Result<std::vector<SubmitOutcome>> PostgresStore::SubmitBatch(std::span<const NewTask> tasks) {
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    if (auto e = ValidateNewTask(tasks[i])) {
      if (tasks.size() > 1) e->message = "task " + std::to_string(i) + ": " + e->message;
      return *e;
    }
  }
  using R = Result<std::vector<SubmitOutcome>>;
  const bool independent = std::none_of(tasks.begin(), tasks.end(),
                                        [](const NewTask& t) { return !t.depends_on.empty(); });
  return Execute<R>(*connections_, "submit", [&](pqxx::connection& c) -> R {
    if (independent) return InsertIndependentTasks(c, options_, tasks);
    pqxx::work tx(c);
    std::vector<SubmitOutcome> out;
    out.reserve(tasks.size());
    std::set<std::string> queues;
    for (const auto& nt : tasks) {
      std::optional<Error> error;
      auto outcome = InsertTask(tx, options_, nt, queues, error);
      if (error) return *error;  // tx aborts on destruction
      out.push_back(std::move(outcome));
    }
    for (const auto& q : queues) tx.exec_prepared(sql::kNotifyTasks.name, q);
    tx.commit();
    return out;
  });
}

Result<Task> PostgresStore::Get(std::string_view id) {
  return Execute<Result<Task>>(*connections_, "get", [&](pqxx::connection& c) -> Result<Task> {
    pqxx::nontransaction tx(c);
    auto r = tx.exec_prepared(sql::kTaskById.name, std::string(id));
    if (r.empty()) return NotFound(id);
    return RowToTask(r[0]);
  });
}

Result<TaskPage> PostgresStore::List(const TaskFilter& filter) {
  if (filter.limit < 1 || filter.limit > 1000) {
    return Error{"validation_failed", "limit: must be between 1 and 1000"};
  }
  std::optional<std::string> cursor_micros;
  std::optional<std::string> cursor_id;
  if (filter.cursor) {
    auto dot = filter.cursor->find('.');
    bool ok = dot != std::string::npos && dot > 0 && dot <= 19;
    if (ok) {
      for (std::size_t i = 0; i < dot; ++i)
        ok = ok && std::isdigit(static_cast<unsigned char>((*filter.cursor)[i]));
      ok = ok && IsUlid(filter.cursor->substr(dot + 1));
    }
    if (!ok) return Error{"validation_failed", "cursor: not a cursor from a previous page"};
    cursor_micros = filter.cursor->substr(0, dot);
    cursor_id = filter.cursor->substr(dot + 1);
  }
  // Only the filters present go into the statement, each a plain comparison
  // an index can serve, with its value as a parameter.
  std::string query(sql::kListTasksSelect);
  std::vector<std::string> params;
  bool first = true;
  auto where = [&](std::string_view condition) {
    query += first ? " WHERE " : " AND ";
    query += condition;
    first = false;
  };
  if (filter.state) {
    params.emplace_back(ToString(*filter.state));
    where("t.state = $" + std::to_string(params.size()));
  }
  if (filter.queue) {
    params.push_back(*filter.queue);
    where("t.queue = $" + std::to_string(params.size()));
  }
  if (filter.schedule) {
    params.push_back(*filter.schedule);
    where("t.schedule = $" + std::to_string(params.size()));
  }
  if (filter.group) {
    params.push_back(*filter.group);
    where("t.\"group\" = $" + std::to_string(params.size()));
  }
  if (cursor_micros) {
    params.push_back(*cursor_micros);
    params.push_back(*cursor_id);
    auto micros = std::to_string(params.size() - 1);
    auto id = std::to_string(params.size());
    where("(t.created_at, t.id) < ('epoch'::timestamptz + $" + micros +
          "::bigint * interval '1 microsecond', $" + id + "::text)");
  }
  query += sql::kListTasksOrder;
  query += " LIMIT " + std::to_string(filter.limit + 1);
  return Execute<Result<TaskPage>>(
      *connections_, "list", [&](pqxx::connection& c) -> Result<TaskPage> {
        pqxx::nontransaction tx(c);
        auto r = tx.exec_params(query, pqxx::prepare::make_dynamic_params(params));
        TaskPage page;
        for (const auto& row : r) {
          if (static_cast<int>(page.tasks.size()) == filter.limit) break;
          page.tasks.push_back(RowToTask(row));
        }
        if (static_cast<int>(r.size()) > filter.limit && !page.tasks.empty()) {
          const Task& last = page.tasks.back();
          auto micros = std::chrono::duration_cast<std::chrono::microseconds>(
                            last.created_at.time_since_epoch())
                            .count();
          page.next_cursor = std::to_string(micros) + "." + last.id;
        }
        return page;
      });
}

Result<Task> PostgresStore::Cancel(std::string_view id) {
  return Execute<Result<Task>>(*connections_, "cancel", [&](pqxx::connection& c) -> Result<Task> {
    pqxx::work tx(c);
    std::string tid(id);
    auto r = tx.exec_prepared(sql::kLockTask.name, tid);
    if (r.empty()) return NotFound(id);
    std::string state = r[0][0].as<std::string>();
    if (state == "queued") {
      tx.exec_prepared(sql::kCancelQueued.name, tid);
      tx.exec_prepared(sql::kFailDependents.name, tid, "cancelled");
    } else if (state == "running") {
      tx.exec_prepared(sql::kRequestCancel.name, tid);
    } else {
      return Error{"conflict", "task " + tid + " already finished (" + state + ")"};
    }
    auto t = tx.exec_prepared(sql::kTaskById.name, tid);
    tx.commit();
    {
      std::lock_guard lock(counts_mu_);
      counts_at_ = {};
    }
    return RowToTask(t[0]);
  });
}

Result<StateCounts> PostgresStore::Counts() {
  {
    std::lock_guard lock(counts_mu_);
    if (counts_at_ != std::chrono::steady_clock::time_point{} &&
        std::chrono::steady_clock::now() - counts_at_ < options_.counts_cache) {
      return counts_;
    }
  }
  auto fresh = Execute<Result<StateCounts>>(
      *connections_, "counts", [&](pqxx::connection& c) -> Result<StateCounts> {
        pqxx::nontransaction tx(c);
        auto r = tx.exec_prepared(sql::kCounts.name);
        StateCounts counts;
        for (auto s : {TaskState::kQueued, TaskState::kRunning, TaskState::kSucceeded,
                       TaskState::kFailed, TaskState::kCancelled, TaskState::kTimedOut}) {
          counts[s] = 0;
        }
        for (const auto& row : r) {
          if (auto s = ParseTaskState(row[0].c_str())) counts[*s] = row[1].as<int64_t>();
        }
        return counts;
      });
  if (!fresh.ok()) return fresh;
  std::lock_guard lock(counts_mu_);
  counts_ = fresh.value();
  counts_at_ = std::chrono::steady_clock::now();
  return counts_;
}

Result<LogPage> PostgresStore::Logs(std::string_view task_id, LogStream stream, int64_t after_seq,
                                    std::size_t max_bytes) {
  std::optional<std::string> stream_code;
  if (stream == LogStream::kStdout) stream_code = "0";
  if (stream == LogStream::kStderr) stream_code = "1";
  return Execute<Result<LogPage>>(
      *connections_, "logs", [&](pqxx::connection& c) -> Result<LogPage> {
        pqxx::work tx(c);  // one snapshot: truncated flag and chunks agree
        auto t = tx.exec_prepared(sql::kLogState.name, std::string(task_id));
        if (t.empty()) return NotFound(task_id);
        LogPage page;
        page.truncated = t[0][0].as<bool>();
        page.last_seq = after_seq;
        auto r = tx.exec_prepared(sql::kLogChunks.name, std::string(task_id), after_seq,
                                  NullableCStr(stream_code), 1000);
        std::size_t bytes = 0;
        for (const auto& row : r) {
          pqxx::binarystring data(row[2]);
          if (!page.chunks.empty() && bytes + data.size() > max_bytes) break;
          LogChunk chunk;
          chunk.seq = row[0].as<int64_t>();
          chunk.stream = row[1].as<int>() == 1 ? isolation::OutputStream::kStderr
                                               : isolation::OutputStream::kStdout;
          chunk.data = data.str();
          bytes += chunk.data.size();
          page.last_seq = chunk.seq;
          page.chunks.push_back(std::move(chunk));
        }
        tx.commit();
        return page;
      });
}

Result<std::vector<Task>> PostgresStore::Claim(const ClaimRequest& request) {
  using R = Result<std::vector<Task>>;
  if (request.worker_ids.empty()) return std::vector<Task>{};
  const auto queues = PgArrayOrNull(request.queues);
  const auto skip = PgArrayOrNull(request.skip_isolations);
  return Execute<R>(*connections_, "claim", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);  // one statement: atomic on its own
    auto r = tx.exec_prepared(sql::kClaim.name, PgArray(request.worker_ids), request.node_id,
                              ToMillis(request.lease), NullableCStr(queues),
                              static_cast<int64_t>(request.worker_ids.size()), NullableCStr(skip));
    std::vector<Task> out;
    out.reserve(r.size());
    for (const auto& row : r) {
      out.push_back(RowToTask(row));
      OpenClaimedSecrets(options_, row[kSealedSecretsColumn], out.back());
    }
    return out;
  });
}

Status PostgresStore::WithConnection(std::string_view op,
                                     const std::function<Status(pqxx::connection_base&)>& f) {
  return Execute<Status>(*connections_, op, [&](pqxx::connection& c) -> Status { return f(c); });
}

Result<HeartbeatOutcome> PostgresStore::Heartbeat(const HeartbeatRequest& request) {
  using R = Result<HeartbeatOutcome>;
  // One row per worker (the upsert may not touch a row twice).
  std::map<std::string, const WorkerBeat*> unique;
  for (const auto& w : request.workers) unique[w.worker_id] = &w;
  std::vector<std::string> ids;
  std::vector<std::string> states;
  std::vector<std::optional<std::string>> tasks;
  for (const auto& [id, w] : unique) {
    ids.push_back(id);
    states.emplace_back(WorkerStateText(w->state));
    tasks.push_back(w->task_id);
  }
  return Execute<R>(*connections_, "heartbeat", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);
    auto r =
        tx.exec_prepared(sql::kHeartbeat.name, request.node_id, PgArray(ids), PgArray(states),
                         PgArrayNullable(tasks), ToMillis(request.lease), request.target_workers);
    HeartbeatOutcome out;
    for (const auto& row : r) out.lost_task_ids.push_back(row[0].as<std::string>());
    return out;
  });
}

Result<std::vector<std::string>> PostgresStore::CancelRequested(std::span<const std::string> ids) {
  using R = Result<std::vector<std::string>>;
  if (ids.empty()) return std::vector<std::string>{};
  std::vector<std::string> list(ids.begin(), ids.end());
  return Execute<R>(*connections_, "cancel_requested", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);
    auto r = tx.exec_prepared(sql::kCancelRequested.name, PgArray(list));
    std::vector<std::string> out;
    for (const auto& row : r) out.push_back(row[0].as<std::string>());
    return out;
  });
}

Status PostgresStore::AppendLogs(std::string_view task_id, std::span<const LogChunk> chunks) {
  if (chunks.empty()) return {};
  return Execute<Status>(*connections_, "append_logs", [&](pqxx::connection& c) -> Status {
    pqxx::work tx(c);
    std::string tid(task_id);
    auto r = tx.exec_prepared(sql::kLockLogState.name, tid);
    if (r.empty()) return NotFound(task_id);
    int64_t bytes = r[0][0].as<int64_t>();
    int64_t seq = r[0][1].as<int64_t>();
    bool truncated = r[0][2].as<bool>();
    std::string out_tail = r[0][3].as<std::string>();
    std::string err_tail = r[0][4].as<std::string>();
    std::string out_new;
    std::string err_new;
    for (const auto& chunk : chunks) {
      if (chunk.data.empty()) continue;
      (chunk.stream == isolation::OutputStream::kStderr ? err_new : out_new).append(chunk.data);
      int64_t room = options_.log_cap - bytes;
      if (room <= 0) {
        truncated = true;
        continue;
      }
      std::string_view data = chunk.data;
      if (static_cast<int64_t>(data.size()) > room) {
        data = data.substr(0, static_cast<std::size_t>(room));
        truncated = true;
      }
      ++seq;
      bytes += static_cast<int64_t>(data.size());
      tx.exec_prepared(sql::kInsertLog.name, tid, seq,
                       chunk.stream == isolation::OutputStream::kStderr ? 1 : 0,
                       pqxx::binarystring(data.data(), data.size()));
    }
    if (!out_new.empty()) out_tail = AppendTail(out_tail, out_new);
    if (!err_new.empty()) err_tail = AppendTail(err_tail, err_new);
    tx.exec_prepared(sql::kUpdateLogState.name, tid, bytes, seq, truncated, out_tail, err_tail);
    tx.commit();
    return {};
  });
}

namespace {

// The parameters kFinish and kFinishAndClaim share, as text.
struct FinishParams {
  std::string state;
  std::optional<std::string> exit_code, error, isolation_used;
};

Result<FinishParams> ToFinishParams(const FinishReport& report) {
  if (report.state == TaskState::kQueued || report.state == TaskState::kRunning) {
    return Error{"validation_failed", "Finish: state must be a final state"};
  }
  FinishParams p;
  p.state = std::string(ToString(report.state));
  if (report.exit_code) p.exit_code = std::to_string(*report.exit_code);
  p.error = ErrorJson(report.error);
  if (!report.isolation_used.empty()) p.isolation_used = report.isolation_used;
  return p;
}

// After a final state is committed: wake or fail the dependents. The reaper's
// sweep (kOrphanedDependents) covers a crash in between.
void SettleDependents(pqxx::connection& c, const std::string& task_id, const FinishReport& report,
                      const std::string& state) {
  pqxx::nontransaction tx(c);
  if (report.state == TaskState::kSucceeded) {
    tx.exec_prepared(sql::kWakeDependents.name, task_id);
  } else {
    tx.exec_prepared(sql::kFailDependents.name, task_id, state);
  }
}

}  // namespace

Result<FinishOutcome> PostgresStore::Finish(std::string_view task_id, std::string_view worker_id,
                                            const FinishReport& report) {
  using R = Result<FinishOutcome>;
  auto params = ToFinishParams(report);
  if (!params.ok()) return params.error();
  const FinishParams& p = *params;
  return Execute<R>(*connections_, "finish", [&](pqxx::connection& c) -> R {
    std::string tid(task_id);
    bool retry = false;
    bool has_dependents = false;
    {
      pqxx::nontransaction tx(c);  // one statement: atomic on its own
      auto r = tx.exec_prepared(sql::kFinish.name, tid, std::string(worker_id), p.state,
                                NullableCStr(p.exit_code), NullableCStr(p.error),
                                UsageJson(report.usage), NullableCStr(p.isolation_used),
                                report.retryable, kMaxRetryDelaySeconds);
      if (r.empty()) return FinishOutcome::kLeaseLost;  // not running, or held by another
      retry = r[0][0].as<bool>();
      has_dependents = r[0][1].as<bool>();
    }
    if (retry) return FinishOutcome::kRetrying;
    if (has_dependents) SettleDependents(c, tid, report, p.state);
    return FinishOutcome::kFinished;
  });
}

Result<FinishAndNext> PostgresStore::FinishAndClaim(std::string_view task_id,
                                                    std::string_view worker_id,
                                                    const FinishReport& report,
                                                    const ClaimRequest& next) {
  using R = Result<FinishAndNext>;
  auto params = ToFinishParams(report);
  if (!params.ok()) return params.error();
  const FinishParams& p = *params;
  const auto queues = PgArrayOrNull(next.queues);
  const auto skip = PgArrayOrNull(next.skip_isolations);
  return Execute<R>(*connections_, "finish", [&](pqxx::connection& c) -> R {
    std::string tid(task_id);
    FinishAndNext out;
    bool settle = false;
    {
      pqxx::nontransaction tx(c);  // one statement: atomic on its own
      auto r = tx.exec_prepared(sql::kFinishAndClaim.name, tid, std::string(worker_id), p.state,
                                NullableCStr(p.exit_code), NullableCStr(p.error),
                                UsageJson(report.usage), NullableCStr(p.isolation_used),
                                report.retryable, kMaxRetryDelaySeconds, next.node_id,
                                ToMillis(next.lease), NullableCStr(queues), NullableCStr(skip));
      const auto row = r[0];
      const int n = static_cast<int>(row.size());
      if (!row[n - 1].as<bool>()) {
        out.outcome = FinishOutcome::kLeaseLost;
      } else if (row[n - 3].as<bool>()) {
        out.outcome = FinishOutcome::kRetrying;
      } else {
        out.outcome = FinishOutcome::kFinished;
        settle = row[n - 2].as<bool>();
      }
      if (!row[0].is_null()) {
        out.next = RowToTask(row);
        OpenClaimedSecrets(options_, row[kSealedSecretsColumn], *out.next);
      }
    }
    if (settle) SettleDependents(c, tid, report, p.state);
    return out;
  });
}

Status PostgresStore::Release(std::string_view task_id, std::string_view worker_id) {
  return ReleaseTask(task_id, worker_id, std::nullopt);
}

Status PostgresStore::Defer(std::string_view task_id, std::string_view worker_id,
                            const Deferral& deferral) {
  return ReleaseTask(task_id, worker_id, deferral);
}

Status PostgresStore::ReleaseTask(std::string_view task_id, std::string_view worker_id,
                                  const std::optional<Deferral>& deferral) {
  const int64_t delay_ms = deferral ? ToMillis(deferral->delay) : 0;
  const auto why = ErrorJson(deferral ? std::optional<TaskError>(deferral->why) : std::nullopt);
  return Execute<Status>(*connections_, "release", [&](pqxx::connection& c) -> Status {
    pqxx::nontransaction tx(c);
    auto r = tx.exec_prepared(sql::kRelease.name, std::string(task_id), std::string(worker_id),
                              delay_ms, NullableCStr(why));
    if (r.empty()) {
      return Error{"conflict", "task " + std::string(task_id) + " is not running under worker " +
                                   std::string(worker_id)};
    }
    return {};
  });
}

}  // namespace runner::queue
