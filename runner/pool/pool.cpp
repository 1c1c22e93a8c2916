#include "runner/pool/pool.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/json.hpp>
#include <utility>

#include "base/ulid.h"
#include "runner/pool/idle_backoff.h"
#include "runner/pool/pool_internal.h"

namespace runner::pool {

using internal::Seconds;
using internal::SleepFor;
using internal::SteadyClock;
using std::chrono::milliseconds;

Pool::Pool(queue::QueueStore& store, IsolatorPicker picker, PoolOptions options,
           metrics::Registry& metrics, Clock& clock)
    : store_(store),
      picker_(std::move(picker)),
      options_(std::move(options)),
      metrics_(std::make_unique<Metrics>(metrics)),
      clock_(clock),
      reaper_(store, store,
              ReaperOptions{.node_id = options_.node_id,
                            .lease = options_.lease,
                            .interval = options_.reap_interval,
                            .policy = options_.reap_policy,
                            .reap = options_.reap},
              clock) {
  // spdlog's registry is a lazily built static inside the (uninstrumented)
  // shared library: build it on this thread before any pool thread logs.
  (void)spdlog::default_logger_raw();
  int initial = options_.workers;
  if (initial <= 0) initial = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  target_ = std::clamp(initial, 1, std::max(1, options_.max_workers));
  finish_and_claim_limit_ = std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
  metrics_->target.Set(target_);
  // Create the finished counters up front so dashboards see zeros.
  for (const char* s :
       {"succeeded", "failed", "cancelled", "timed_out", "retrying", "released", "lease_lost"}) {
    metrics_->Finished(s);
  }
}

Pool::~Pool() { Stop(true); }

Status Pool::Start() {
  std::lock_guard life(lifecycle_mu_);
  int target = 0;
  {
    std::lock_guard lock(mu_);
    if (running_) return {};
    target = target_;
  }
  force_stop_ = false;
  queue::NodeInfo node;
  node.id = options_.node_id;
  node.host = options_.host;
  node.pid = options_.pid;
  node.mode = options_.mode;
  node.target = target;
  node.heartbeat_at = queue::Clock::now();
  Status reg = store_.RegisterNode(node);
  if (!reg.ok()) {
    spdlog::error("pool start failed node_id={} error={}", options_.node_id,
                  ErrorText(reg.error()));
    return reg;
  }
  // Before the first claim: these are all leftovers now, but a moment later
  // they would include the containers of the tasks this start runs.
  reaper_.ReapOwnLeftovers();
  {
    std::lock_guard lock(mu_);
    running_ = true;
    accepting_ = true;
    draining_ = false;
    notify_wake_ = true;
    backlog_possible_ = true;
    for (int i = 0; i < target_; ++i) StartWorkerLocked();
    UpdateWorkerGaugesLocked();
  }
  claimer_ = std::jthread([this](std::stop_token st) { ClaimLoop(st); });
  heartbeat_ = std::jthread([this](std::stop_token st) { HeartbeatLoop(st); });
  canceller_ = std::jthread([this](std::stop_token st) { CancelLoop(st); });
  reaper_.Start();
  log_flusher_ = std::jthread([this](std::stop_token st) { LogFlushLoop(st); });
  spdlog::info("pool started node_id={} workers={} max={} mode={}", options_.node_id, target,
               options_.max_workers, options_.mode);
  return {};
}

void Pool::Stop(bool force, std::optional<std::chrono::milliseconds> drain_timeout) {
  if (force) {
    // Interrupts a graceful Stop that is waiting for its drain.
    std::lock_guard lock(mu_);
    force_stop_ = true;
    drain_cv_.notify_all();
  }
  std::lock_guard life(lifecycle_mu_);
  {
    std::lock_guard lock(mu_);
    if (!running_) return;
    accepting_ = false;
    draining_ = true;
  }
  const auto drain = drain_timeout.value_or(options_.drain_timeout);
  spdlog::info("pool stopping node_id={} force={} drain_timeout_ms={}", options_.node_id,
               force_stop_.load(), drain.count());
  claim_cv_.notify_all();
  claimer_.request_stop();
  if (claimer_.joinable()) claimer_.join();

  // Graceful: in-flight tasks (running or handed off) finish until the drain
  // deadline.
  {
    std::unique_lock lock(mu_);
    if (!force_stop_) {
      drain_cv_.wait_until(lock, SteadyClock::now() + drain,
                           [&] { return BusyCountLocked() == 0 || force_stop_.load(); });
    }
  }

  // Stragglers: tasks still in a slot go straight back to the queue; running
  // ones are stopped and released by their worker.
  std::vector<std::pair<std::string, std::string>> unstarted;  // task id, worker id
  std::vector<std::stop_source> to_stop;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, w] : workers_) {
      if (w->slot) {
        unstarted.emplace_back(w->slot->id, w->id);
        w->slot.reset();
        w->task_id.reset();
        w->state = queue::WorkerState::kIdle;
      } else if (w->task_id) {
        StopCause expected = StopCause::kNone;
        w->cause.compare_exchange_strong(expected, StopCause::kShutdown);
        to_stop.push_back(w->task_stop);
      }
    }
  }
  if (!to_stop.empty() || !unstarted.empty()) {
    spdlog::warn("pool stopping tasks node_id={} running={} unstarted={}", options_.node_id,
                 to_stop.size(), unstarted.size());
  }
  for (auto& s : to_stop) s.request_stop();
  for (auto& [task_id, worker_id] : unstarted) {
    Status st = store_.Release(task_id, worker_id);
    if (!st.ok()) {
      spdlog::warn("release failed task_id={} worker_id={} error={}", task_id, worker_id,
                   ErrorText(st.error()));
    }
    metrics_->Finished("released").Inc();
  }

  // Stop every worker thread; a worker with a stopped task releases it first.
  {
    std::lock_guard lock(mu_);
    for (auto& [id, w] : workers_) w->thread.request_stop();
  }
  {
    std::unique_lock lock(mu_);
    bool all_exited = drain_cv_.wait_until(lock, SteadyClock::now() + options_.stop_grace, [&] {
      return std::all_of(workers_.begin(), workers_.end(),
                         [](const auto& kv) { return kv.second->exited; });
    });
    if (!all_exited) {
      spdlog::error(
          "pool stop: workers still running after stop_grace_ms={}; waiting for their "
          "isolators to return node_id={}",
          options_.stop_grace.count(), options_.node_id);
    }
  }
  std::map<std::string, std::unique_ptr<Worker>> workers;
  {
    std::lock_guard lock(mu_);
    workers.swap(workers_);
  }
  for (auto& [id, w] : workers) {
    if (w->thread.joinable()) w->thread.join();
  }
  workers.clear();

  for (std::jthread* t : {&heartbeat_, &canceller_, &log_flusher_}) {
    t->request_stop();
  }
  {
    std::lock_guard lock(mu_);
    cancel_cv_.notify_all();
  }
  for (std::jthread* t : {&heartbeat_, &canceller_, &log_flusher_}) {
    if (t->joinable()) t->join();
  }
  reaper_.Stop();
  Status dereg = store_.DeregisterNode(options_.node_id);
  if (!dereg.ok()) {
    spdlog::warn("deregister node failed node_id={} error={}", options_.node_id,
                 ErrorText(dereg.error()));
  }
  {
    std::lock_guard lock(mu_);
    running_ = false;
    draining_ = false;
    UpdateWorkerGaugesLocked();
  }
  spdlog::info("pool stopped node_id={}", options_.node_id);
}

Status Pool::Scale(int count) {
  if (count < 1 || count > options_.max_workers) {
    return MakeError("validation_failed", "worker count must be between 1 and " +
                                              std::to_string(options_.max_workers) + ", got " +
                                              std::to_string(count));
  }
  int from = 0;
  {
    std::lock_guard lock(mu_);
    from = target_;
    target_ = count;
    metrics_->target.Set(count);
    if (running_ && !draining_) {
      std::vector<Worker*> alive;
      for (auto& [id, w] : workers_) {
        if (!w->retire && !w->exited && w->state != queue::WorkerState::kStopping) {
          alive.push_back(w.get());
        }
      }
      int n = static_cast<int>(alive.size());
      for (int i = n; i < count; ++i) StartWorkerLocked();
      if (n > count) {
        // Idle first (not in the middle of a claim), then idle being offered
        // work, then busy ones, which finish their task first.
        auto rank = [](const Worker* w) {
          if (w->state == queue::WorkerState::kStarting) return 1;
          if (w->task_id || w->state == queue::WorkerState::kBusy) return 3;
          return w->claiming ? 2 : 0;
        };
        std::stable_sort(alive.begin(), alive.end(),
                         [&](const Worker* a, const Worker* b) { return rank(a) < rank(b); });
        for (int i = 0; i < n - count; ++i) {
          alive[static_cast<std::size_t>(i)]->retire = true;
          alive[static_cast<std::size_t>(i)]->cv.notify_all();
        }
      }
      UpdateWorkerGaugesLocked();
    }
  }
  if (from != count) {
    spdlog::info("pool scaled node_id={} from={} to={}", options_.node_id, from, count);
    EmitEvent("pool.scaled", std::nullopt,
              boost::json::serialize(boost::json::object{
                  {"node_id", options_.node_id}, {"from", from}, {"to", count}}));
  }
  return {};
}

void Pool::Wake() {
  std::lock_guard lock(mu_);
  notify_wake_ = true;
  claim_cv_.notify_all();
}

void Pool::SetUnavailableIsolations(std::vector<std::string> isolations) {
  std::lock_guard lock(mu_);
  const bool fewer = isolations.size() < unavailable_isolations_.size();
  unavailable_isolations_ = std::move(isolations);
  if (fewer) {  // tasks it skipped may run now
    notify_wake_ = true;
    claim_cv_.notify_all();
  }
}

void Pool::WakeCancel() {
  std::lock_guard lock(mu_);
  cancel_wake_ = true;
  cancel_cv_.notify_all();
}

void Pool::SetBackpressure(bool active, const std::string& reason) {
  bool changed = false;
  {
    std::lock_guard lock(mu_);
    changed = throttled_ != active;
    throttled_ = active;
    throttle_reason_ = active ? reason : std::string();
    if (changed && !active) {
      notify_wake_ = true;  // there may be a backlog waiting for us
      claim_cv_.notify_all();
    }
  }
  if (!changed) return;
  metrics_->backpressure.Set(active ? 1 : 0);
  if (active) {
    spdlog::warn("pool throttled node_id={} reason=\"{}\"", options_.node_id, reason);
    EmitEvent("pool.throttled", std::nullopt,
              boost::json::serialize(
                  boost::json::object{{"node_id", options_.node_id}, {"reason", reason}}));
  } else {
    spdlog::info("pool resumed node_id={}", options_.node_id);
    EmitEvent("pool.resumed", std::nullopt,
              boost::json::serialize(boost::json::object{{"node_id", options_.node_id}}));
  }
}

void Pool::SetOrphanReaper(OrphanReaper reaper) { reaper_.SetOrphanReaper(std::move(reaper)); }

PoolStatus Pool::GetStatus() const {
  std::lock_guard lock(mu_);
  PoolStatus s;
  s.state = !running_    ? PoolState::kStopped
            : draining_  ? PoolState::kDraining
            : throttled_ ? PoolState::kThrottled
                         : PoolState::kRunning;
  s.target = target_;
  s.max = options_.max_workers;
  for (const auto& [id, w] : workers_) {
    if (w->exited) continue;
    ++s.active;
    switch (w->state) {
      case queue::WorkerState::kStarting:
        ++s.starting;
        break;
      case queue::WorkerState::kIdle:
        ++s.idle;
        break;
      case queue::WorkerState::kBusy:
        ++s.busy;
        if (w->isolation == "docker") ++s.running_docker;
        if (w->isolation == "process") ++s.running_process;
        break;
      case queue::WorkerState::kStopping:
        ++s.stopping;
        break;
    }
  }
  return s;
}

std::vector<WorkerSnapshot> Pool::Workers() const {
  std::lock_guard lock(mu_);
  std::vector<WorkerSnapshot> out;
  for (const auto& [id, w] : workers_) {
    if (w->exited) continue;
    out.push_back(WorkerSnapshot{w->id, w->state, w->task_id, w->started_at});
  }
  return out;
}

bool Pool::Running() const {
  std::lock_guard lock(mu_);
  return running_ && !draining_;
}

bool Pool::Backpressure() const {
  std::lock_guard lock(mu_);
  return throttled_;
}

std::optional<std::string> Pool::BackpressureReason() const {
  std::lock_guard lock(mu_);
  if (!throttled_) return std::nullopt;
  return throttle_reason_;
}

void Pool::LogFlushLoop(std::stop_token stop) {
  const auto interval = std::max(milliseconds(10), options_.logs.flush_interval / 2);
  while (SleepFor(stop, interval)) {
    std::vector<std::shared_ptr<TaskLogSink>> sinks;
    {
      std::lock_guard lock(sinks_mu_);
      sinks.assign(sinks_.begin(), sinks_.end());
    }
    const auto now = SteadyClock::now();
    for (auto& s : sinks) s->FlushIfDue(now);
  }
}

void Pool::RegisterSink(const std::shared_ptr<TaskLogSink>& sink) {
  std::lock_guard lock(sinks_mu_);
  sinks_.insert(sink);
}

void Pool::UnregisterSink(const std::shared_ptr<TaskLogSink>& sink) {
  std::lock_guard lock(sinks_mu_);
  sinks_.erase(sink);
}

void Pool::EmitEvent(const std::string& kind, const std::optional<std::string>& task_id,
                     const std::string& data_json, const std::optional<std::string>& worker_id) {
  queue::NewEvent ev;
  ev.kind = kind;
  ev.task_id = task_id;
  ev.worker_id = worker_id;
  ev.data_json = data_json;
  Status st = store_.Emit(ev);
  if (!st.ok()) {
    spdlog::warn("emit failed kind={} node_id={} error={}", kind, options_.node_id,
                 ErrorText(st.error()));
  }
}

}  // namespace runner::pool
