#pragma once

// An in-memory QueueStore for the pool's unit tests: claims, heartbeats,
// finishes and releases behave like the real store's contract (lease holder
// checked, at most one task per worker), and every call is recorded so tests
// can assert what the pool asked for.
//
// Thread-safety: every method takes one mutex.

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "base/clock.h"
#include "runner/queue/queue_store.h"

namespace runner::testing {

class FakeQueueStore : public queue::QueueStore {
 public:
  using Steady = std::chrono::steady_clock;

  // `clock` dates deferrals (a deferred task is claimable again at its
  // Now() + delay); tests that drive the pool's clock by hand pass theirs.
  explicit FakeQueueStore(Clock& clock = SystemClock()) : clock_(clock) {}

  // Adds a queued task running `command`; returns its id.
  std::string AddTask(std::vector<std::string> command, double timeout = 0);
  void AddTasks(int n, const std::vector<std::string>& command);
  // What a claim of this task carries: opened secrets, or why they could not be.
  void SetClaimedSecrets(const std::string& id, std::map<std::string, std::string> secrets,
                         std::optional<queue::TaskError> error);
  // Marks a task cancel_requested (what Cancel does for a running task).
  void RequestCancel(const std::string& id);
  // Next Heartbeat reports these tasks' leases lost.
  void LoseLease(const std::string& id);
  void SetHeartbeatFails(bool fails);
  // While held, Finish waits (a worker stuck writing its outcome).
  void HoldFinish(bool hold);
  bool FinishWaiting() const;

  queue::Task TaskById(const std::string& id) const;
  int CountInState(queue::TaskState state) const;
  int FinishedCount() const;  // tasks in a final state
  int Releases() const;
  int Deferrals() const;
  std::vector<Steady::time_point> ClaimTimes() const;
  std::vector<queue::HeartbeatRequest> Heartbeats() const;
  std::vector<queue::NewEvent> EventsOfKind(const std::string& kind) const;
  std::set<std::string> RegisteredWorkers() const;
  bool NodeRegistered() const;
  int MaxClaimBatch() const;
  // How many times each task was claimed.
  std::map<std::string, int> ClaimCounts() const;
  // What DeadNodeIds answers; the `dead_after` it was last asked with.
  void SetDeadNodes(std::vector<std::string> ids);
  std::chrono::milliseconds LastDeadAfter() const;
  int Reaps() const;  // Reap calls

  // QueueStore
  Result<queue::SubmitOutcome> Submit(const queue::NewTask& task) override;
  Result<queue::Task> Get(std::string_view id) override;
  Result<queue::TaskPage> List(const queue::TaskFilter& filter) override;
  Result<queue::Task> Cancel(std::string_view id) override;
  Result<queue::StateCounts> Counts() override;
  Result<queue::LogPage> Logs(std::string_view task_id, queue::LogStream stream, int64_t after_seq,
                              std::size_t max_bytes) override;
  Result<std::vector<queue::Task>> Claim(const queue::ClaimRequest& request) override;
  Result<queue::HeartbeatOutcome> Heartbeat(const queue::HeartbeatRequest& request) override;
  Result<std::vector<std::string>> CancelRequested(std::span<const std::string> ids) override;
  Status AppendLogs(std::string_view task_id, std::span<const queue::LogChunk> chunks) override;
  Result<queue::FinishOutcome> Finish(std::string_view task_id, std::string_view worker_id,
                                      const queue::FinishReport& report) override;
  Status Release(std::string_view task_id, std::string_view worker_id) override;
  Status Defer(std::string_view task_id, std::string_view worker_id,
               const queue::Deferral& deferral) override;
  Status RegisterNode(const queue::NodeInfo& node) override;
  Status DeregisterNode(std::string_view node_id) override;
  Status RegisterWorker(const queue::WorkerInfo& worker) override;
  Status RemoveWorker(std::string_view worker_id) override;
  Result<std::vector<queue::WorkerInfo>> ListWorkers() override;
  Result<std::vector<queue::NodeInfo>> ListNodes() override;
  Result<std::vector<std::string>> DeadNodeIds(std::chrono::milliseconds dead_after) override;
  Status Emit(const queue::NewEvent& event) override;
  Result<std::vector<queue::Event>> EventsAfter(int64_t after_id, std::size_t limit) override;
  Result<queue::ReapReport> Reap(const queue::ReapPolicy& policy) override;
  Status Ping() override;

  std::string LogsOf(const std::string& task_id) const;

 private:
  Clock& clock_;
  // Back to queued with the attempt given back when `worker_id` holds the
  // task (Release and Defer); nullptr otherwise. The caller holds mu_.
  queue::Task* RequeueLocked(std::string_view task_id, std::string_view worker_id);

  mutable std::mutex mu_;
  std::map<std::string, queue::Task> tasks_;
  std::vector<std::string> order_;  // submission order
  std::set<std::string> lose_;
  bool heartbeat_fails_ = false;
  int releases_ = 0;
  int deferrals_ = 0;
  bool hold_finish_ = false;
  bool finish_waiting_ = false;
  std::condition_variable finish_cv_;
  std::map<std::string, Steady::time_point> deferred_until_;  // Defer()'s delay, by task
  int max_batch_ = 0;
  std::vector<Steady::time_point> claim_times_;
  std::vector<queue::HeartbeatRequest> heartbeats_;
  std::vector<queue::NewEvent> events_;
  std::set<std::string> workers_;
  bool node_registered_ = false;
  std::map<std::string, int> claim_counts_;
  std::map<std::string, std::string> logs_;
  std::vector<std::string> dead_nodes_;
  std::chrono::milliseconds last_dead_after_{-1};
  int reaps_ = 0;
};

}  // namespace runner::testing
