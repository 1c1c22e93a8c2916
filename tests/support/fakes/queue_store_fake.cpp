#include "tests/support/fakes/queue_store_fake.h"

#include <algorithm>

#include "base/ulid.h"

namespace runner::testing {

std::string FakeQueueStore::AddTask(std::vector<std::string> command, double timeout) {
  std::lock_guard lock(mu_);
  queue::Task t;
  t.id = NewUlid();
  t.command = std::move(command);
  t.timeout = timeout;
  t.max_attempts = 1;
  t.created_at = queue::Clock::now();
  tasks_[t.id] = t;
  order_.push_back(t.id);
  return t.id;
}

void FakeQueueStore::AddTasks(int n, const std::vector<std::string>& command) {
  for (int i = 0; i < n; ++i) AddTask(command);
}

void FakeQueueStore::SetClaimedSecrets(const std::string& id,
                                       std::map<std::string, std::string> secrets,
                                       std::optional<queue::TaskError> error) {
  std::lock_guard lock(mu_);
  tasks_[id].secrets = std::move(secrets);
  tasks_[id].secrets_error = std::move(error);
}

void FakeQueueStore::RequestCancel(const std::string& id) {
  std::lock_guard lock(mu_);
  tasks_[id].cancel_requested = true;
}

void FakeQueueStore::LoseLease(const std::string& id) {
  std::lock_guard lock(mu_);
  lose_.insert(id);
}

void FakeQueueStore::SetHeartbeatFails(bool fails) {
  std::lock_guard lock(mu_);
  heartbeat_fails_ = fails;
}

queue::Task FakeQueueStore::TaskById(const std::string& id) const {
  std::lock_guard lock(mu_);
  return tasks_.at(id);
}

int FakeQueueStore::CountInState(queue::TaskState state) const {
  std::lock_guard lock(mu_);
  int n = 0;
  for (const auto& [id, t] : tasks_) n += t.state == state ? 1 : 0;
  return n;
}

int FakeQueueStore::FinishedCount() const {
  std::lock_guard lock(mu_);
  int n = 0;
  for (const auto& [id, t] : tasks_) n += queue::IsFinal(t.state) ? 1 : 0;
  return n;
}

int FakeQueueStore::Deferrals() const {
  std::lock_guard lock(mu_);
  return deferrals_;
}

int FakeQueueStore::Releases() const {
  std::lock_guard lock(mu_);
  return releases_;
}

std::vector<FakeQueueStore::Steady::time_point> FakeQueueStore::ClaimTimes() const {
  std::lock_guard lock(mu_);
  return claim_times_;
}

std::vector<queue::HeartbeatRequest> FakeQueueStore::Heartbeats() const {
  std::lock_guard lock(mu_);
  return heartbeats_;
}

std::vector<queue::NewEvent> FakeQueueStore::EventsOfKind(const std::string& kind) const {
  std::lock_guard lock(mu_);
  std::vector<queue::NewEvent> out;
  for (const auto& e : events_) {
    if (e.kind == kind) out.push_back(e);
  }
  return out;
}

std::set<std::string> FakeQueueStore::RegisteredWorkers() const {
  std::lock_guard lock(mu_);
  return workers_;
}

bool FakeQueueStore::NodeRegistered() const {
  std::lock_guard lock(mu_);
  return node_registered_;
}

int FakeQueueStore::MaxClaimBatch() const {
  std::lock_guard lock(mu_);
  return max_batch_;
}

std::map<std::string, int> FakeQueueStore::ClaimCounts() const {
  std::lock_guard lock(mu_);
  return claim_counts_;
}

std::string FakeQueueStore::LogsOf(const std::string& task_id) const {
  std::lock_guard lock(mu_);
  auto it = logs_.find(task_id);
  return it == logs_.end() ? std::string() : it->second;
}

Result<queue::SubmitOutcome> FakeQueueStore::Submit(const queue::NewTask& task) {
  std::string id = AddTask(task.command, task.timeout.value_or(0));
  return queue::SubmitOutcome{TaskById(id), true};
}

Result<queue::Task> FakeQueueStore::Get(std::string_view id) {
  std::lock_guard lock(mu_);
  auto it = tasks_.find(std::string(id));
  if (it == tasks_.end()) return MakeError("not_found", "no such task");
  return it->second;
}

Result<queue::TaskPage> FakeQueueStore::List(const queue::TaskFilter&) { return queue::TaskPage{}; }

Result<queue::Task> FakeQueueStore::Cancel(std::string_view id) {
  std::lock_guard lock(mu_);
  auto& t = tasks_.at(std::string(id));
  t.cancel_requested = true;
  return t;
}

Result<queue::StateCounts> FakeQueueStore::Counts() { return queue::StateCounts{}; }

Result<queue::LogPage> FakeQueueStore::Logs(std::string_view, queue::LogStream, int64_t,
                                            std::size_t) {
  return queue::LogPage{};
}

Result<std::vector<queue::Task>> FakeQueueStore::Claim(const queue::ClaimRequest& request) {
  std::lock_guard lock(mu_);
  claim_times_.push_back(Steady::now());
  max_batch_ = std::max(max_batch_, static_cast<int>(request.worker_ids.size()));
  std::vector<queue::Task> out;
  std::size_t next = 0;
  for (const auto& id : order_) {
    if (next >= request.worker_ids.size()) break;
    auto& t = tasks_[id];
    if (t.state != queue::TaskState::kQueued) continue;
    if (auto d = deferred_until_.find(id); d != deferred_until_.end() && clock_.Now() < d->second) {
      continue;
    }
    if (std::find(request.skip_isolations.begin(), request.skip_isolations.end(),
                  isolation::ToString(t.isolation)) != request.skip_isolations.end()) {
      continue;
    }
    t.state = queue::TaskState::kRunning;
    t.attempt += 1;
    t.worker_id = request.worker_ids[next++];
    t.node_id = request.node_id;
    ++claim_counts_[id];
    out.push_back(t);
  }
  return out;
}

Result<queue::HeartbeatOutcome> FakeQueueStore::Heartbeat(const queue::HeartbeatRequest& request) {
  std::lock_guard lock(mu_);
  heartbeats_.push_back(request);
  if (heartbeat_fails_) return MakeError("unavailable", "database down (fake)");
  queue::HeartbeatOutcome out;
  for (const auto& b : request.workers) {
    if (b.task_id && lose_.count(*b.task_id)) out.lost_task_ids.push_back(*b.task_id);
  }
  return out;
}

Result<std::vector<std::string>> FakeQueueStore::CancelRequested(std::span<const std::string> ids) {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  for (const auto& id : ids) {
    auto it = tasks_.find(id);
    if (it != tasks_.end() && it->second.cancel_requested) out.push_back(id);
  }
  return out;
}

Status FakeQueueStore::AppendLogs(std::string_view task_id,
                                  std::span<const queue::LogChunk> chunks) {
  std::lock_guard lock(mu_);
  for (const auto& c : chunks) logs_[std::string(task_id)] += c.data;
  return {};
}

void FakeQueueStore::HoldFinish(bool hold) {
  std::lock_guard lock(mu_);
  hold_finish_ = hold;
  finish_cv_.notify_all();
}

bool FakeQueueStore::FinishWaiting() const {
  std::lock_guard lock(mu_);
  return finish_waiting_;
}

Result<queue::FinishOutcome> FakeQueueStore::Finish(std::string_view task_id,
                                                    std::string_view worker_id,
                                                    const queue::FinishReport& report) {
  std::unique_lock lock(mu_);
  finish_waiting_ = hold_finish_;
  finish_cv_.wait(lock, [&] { return !hold_finish_; });
  finish_waiting_ = false;
  auto& t = tasks_.at(std::string(task_id));
  if (t.state != queue::TaskState::kRunning || t.worker_id != std::string(worker_id)) {
    return queue::FinishOutcome::kLeaseLost;
  }
  t.state = report.state;
  t.exit_code = report.exit_code;
  t.error = report.error;
  t.usage = report.usage;
  t.isolation_used = report.isolation_used;
  return queue::FinishOutcome::kFinished;
}

queue::Task* FakeQueueStore::RequeueLocked(std::string_view task_id, std::string_view worker_id) {
  auto& t = tasks_.at(std::string(task_id));
  if (t.state != queue::TaskState::kRunning || t.worker_id != std::string(worker_id)) {
    return nullptr;
  }
  t.state = queue::TaskState::kQueued;
  t.attempt -= 1;
  t.worker_id.reset();
  return &t;
}

Status FakeQueueStore::Release(std::string_view task_id, std::string_view worker_id) {
  std::lock_guard lock(mu_);
  if (RequeueLocked(task_id, worker_id) == nullptr) return MakeError("conflict", "not held");
  ++releases_;
  return {};
}

Status FakeQueueStore::Defer(std::string_view task_id, std::string_view worker_id,
                             const queue::Deferral& deferral) {
  std::lock_guard lock(mu_);
  queue::Task* t = RequeueLocked(task_id, worker_id);
  if (t == nullptr) return MakeError("conflict", "not held");
  t->error = deferral.why;
  deferred_until_[t->id] = clock_.Now() + deferral.delay;
  ++deferrals_;
  return {};
}

Status FakeQueueStore::RegisterNode(const queue::NodeInfo&) {
  std::lock_guard lock(mu_);
  node_registered_ = true;
  return {};
}

Status FakeQueueStore::DeregisterNode(std::string_view) {
  std::lock_guard lock(mu_);
  node_registered_ = false;
  return {};
}

Status FakeQueueStore::RegisterWorker(const queue::WorkerInfo& worker) {
  std::lock_guard lock(mu_);
  workers_.insert(worker.id);
  return {};
}

Status FakeQueueStore::RemoveWorker(std::string_view worker_id) {
  std::lock_guard lock(mu_);
  workers_.erase(std::string(worker_id));
  return {};
}

Result<std::vector<queue::WorkerInfo>> FakeQueueStore::ListWorkers() {
  return std::vector<queue::WorkerInfo>{};
}

Result<std::vector<queue::NodeInfo>> FakeQueueStore::ListNodes() {
  return std::vector<queue::NodeInfo>{};
}

Result<std::vector<std::string>> FakeQueueStore::DeadNodeIds(std::chrono::milliseconds dead_after) {
  std::lock_guard lock(mu_);
  last_dead_after_ = dead_after;
  return dead_nodes_;
}

void FakeQueueStore::SetDeadNodes(std::vector<std::string> ids) {
  std::lock_guard lock(mu_);
  dead_nodes_ = std::move(ids);
}

std::chrono::milliseconds FakeQueueStore::LastDeadAfter() const {
  std::lock_guard lock(mu_);
  return last_dead_after_;
}

int FakeQueueStore::Reaps() const {
  std::lock_guard lock(mu_);
  return reaps_;
}

Status FakeQueueStore::Emit(const queue::NewEvent& event) {
  std::lock_guard lock(mu_);
  events_.push_back(event);
  return {};
}

Result<std::vector<queue::Event>> FakeQueueStore::EventsAfter(int64_t, std::size_t) {
  return std::vector<queue::Event>{};
}

Result<queue::ReapReport> FakeQueueStore::Reap(const queue::ReapPolicy&) {
  std::lock_guard lock(mu_);
  ++reaps_;
  return queue::ReapReport{};
}

Status FakeQueueStore::Ping() { return {}; }

}  // namespace runner::testing
