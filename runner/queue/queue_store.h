#pragma once

// The durable queue: every read and state change of tasks, workers, nodes,
// events and logs. The PostgreSQL implementation (postgres_store.h) is the real
// one; unit tests of the pool and API use fakes of this interface.
//
// Every state change checks the expected state and, for a running task, that
// the caller still holds the lease (a rescuer never overwrites a task that
// just finished). Events are written in the same transaction as the state
// change they describe.
//
// Thread-safety: all methods may be called concurrently from any thread.
// Expected failures come back as Error values with docs/api.md codes
// (`not_found`, `conflict`, `validation_failed`, `unavailable`, `internal`).

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "runner/queue/task.h"

namespace runner::queue {

struct SubmitOutcome {
  Task task;
  bool created = true;  // false: the idempotency key matched an existing task
};

struct TaskFilter {
  std::optional<TaskState> state;
  std::optional<std::string> queue;
  std::optional<std::string> schedule;  // tasks created by this schedule
  std::optional<std::string> group;
  int limit = 50;                     // 1..1000
  std::optional<std::string> cursor;  // opaque, from TaskPage::next_cursor
};

struct TaskPage {
  std::vector<Task> tasks;  // newest first
  std::optional<std::string> next_cursor;
};

using StateCounts = std::map<TaskState, int64_t>;

struct ClaimRequest {
  std::string node_id;
  std::vector<std::string> worker_ids;  // idle workers; at most one task each
  std::chrono::milliseconds lease{30000};
  std::vector<std::string> queues;  // empty = all queues
  // Isolations ("docker", "auto", ...) this node cannot run now: tasks asking
  // for them stay queued for a node that can, or until this one can again.
  std::vector<std::string> skip_isolations;
};

// Why a running task goes back to the queue unstarted, and how long it waits:
// the node could not start it (Docker went away between claim and start).
struct Deferral {
  TaskError why;  // kept as the task's error and in its task.queued event
  std::chrono::milliseconds delay{0};
};

enum class WorkerState { kStarting, kIdle, kBusy, kStopping };
std::string_view ToString(WorkerState state);

struct WorkerBeat {
  std::string worker_id;
  WorkerState state = WorkerState::kIdle;
  std::optional<std::string> task_id;
};

// One statement per node: renews the leases of all tasks its workers hold and
// the heartbeats of its workers and of the node itself.
struct HeartbeatRequest {
  std::string node_id;
  std::chrono::milliseconds lease{30000};
  std::vector<WorkerBeat> workers;
  int target_workers = 0;
};

struct HeartbeatOutcome {
  std::vector<std::string> lost_task_ids;  // leases that could not be renewed: stop these
};

struct FinishReport {
  TaskState state = TaskState::kSucceeded;  // succeeded | failed | timed_out | cancelled
  std::optional<int> exit_code;
  std::optional<TaskError> error;
  isolation::Usage usage;
  std::string isolation_used;
  bool retryable = true;  // failed/timed_out may retry while attempts remain
};

enum class FinishOutcome {
  kFinished,   // final state written
  kRetrying,   // back to queued with backoff
  kLeaseLost,  // this worker no longer held the lease; nothing written
};

struct FinishAndNext {
  FinishOutcome outcome = FinishOutcome::kFinished;
  std::optional<Task> next;  // claimed for the same worker, running under its lease
};

enum class LogStream { kStdout, kStderr, kAll };

struct LogChunk {
  int64_t seq = 0;  // per task, increasing
  isolation::OutputStream stream = isolation::OutputStream::kStdout;
  std::string data;
};

struct LogPage {
  std::vector<LogChunk> chunks;
  int64_t last_seq = 0;
  bool truncated = false;  // the per-task cap was hit; later output was not stored
};

struct NodeInfo {
  std::string id;
  std::string host;
  int64_t pid = 0;
  std::string mode;  // docker | process | mixed
  int target = 0;
  TimePoint heartbeat_at{};
};

struct WorkerInfo {
  std::string id;
  std::string node_id;
  WorkerState state = WorkerState::kStarting;
  std::optional<std::string> task_id;
  TimePoint started_at{};
  TimePoint heartbeat_at{};
};

struct Event {
  int64_t id = 0;
  TimePoint at{};
  std::string kind;  // docs/api.md event names: task.queued, worker.started, pool.throttled, ...
  std::optional<std::string> task_id;
  std::optional<std::string> worker_id;
  std::string data_json = "{}";
};

struct NewEvent {
  std::string kind;
  std::optional<std::string> task_id;
  std::optional<std::string> worker_id;
  std::string data_json = "{}";
};

struct ReapPolicy {
  std::chrono::milliseconds node_dead_after{90000};  // node heartbeat older than this
  std::chrono::seconds finished_retention{7 * 24 * 3600};
  std::chrono::seconds event_retention{24 * 3600};
};

struct ReapReport {
  bool ran = false;  // false when another node holds the reaper lock
  int requeued = 0;
  int failed_lease_lost = 0;
  int dead_workers = 0;
  int dead_nodes = 0;
  int deleted_tasks = 0;
  int deleted_events = 0;
};

// The queue as clients see it: submit, read, list, cancel, logs.
class TaskStore {
 public:
  virtual ~TaskStore() = default;

  // Validates, inserts, notifies. Same idempotency key -> the existing task.
  virtual Result<SubmitOutcome> Submit(const NewTask& task) = 0;
  virtual Result<Task> Get(std::string_view id) = 0;
  virtual Result<TaskPage> List(const TaskFilter& filter) = 0;
  // Queued: cancelled at once. Running: flagged for its worker. Final: conflict.
  virtual Result<Task> Cancel(std::string_view id) = 0;
  // Per-state counts, cached for about a second (never count(*) per request).
  virtual Result<StateCounts> Counts() = 0;
  virtual Result<LogPage> Logs(std::string_view task_id, LogStream stream, int64_t after_seq,
                               std::size_t max_bytes) = 0;
};

// What a node's workers do with the tasks they run: claim, renew, report.
class LeaseStore {
 public:
  virtual ~LeaseStore() = default;

  // One statement, FOR UPDATE SKIP LOCKED: at most one task per given worker,
  // by priority desc, run_at, id; only tasks whose dependencies all succeeded.
  virtual Result<std::vector<Task>> Claim(const ClaimRequest& request) = 0;
  virtual Result<HeartbeatOutcome> Heartbeat(const HeartbeatRequest& request) = 0;
  // Which of these tasks have cancel_requested set.
  virtual Result<std::vector<std::string>> CancelRequested(std::span<const std::string> ids) = 0;
  // Appends output; stops storing past the per-task cap and marks it truncated.
  virtual Status AppendLogs(std::string_view task_id, std::span<const LogChunk> chunks) = 0;
  // One transaction, checks the lease: final state or retry with backoff.
  virtual Result<FinishOutcome> Finish(std::string_view task_id, std::string_view worker_id,
                                       const FinishReport& report) = 0;
  // Finish, then claim the next task for the same worker (worker_ids of
  // `next` is ignored): a busy worker goes from one task to the next without
  // waiting for the claimer. PostgresStore does both in one statement, one
  // round trip; this default makes two calls. The claim happens whatever the
  // outcome of the finish.
  virtual Result<FinishAndNext> FinishAndClaim(std::string_view task_id, std::string_view worker_id,
                                               const FinishReport& report,
                                               const ClaimRequest& next) {
    auto finished = Finish(task_id, worker_id, report);
    if (!finished.ok()) return finished.error();
    FinishAndNext out;
    out.outcome = *finished;
    ClaimRequest one = next;
    one.worker_ids = {std::string(worker_id)};
    auto claimed = Claim(one);
    if (claimed.ok() && !claimed->empty()) out.next = std::move(claimed->front());
    return out;
  }
  // How long until a task held back by its queue's rate limit (one of
  // request.queues) may start; nullopt when none is held back by one.
  virtual std::optional<std::chrono::milliseconds> NextRateOpening(const ClaimRequest& request) {
    (void)request;
    return std::nullopt;
  }
  // Back to the queue without using up an attempt (drain timeout, shutdown).
  virtual Status Release(std::string_view task_id, std::string_view worker_id) = 0;
  // Back to the queue without using up an attempt, to run again after
  // `deferral.delay`: the worker could not start it for a reason of the node's,
  // not the task's. A task with a cancel request ends cancelled instead.
  virtual Status Defer(std::string_view task_id, std::string_view worker_id,
                       const Deferral& deferral) = 0;
};

// Nodes and workers: who is alive.
class MembershipStore {
 public:
  virtual ~MembershipStore() = default;

  virtual Status RegisterNode(const NodeInfo& node) = 0;
  virtual Status DeregisterNode(std::string_view node_id) = 0;
  virtual Status RegisterWorker(const WorkerInfo& worker) = 0;
  virtual Status RemoveWorker(std::string_view worker_id) = 0;
  virtual Result<std::vector<WorkerInfo>> ListWorkers() = 0;  // all live nodes
  virtual Result<std::vector<NodeInfo>> ListNodes() = 0;      // live nodes
  // Nodes the database considers dead (for container reaping).
  virtual Result<std::vector<std::string>> DeadNodeIds(std::chrono::milliseconds dead_after) = 0;
};

// The events table: written by every node, read by the event streams.
class EventLog {
 public:
  virtual ~EventLog() = default;

  virtual Status Emit(const NewEvent& event) = 0;
  virtual Result<std::vector<Event>> EventsAfter(int64_t after_id, std::size_t limit) = 0;
};

// Recovery and health: the reaper's pass and a liveness check.
class RecoveryStore {
 public:
  virtual ~RecoveryStore() = default;

  // Guarded by an advisory lock: one node reaps at a time.
  virtual Result<ReapReport> Reap(const ReapPolicy& policy) = 0;
  virtual Status Ping() = 0;
};

// The whole store, every role (PostgresStore). A component takes the role it
// uses, so a test's fake implements that role and not twenty-five methods.
class QueueStore : public TaskStore,
                   public LeaseStore,
                   public MembershipStore,
                   public EventLog,
                   public RecoveryStore {
 public:
  ~QueueStore() override = default;
};

}  // namespace runner::queue
