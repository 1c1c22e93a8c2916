#pragma once

// The QueueStore on PostgreSQL (libpqxx 6.4). Open() connects, applies the
// migrations (migrations.h) and returns a store that owns a bounded pool of
// connections: libpqxx connections are not thread-safe, so each call borrows
// one for its duration. Waiting for a free connection is bounded
// (acquire_timeout). A connection that breaks (database restarted, backend
// terminated) is dropped: that call returns `unavailable` and the next call
// opens a fresh one. Every statement runs under statement_timeout.
//
// Claims use one statement with FOR UPDATE SKIP LOCKED; every state change
// checks the expected state and lease holder; events are written in the same
// transaction; submit sends one pg_notify('runner_tasks', queue) per call
// (per batch for SubmitBatch); a running task being cancelled sends
// pg_notify('runner_cancel', id). See notify_listener.h for the wake-ups.
//
// Thread-safety: every method may be called concurrently from any thread.

#include <boost/json.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "isolation/isolator.h"
#include "runner/queue/migrations.h"
#include "runner/queue/queue_policy.h"
#include "runner/queue/queue_store.h"
#include "runner/secrets/secret_box.h"

namespace pqxx {
class connection_base;
}

namespace runner::queue {

class ConnectionPool;

struct StoreOptions {
  std::string conninfo;       // libpq key=value or postgresql:// URL
  int pool_size = 8;          // connections at most
  int64_t log_cap = 1 << 20;  // log bytes stored per task
  std::string default_image = "runner-task:latest";
  double default_timeout = 3600;  // seconds, for tasks that name none
  double default_backoff = 1;     // seconds, base of the retry backoff
  isolation::Limits default_limits;
  std::chrono::milliseconds acquire_timeout{5000};     // wait for a pooled connection
  std::chrono::milliseconds statement_timeout{15000};  // per statement, server side
  std::chrono::milliseconds counts_cache{1000};        // Counts() freshness
  bool migrate = true;                                 // apply migrations in Open()
  // Seals task secrets at submit and opens them at claim. Null: a submission
  // with secrets is refused. Nodes sharing a database need the same key.
  std::shared_ptr<const secrets::SecretKey> secret_key;
};

// A task as a record of the columns kInsertTasks takes (without "id"), the
// store's defaults applied; schedules keep it to insert their tasks.
boost::json::object TaskInsertRecord(const NewTask& task, const StoreOptions& options);

// Bytes kept of each stream's tail on the task row.
inline constexpr std::size_t kTailBytes = 4096;
// Retry backoff cap.
inline constexpr double kMaxRetryDelaySeconds = 3600;

class PostgresStore final : public QueueStore, public QueuePolicyStore {
 public:
  // Connects (one connection, to fail fast on a bad conninfo) and migrates.
  static Result<std::unique_ptr<PostgresStore>> Open(const StoreOptions& options);
  ~PostgresStore() override;
  PostgresStore(const PostgresStore&) = delete;
  PostgresStore& operator=(const PostgresStore&) = delete;

  Result<SubmitOutcome> Submit(const NewTask& task) override;
  // Validates all, then inserts all in one transaction with one notify per
  // queue. Idempotency keys behave as in Submit. All or nothing.
  Result<std::vector<SubmitOutcome>> SubmitBatch(std::span<const NewTask> tasks);
  Result<Task> Get(std::string_view id) override;
  Result<TaskPage> List(const TaskFilter& filter) override;
  Result<Task> Cancel(std::string_view id) override;
  Result<StateCounts> Counts() override;
  Result<LogPage> Logs(std::string_view task_id, LogStream stream, int64_t after_seq,
                       std::size_t max_bytes) override;

  Result<std::vector<Task>> Claim(const ClaimRequest& request) override;
  Result<HeartbeatOutcome> Heartbeat(const HeartbeatRequest& request) override;
  Result<std::vector<std::string>> CancelRequested(std::span<const std::string> ids) override;
  Status AppendLogs(std::string_view task_id, std::span<const LogChunk> chunks) override;
  Result<FinishOutcome> Finish(std::string_view task_id, std::string_view worker_id,
                               const FinishReport& report) override;
  Result<FinishAndNext> FinishAndClaim(std::string_view task_id, std::string_view worker_id,
                                       const FinishReport& report,
                                       const ClaimRequest& next) override;
  Status Release(std::string_view task_id, std::string_view worker_id) override;
  Status Defer(std::string_view task_id, std::string_view worker_id,
               const Deferral& deferral) override;

  Status RegisterNode(const NodeInfo& node) override;
  Status DeregisterNode(std::string_view node_id) override;
  Status RegisterWorker(const WorkerInfo& worker) override;
  Status RemoveWorker(std::string_view worker_id) override;
  Result<std::vector<WorkerInfo>> ListWorkers() override;
  Result<std::vector<NodeInfo>> ListNodes() override;
  Result<std::vector<std::string>> DeadNodeIds(std::chrono::milliseconds dead_after) override;

  Status Emit(const NewEvent& event) override;
  Result<std::vector<Event>> EventsAfter(int64_t after_id, std::size_t limit) override;

  Result<ReapReport> Reap(const ReapPolicy& policy) override;
  Status Ping() override;

  // Queue policies (queue_policy_store.cpp).
  Result<QueueInfo> SetQueuePolicy(std::string_view queue, const QueuePolicy& policy) override;
  Result<QueueInfo> GetQueue(std::string_view queue) override;
  Status DeleteQueuePolicy(std::string_view queue) override;
  Result<std::vector<QueueInfo>> ListQueues() override;
  std::optional<std::chrono::milliseconds> NextRateOpening(const ClaimRequest& request) override;

  // Runs f on a pooled connection with the store's error mapping.
  Status WithConnection(std::string_view op,
                        const std::function<Status(pqxx::connection_base&)>& f);

  const StoreOptions& options() const { return options_; }

 private:
  explicit PostgresStore(StoreOptions options);
  // Release (no deferral: at once, "released") and Defer share one statement.
  Status ReleaseTask(std::string_view task_id, std::string_view worker_id,
                     const std::optional<Deferral>& deferral);

  StoreOptions options_;
  std::unique_ptr<ConnectionPool> connections_;

  std::mutex counts_mu_;
  StateCounts counts_;                                 // guarded by counts_mu_
  std::chrono::steady_clock::time_point counts_at_{};  // guarded by counts_mu_
};

}  // namespace runner::queue
