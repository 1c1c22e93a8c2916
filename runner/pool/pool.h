#pragma once

// The worker pool of one node: N worker threads, each with a ULID and a state
// starting -> idle <-> busy -> stopping, registered in the queue's `workers`
// table. One claimer thread per node batch-claims up to the number of idle
// workers (woken by Wake() from NOTIFY and by workers going idle; polling at
// poll_interval, doubling while idle up to idle_backoff_max, as the
// fallback) and hands each task to its worker through a one-task slot, so
// there are never more tasks in flight than workers. One heartbeat thread
// renews every lease and worker heartbeat in one store call every lease/3
// (each beat carries the worker's task id); tasks whose lease was lost are
// stopped. A cancel watcher stops tasks flagged cancel_requested within a
// second. A Reaper (reaper.h) runs QueueStore::Reap and the orphan-container hook.
//
// Stop is graceful by default: claim nothing new, let in-flight tasks finish
// until the drain timeout, then stop them and Release them to the queue; force
// stops at once and releases. Start after Stop starts a fresh set of workers.
// A worker whose isolator throws is replaced (worker.failed); its task is
// failed, never left running.
//
// One class, its parts in their own files: pool.cpp (lifecycle, scale,
// status), pool_workers.cpp (the worker threads, running and reporting a
// task), claimer.cpp (batch claims, FinishAndClaim), lease_keeper.cpp
// (heartbeat, cancel watcher); reaper.h is a class of its own.
//
// Thread-safety: every public method may be called from any thread. Start,
// Stop and Scale are serialised internally; Stop(force) interrupts a graceful
// Stop in progress. The destructor force-stops.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "base/result.h"
#include "isolation/isolator.h"
#include "runner/metrics/registry.h"
#include "runner/node/node_control.h"
#include "runner/pool/reaper.h"
#include "runner/pool/task_log_sink.h"
#include "runner/pool/task_outcome.h"
#include "runner/queue/queue_store.h"

namespace runner::pool {

// Picks the isolator for a task's requested mode (IsolationSelector::Pick in
// production). An error (isolation_unavailable) sends the task back to the
// queue without spending its attempt (Pool::RunTask).
using IsolatorPicker = std::function<Result<isolation::Isolator*>(isolation::IsolationMode)>;

struct PoolOptions {
  std::string node_id;  // required (a ULID)
  // Node registration (nodes table).
  std::string host;
  int64_t pid = 0;
  std::string mode = "process";  // docker | process | mixed

  int workers = 0;  // 0: CPU count
  int max_workers = 256;
  std::vector<std::string> queues;  // empty: all

  std::chrono::milliseconds poll_interval{1000};
  // A worker finishing a task claims its next one in the same statement
  // (FinishAndClaim) while the pool claims; off: every claim goes through the
  // claimer's batch.
  bool claim_on_finish = true;
  std::chrono::milliseconds idle_backoff_max{30000};
  std::chrono::milliseconds lease{30000};
  std::chrono::milliseconds cancel_check_interval{500};
  std::chrono::milliseconds reap_interval{5000};
  std::chrono::milliseconds drain_timeout{60000};
  // How long Stop waits for stopped tasks' sandboxes to go away.
  std::chrono::milliseconds stop_grace{30000};
  // How long a task this node could not start (Docker down) waits before any
  // node may claim it again: long enough for this node to skip it once it has
  // noticed the outage, short enough that a node with Docker barely notices.
  std::chrono::milliseconds defer_delay{2000};

  // Task defaults (the store fills most; these cover what it leaves empty).
  std::string default_image = "runner-task:latest";
  isolation::Limits default_limits;
  std::chrono::milliseconds default_timeout{0};

  LogSinkOptions logs;
  queue::ReapPolicy reap_policy;
  bool reap = true;
};

// One worker as the pool sees it right now.
struct WorkerSnapshot {
  std::string id;
  queue::WorkerState state = queue::WorkerState::kStarting;
  std::optional<std::string> task_id;
  queue::TimePoint started_at{};
};

class Pool {
 public:
  // `clock` paces the claim loop (its polls, back-off and rate-limit
  // wake-ups) and the reaper; tests pass a ManualClock.
  Pool(queue::QueueStore& store, IsolatorPicker picker, PoolOptions options,
       metrics::Registry& metrics, Clock& clock = SystemClock());
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Registers the node, starts the workers and the background threads.
  // Returns an error when the node cannot be registered; a second Start while
  // running is a no-op.
  Status Start();
  // Blocking. Graceful: drain until drain_timeout, then stop and release the
  // stragglers. Force: stop and release at once. Deregisters workers and the
  // node. Idempotent.
  void Stop(bool force, std::optional<std::chrono::milliseconds> drain_timeout = std::nullopt);
  // validation_failed outside [1, max_workers]. Up: starts workers at once.
  // Down: idle workers stop first, busy ones after their task.
  Status Scale(int count);

  // New tasks may be queued (NOTIFY runner_tasks).
  void Wake();
  // A cancel was requested somewhere (NOTIFY runner_cancel).
  void WakeCancel();
  // Isolations ("docker", "auto") this node cannot run now (Docker is down):
  // claims skip tasks asking for them, which wait in the queue for a node
  // that can run them. Fewer than before wakes the claimer.
  void SetUnavailableIsolations(std::vector<std::string> isolations);
  // Backpressure from the pressure monitor: while active, nothing is claimed.
  void SetBackpressure(bool active, const std::string& reason);
  void SetOrphanReaper(OrphanReaper reaper);

  PoolStatus GetStatus() const;
  std::vector<WorkerSnapshot> Workers() const;
  bool Running() const;
  bool Backpressure() const;
  std::optional<std::string> BackpressureReason() const;
  const std::string& node_id() const { return options_.node_id; }
  int max_workers() const { return options_.max_workers; }

 private:
  struct Worker {
    std::string id;
    queue::WorkerState state = queue::WorkerState::kStarting;
    queue::TimePoint started_at{};
    std::optional<queue::Task> slot;     // the hand-off: at most one task
    std::optional<std::string> task_id;  // handed-off or running
    bool reporting = false;              // task_id ended; its outcome is being written
    std::string isolation;               // what task_id runs in ("docker", "process"), once picked
    bool claiming = false;               // offered to an in-flight Claim
    bool retire = false;                 // scale down: stop after the current task
    bool exited = false;                 // the thread is about to end
    bool failed = false;                 // it ended with an exception
    std::stop_source task_stop;          // fires the running task's stop_token
    std::atomic<StopCause> cause{StopCause::kNone};
    std::condition_variable_any cv;  // slot filled, retire, stop
    std::jthread thread;
  };

  struct Metrics;

  void StartWorkerLocked();
  void WorkerLoop(Worker* w, std::stop_token stop);
  // Runs the task and reports it. Returns the worker's next task when the
  // report also claimed one (FinishAndClaim), already running under its lease.
  std::optional<queue::Task> RunTask(Worker* w, queue::Task task);
  std::optional<queue::Task> ReportOutcome(Worker* w, const queue::Task& task,
                                           const TaskOutcome& outcome,
                                           std::chrono::steady_clock::time_point started,
                                           bool may_claim_next = false);
  // Whether a worker finishing a task may claim its next one itself: the pool
  // claims (running, not draining or throttled) and the worker stays.
  bool MayClaimNextLocked(const Worker& w) const;
  // A claim of one task per given worker, as this node claims now (its
  // queues, lease, and the isolations it cannot run). Needs mu_.
  queue::ClaimRequest ClaimRequestLocked(std::vector<std::string> worker_ids) const;
  // FinishAndClaim for a worker that may claim its next task and finds a free
  // slot (finish_and_claim_limit_): the finish's result, the claimed task in
  // `next`. nullopt when it may not: the caller finishes alone.
  std::optional<Result<queue::FinishOutcome>> FinishAndClaimNext(const Worker& w,
                                                                 const queue::Task& task,
                                                                 const queue::FinishReport& report,
                                                                 std::optional<queue::Task>& next);
  isolation::TaskSpec BuildSpec(const Worker& w, const queue::Task& task) const;

  void ClaimLoop(std::stop_token stop);
  void HeartbeatLoop(std::stop_token stop);
  void CancelLoop(std::stop_token stop);
  void LogFlushLoop(std::stop_token stop);

  void HeartbeatOnce();
  // True when a worker of this pool was running the task (not one whose task
  // has ended and whose outcome it is writing).
  bool StopTask(const std::string& task_id, StopCause cause);
  void StopAllRunning(StopCause cause);
  // Joins workers whose thread ended; replaces failed ones while running.
  void CollectExitedWorkers();
  void UpdateWorkerGaugesLocked();
  void SetTargetLocked(int target);
  void EmitEvent(const std::string& kind, const std::optional<std::string>& task_id,
                 const std::string& data_json,
                 const std::optional<std::string>& worker_id = std::nullopt);
  int BusyCountLocked() const;
  void RegisterSink(const std::shared_ptr<TaskLogSink>& sink);
  void UnregisterSink(const std::shared_ptr<TaskLogSink>& sink);

  queue::QueueStore& store_;
  IsolatorPicker picker_;
  const PoolOptions options_;
  std::unique_ptr<Metrics> metrics_;

  std::mutex lifecycle_mu_;  // serialises Start/Stop
  std::atomic<bool> force_stop_{false};

  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<Worker>> workers_;  // guarded by mu_
  int target_ = 0;                                          // guarded by mu_
  bool running_ = false;                                    // guarded by mu_
  bool accepting_ = false;                                  // claim new work; guarded by mu_
  bool draining_ = false;                                   // guarded by mu_
  bool throttled_ = false;                                  // guarded by mu_
  std::vector<std::string> unavailable_isolations_;         // guarded by mu_
  std::atomic<int> finish_and_claims_{0};                   // FinishAndClaim statements in flight
  int finish_and_claim_limit_ = 2;                          // of them at once: one per core
  std::string throttle_reason_;                             // guarded by mu_
  bool notify_wake_ = false;                                // guarded by mu_
  bool idle_wake_ = false;                                  // guarded by mu_
  bool backlog_possible_ = true;           // last claim filled every slot; guarded by mu_
  bool cancel_wake_ = false;               // guarded by mu_
  bool exit_pending_ = false;              // a worker thread ended; guarded by mu_
  std::condition_variable_any claim_cv_;   // with mu_
  std::condition_variable_any cancel_cv_;  // with mu_
  std::condition_variable_any drain_cv_;   // with mu_: a task ended, or force

  std::mutex sinks_mu_;
  std::set<std::shared_ptr<TaskLogSink>> sinks_;  // guarded by sinks_mu_

  Clock& clock_;
  Reaper reaper_;  // its own thread; declared after what it uses
  std::jthread claimer_;
  std::jthread heartbeat_;
  std::jthread canceller_;
  std::jthread log_flusher_;
};

}  // namespace runner::pool
