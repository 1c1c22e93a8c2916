#include "runner/pool/pool.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/json.hpp>
#include <utility>

#include "base/ulid.h"
#include "runner/pool/idle_backoff.h"

namespace runner::pool {
namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

double Seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }

// Sleeps for `d` or until `stop` fires. Returns false when stopped.
bool SleepFor(const std::stop_token& stop, SteadyClock::duration d) {
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  cv.wait_for(lock, stop, d, [] { return false; });
  return !stop.stop_requested();
}

}  // namespace

struct Pool::Metrics {
  explicit Metrics(metrics::Registry& r)
      : claims(r.GetCounter("runner_claims_total", "Claim statements issued by this node")),
        claimed(r.GetCounter("runner_claimed_tasks_total", "Tasks claimed by this node")),
        claim_duration(r.GetHistogram("runner_claim_duration_seconds", "Latency of one batch claim",
                                      metrics::LatencyBuckets())),
        finish_and_claim_duration(
            r.GetHistogram("runner_finish_and_claim_duration_seconds",
                           "Latency of one busy worker's report that also claims its next task",
                           metrics::LatencyBuckets())),
        task_duration(r.GetHistogram("runner_task_duration_seconds",
                                     "Wall time of a task run by this node, claim to report",
                                     metrics::LatencyBuckets())),
        heartbeat_duration(r.GetHistogram("runner_heartbeat_duration_seconds",
                                          "Latency of the node's heartbeat statement",
                                          metrics::LatencyBuckets())),
        backpressure(r.GetGauge("runner_backpressure_active",
                                "1 while the node does not claim because the host is busy")),
        target(r.GetGauge("runner_pool_target_workers", "Desired worker count of this node")),
        registry(r) {
    for (auto s : {queue::WorkerState::kStarting, queue::WorkerState::kIdle,
                   queue::WorkerState::kBusy, queue::WorkerState::kStopping}) {
      workers[static_cast<int>(s)] = &r.GetGauge("runner_workers", "Workers of this node by state",
                                                 {{"state", std::string(queue::ToString(s))}});
    }
  }

  metrics::Counter& Finished(const std::string& state) {
    std::lock_guard lock(mu);
    auto it = finished.find(state);
    if (it != finished.end()) return *it->second;
    auto& c = registry.GetCounter("runner_tasks_finished_total",
                                  "Tasks this node finished, by outcome", {{"state", state}});
    finished.emplace(state, &c);
    return c;
  }

  // A task of `queue` started on this node (issue #18: starts per queue).
  void Started(const std::string& queue) {
    metrics::Counter* c = nullptr;
    {
      std::lock_guard lock(mu);
      auto it = started.find(queue);
      if (it == started.end()) {
        it = started
                 .emplace(queue, &registry.GetCounter("runner_queue_starts_total",
                                                      "Tasks of a queue this node started",
                                                      {{"queue", queue}}))
                 .first;
      }
      c = it->second;
    }
    c->Inc();
  }

  metrics::Counter& claims;
  metrics::Counter& claimed;
  metrics::Histogram& claim_duration;
  metrics::Histogram& finish_and_claim_duration;
  metrics::Histogram& task_duration;
  metrics::Histogram& heartbeat_duration;
  metrics::Gauge& backpressure;
  metrics::Gauge& target;
  metrics::Gauge* workers[4] = {};
  metrics::Registry& registry;
  std::mutex mu;
  std::map<std::string, metrics::Counter*> finished;  // guarded by mu
  std::map<std::string, metrics::Counter*> started;   // guarded by mu: by queue
};

Pool::Pool(queue::QueueStore& store, IsolatorPicker picker, PoolOptions options,
           metrics::Registry& metrics)
    : store_(store),
      picker_(std::move(picker)),
      options_(std::move(options)),
      metrics_(std::make_unique<Metrics>(metrics)),
      reaper_(store, ReaperOptions{.node_id = options_.node_id,
                                   .lease = options_.lease,
                                   .interval = options_.reap_interval,
                                   .policy = options_.reap_policy,
                                   .reap = options_.reap}) {
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

// --- workers -----------------------------------------------------------------

void Pool::StartWorkerLocked() {
  auto w = std::make_unique<Worker>();
  w->id = NewUlid();
  w->started_at = queue::Clock::now();
  Worker* raw = w.get();
  workers_.emplace(w->id, std::move(w));
  raw->thread = std::jthread([this, raw](std::stop_token st) { WorkerLoop(raw, st); });
}

void Pool::WorkerLoop(Worker* w, std::stop_token stop) {
  bool failed = false;
  std::string failure;
  try {
    queue::WorkerInfo info;
    info.id = w->id;
    info.node_id = options_.node_id;
    info.state = queue::WorkerState::kStarting;
    info.started_at = w->started_at;
    info.heartbeat_at = queue::Clock::now();
    Status reg = store_.RegisterWorker(info);
    if (!reg.ok()) {
      spdlog::warn("register worker failed worker_id={} error={}", w->id, ErrorText(reg.error()));
    }
    EmitEvent("worker.started", std::nullopt,
              boost::json::serialize(boost::json::object{{"node_id", options_.node_id}}), w->id);
    {
      std::lock_guard lock(mu_);
      w->state = queue::WorkerState::kIdle;
      idle_wake_ = true;
      UpdateWorkerGaugesLocked();
    }
    claim_cv_.notify_all();
    spdlog::debug("worker started worker_id={} node_id={}", w->id, options_.node_id);

    while (true) {
      queue::Task task;
      {
        std::unique_lock lock(mu_);
        w->cv.wait(lock, stop, [&] { return w->slot.has_value() || w->retire; });
        if (!w->slot) {
          // Retired by a scale down, or the pool stops: under the lock, so the
          // claimer sees kStopping and hands this worker nothing more.
          w->state = queue::WorkerState::kStopping;
          UpdateWorkerGaugesLocked();
          break;
        }
        task = std::move(*w->slot);
        w->slot.reset();
      }
      bool leaving = false;
      while (true) {
        std::optional<queue::Task> next = RunTask(w, std::move(task));
        std::optional<std::string> unwanted;  // claimed, but the worker leaves
        {
          std::lock_guard lock(mu_);
          w->task_id.reset();
          leaving = w->retire || stop.stop_requested();
          if (next && !leaving && accepting_) {
            // Straight on to the next task: still busy, a fresh stop source.
            w->task_id = next->id;
            w->reporting = false;
            w->task_stop = std::stop_source();
            w->cause = StopCause::kNone;
          } else {
            if (next) unwanted = next->id;
            next.reset();
            w->state = leaving ? queue::WorkerState::kStopping : queue::WorkerState::kIdle;
            idle_wake_ = true;
            UpdateWorkerGaugesLocked();
          }
          drain_cv_.notify_all();
        }
        if (unwanted) {
          Status st = store_.Release(*unwanted, w->id);
          if (!st.ok()) {
            spdlog::warn(
                "release of a task claimed while stopping failed task_id={} worker_id={} "
                "error={}",
                *unwanted, w->id, ErrorText(st.error()));
          }
        }
        if (!next) break;
        task = std::move(*next);
      }
      claim_cv_.notify_all();
      if (leaving) break;
    }
  } catch (const std::exception& e) {
    failed = true;
    failure = e.what();
    spdlog::error("worker failed worker_id={} node_id={} error=\"{}\"", w->id, options_.node_id,
                  failure);
  }
  {
    std::lock_guard lock(mu_);
    w->state = queue::WorkerState::kStopping;
    w->task_id.reset();
    UpdateWorkerGaugesLocked();
  }
  Status rm = store_.RemoveWorker(w->id);
  if (!rm.ok()) {
    spdlog::warn("remove worker failed worker_id={} error={}", w->id, ErrorText(rm.error()));
  }
  boost::json::object data{{"node_id", options_.node_id}};
  if (failed) data["error"] = failure;
  EmitEvent(failed ? "worker.failed" : "worker.stopped", std::nullopt, boost::json::serialize(data),
            w->id);
  {
    std::lock_guard lock(mu_);
    w->exited = true;
    w->failed = failed;
    exit_pending_ = true;
    UpdateWorkerGaugesLocked();
    claim_cv_.notify_all();
    drain_cv_.notify_all();
  }
}

isolation::TaskSpec Pool::BuildSpec(const Worker& w, const queue::Task& task) const {
  isolation::TaskSpec spec;
  spec.task_id = task.id;
  spec.worker_id = w.id;
  spec.node_id = options_.node_id;
  spec.attempt = std::max(1, task.attempt);
  spec.command = task.command;
  spec.image = task.image.empty() ? options_.default_image : task.image;
  spec.env = task.env;
  // Validation keeps the names of env and secrets apart.
  for (const auto& [name, value] : task.secrets) spec.env[name] = value;
  spec.limits = task.limits;
  const auto& d = options_.default_limits;
  if (spec.limits.cpus <= 0) spec.limits.cpus = d.cpus;
  if (spec.limits.memory <= 0) spec.limits.memory = d.memory;
  if (spec.limits.disk <= 0) spec.limits.disk = d.disk;
  if (spec.limits.pids <= 0) spec.limits.pids = d.pids;
  spec.timeout = task.timeout > 0 ? milliseconds(static_cast<int64_t>(task.timeout * 1000.0))
                                  : options_.default_timeout;
  spec.labels = task.labels;
  return spec;
}

queue::ClaimRequest Pool::ClaimRequestLocked(std::vector<std::string> worker_ids) const {
  queue::ClaimRequest req;
  req.node_id = options_.node_id;
  req.worker_ids = std::move(worker_ids);
  req.lease = options_.lease;
  req.queues = options_.queues;
  req.skip_isolations = unavailable_isolations_;
  return req;
}

bool Pool::MayClaimNextLocked(const Worker& w) const {
  return options_.claim_on_finish && running_ && accepting_ && !draining_ && !throttled_ &&
         !w.retire && !w.exited;
}

std::optional<Result<queue::FinishOutcome>> Pool::FinishAndClaimNext(
    const Worker& w, const queue::Task& task, const queue::FinishReport& report,
    std::optional<queue::Task>& next) {
  queue::ClaimRequest req;
  {
    std::lock_guard lock(mu_);
    if (!MayClaimNextLocked(w)) return std::nullopt;
    req = ClaimRequestLocked({w.id});
  }
  // A few at a time: a hundred workers each claiming for themselves pile up
  // on the head of the claim index (SKIP LOCKED walks past every row another
  // holds), where the claimer's one batch does not. Measured with 100
  // workers of instant tasks: 7.0 s for 10,000 all chaining, 4.1 s batched.
  if (finish_and_claims_.fetch_add(1) >= finish_and_claim_limit_) {
    finish_and_claims_.fetch_sub(1);
    return std::nullopt;
  }
  const auto t0 = SteadyClock::now();
  auto both = store_.FinishAndClaim(task.id, w.id, report, req);
  finish_and_claims_.fetch_sub(1);
  if (!both.ok()) return Result<queue::FinishOutcome>(both.error());
  metrics_->finish_and_claim_duration.Observe(Seconds(SteadyClock::now() - t0));
  if (both->next) {
    metrics_->claimed.Inc();
    metrics_->Started(both->next->queue);
  }
  next = std::move(both->next);
  return Result<queue::FinishOutcome>(both->outcome);
}

std::optional<queue::Task> Pool::RunTask(Worker* w, queue::Task task) {
  const auto started = SteadyClock::now();
  std::stop_token token;
  {
    std::lock_guard lock(mu_);
    token = w->task_stop.get_token();
  }
  const std::string task_id = task.id;
  const std::string worker_id = w->id;
  if (task.secrets_error) {
    // Running it without its secrets would be wrong in ways the task cannot
    // see; another attempt on this node would fail the same way.
    spdlog::error("task secrets cannot be opened task_id={} worker_id={} error=\"{}\"", task.id,
                  w->id, task.secrets_error->message);
    TaskOutcome out;
    out.report.state = queue::TaskState::kFailed;
    out.report.error = task.secrets_error;
    out.report.retryable = false;
    return ReportOutcome(w, task, out, started, /*may_claim_next=*/true);
  }
  std::vector<std::string> secret_values;
  secret_values.reserve(task.secrets.size());
  for (const auto& [name, value] : task.secrets) secret_values.push_back(value);
  auto sink = std::make_shared<TaskLogSink>(
      store_, task.id, options_.logs,
      [this, task_id, worker_id](std::string_view resource, isolation::OverLimitAction action,
                                 std::string_view message) {
        const char* act = action == isolation::OverLimitAction::kKill       ? "kill"
                          : action == isolation::OverLimitAction::kThrottle ? "throttle"
                                                                            : "warn";
        spdlog::warn("task over limit task_id={} worker_id={} resource={} action={} message=\"{}\"",
                     task_id, worker_id, resource, act, message);
        EmitEvent("task.over_limit", task_id,
                  boost::json::serialize(boost::json::object{
                      {"resource", resource}, {"action", act}, {"message", message}}),
                  worker_id);
      },
      std::move(secret_values));
  RegisterSink(sink);
  spdlog::info("task running task_id={} worker_id={} attempt={} isolation={}", task.id, w->id,
               task.attempt, isolation::ToString(task.isolation));

  auto picked = picker_(task.isolation);
  if (!picked.ok()) {
    UnregisterSink(sink);
    // Not the task's fault: it goes back with its attempt. Noticing the
    // outage made the node's claims skip such tasks (SetUnavailableIsolations),
    // so it waits for a node with Docker, or for Docker to come back here.
    ReportOutcome(w, task, Deferred(picked.error(), options_.defer_delay), started);
    return std::nullopt;
  }
  isolation::Isolator* iso = *picked;
  {
    std::lock_guard lock(mu_);
    w->isolation = std::string(iso->Name());
  }
  const isolation::TaskSpec spec = BuildSpec(*w, task);
  isolation::RunResult result;
  try {
    result = iso->Run(spec, *sink, token);
  } catch (const std::exception& e) {
    sink->EndOfOutput();
    (void)sink->Flush();
    UnregisterSink(sink);
    TaskOutcome out;
    out.report.state = queue::TaskState::kFailed;
    out.report.error =
        queue::TaskError{"internal", std::string("the ") + std::string(iso->Name()) +
                                         " isolator failed while running the task: " + e.what()};
    out.report.retryable = true;
    out.report.isolation_used = std::string(iso->Name());
    ReportOutcome(w, task, out, started);
    throw;  // the worker is replaced
  }
  sink->EndOfOutput();
  (void)sink->Flush();
  UnregisterSink(sink);
  // Docker went away before the task started (create or start could not reach
  // it) and is still away: deferred, like a task that found it down at pick.
  // An `auto` task that would now get a process is deferred too, to run as one.
  if (result.kind == isolation::RunResult::Kind::kError &&
      result.error_code == "isolation_unavailable" && sink->Handle().empty()) {
    auto again = picker_(task.isolation);
    if (!again.ok() || *again != iso) {
      const Error why = again.ok() ? MakeError(result.error_code, result.message) : again.error();
      return ReportOutcome(w, task, Deferred(why, options_.defer_delay), started);
    }
  }
  if (result.isolation.empty()) result.isolation = std::string(iso->Name());
  if (result.usage.peak_memory == 0) result.usage.peak_memory = sink->PeakMemory();
  return ReportOutcome(w, task, MapRunResult(result, w->cause.load()), started,
                       /*may_claim_next=*/true);
}

std::optional<queue::Task> Pool::ReportOutcome(Worker* w, const queue::Task& task,
                                               const TaskOutcome& out,
                                               SteadyClock::time_point started,
                                               bool may_claim_next) {
  const int kTries = 3;
  std::string label;
  std::optional<queue::Task> next;
  {
    // Its process is over: a heartbeat that finds the lease gone now (this
    // finish may commit first) has nothing to stop (StopTask).
    std::lock_guard lock(mu_);
    w->reporting = true;
    w->isolation.clear();
  }
  if (out.action != TaskOutcome::Action::kFinish) {
    const bool defer = out.action == TaskOutcome::Action::kDefer;
    label = defer ? "deferred" : "released";
    for (int i = 0; i < kTries; ++i) {
      Status st =
          defer ? store_.Defer(task.id, w->id, out.deferral) : store_.Release(task.id, w->id);
      if (st.ok()) break;
      spdlog::warn("{} failed task_id={} worker_id={} try={} error={}", defer ? "defer" : "release",
                   task.id, w->id, i + 1, ErrorText(st.error()));
      if (i + 1 < kTries) std::this_thread::sleep_for(milliseconds(200 << i));
    }
  } else {
    label = std::string(queue::ToString(out.report.state));
    // The result is kept while the lease may still be ours: a database restart
    // of a few seconds must not turn a finished task into a second run. Finish
    // checks the lease holder, so a late report never overwrites another attempt.
    const auto give_up = SteadyClock::now() + options_.lease;
    // Finish and take the next task in one round trip when allowed; on an
    // error the retries below only finish (the statement wrote nothing).
    std::optional<Result<queue::FinishOutcome>> first;
    if (may_claim_next) first = FinishAndClaimNext(*w, task, out.report, next);
    for (int i = 0;; ++i) {
      Result<queue::FinishOutcome> r =
          i == 0 && first ? std::move(*first) : store_.Finish(task.id, w->id, out.report);
      if (r.ok()) {
        if (*r == queue::FinishOutcome::kRetrying) label = "retrying";
        if (*r == queue::FinishOutcome::kLeaseLost) {
          label = "lease_lost";
          spdlog::warn("finish refused: lease lost task_id={} worker_id={}", task.id, w->id);
        }
        break;
      }
      spdlog::warn("finish failed task_id={} worker_id={} try={} error={}", task.id, w->id, i + 1,
                   ErrorText(r.error()));
      // Past the lease the reaper requeues it; stop trying.
      const auto pause = std::min(milliseconds(200) * (1 << std::min(i, 4)), milliseconds(2000));
      if (i + 1 >= kTries && SteadyClock::now() + pause >= give_up) break;
      std::this_thread::sleep_for(pause);
    }
  }
  const double elapsed = Seconds(SteadyClock::now() - started);
  metrics_->Finished(label).Inc();
  metrics_->task_duration.Observe(elapsed);
  spdlog::info("task done task_id={} worker_id={} outcome={} error_code={} seconds={:.3f}", task.id,
               w->id, label, out.report.error ? out.report.error->code : "", elapsed);
  return next;
}

int Pool::BusyCountLocked() const {
  int n = 0;
  for (const auto& [id, w] : workers_) {
    if (w->task_id && !w->exited) ++n;
  }
  return n;
}

void Pool::CollectExitedWorkers() {
  std::vector<std::unique_ptr<Worker>> dead;
  {
    std::lock_guard lock(mu_);
    if (!exit_pending_) return;
    exit_pending_ = false;
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->second->exited) {
        dead.push_back(std::move(it->second));
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    if (running_ && !draining_) {
      int alive = 0;
      for (auto& [id, w] : workers_) {
        if (!w->retire && w->state != queue::WorkerState::kStopping) ++alive;
      }
      for (int i = alive; i < target_; ++i) {
        spdlog::info("replacing worker node_id={}", options_.node_id);
        StartWorkerLocked();
      }
    }
    UpdateWorkerGaugesLocked();
  }
  for (auto& w : dead) {
    if (w->thread.joinable()) w->thread.join();
  }
}

void Pool::UpdateWorkerGaugesLocked() {
  int counts[4] = {0, 0, 0, 0};
  for (const auto& [id, w] : workers_) {
    if (!w->exited) ++counts[static_cast<int>(w->state)];
  }
  for (int i = 0; i < 4; ++i) metrics_->workers[i]->Set(counts[i]);
}

// --- claimer -----------------------------------------------------------------

constexpr std::size_t kMaxClaimBatch = 16;

void Pool::ClaimLoop(std::stop_token stop) {
  IdleBackoff backoff(options_.poll_interval, options_.idle_backoff_max);
  auto next_poll = SteadyClock::now();
  while (!stop.stop_requested()) {
    CollectExitedWorkers();
    std::vector<std::string> ids;
    queue::ClaimRequest req;
    bool truncated = false;
    {
      std::unique_lock lock(mu_);
      const bool can_claim = accepting_ && !throttled_;
      if (can_claim) {
        for (auto& [id, w] : workers_) {
          if (w->state == queue::WorkerState::kIdle && !w->slot && !w->task_id && !w->retire &&
              !w->claiming && !w->exited) {
            ids.push_back(id);
          }
        }
      }
      const auto now = SteadyClock::now();
      const bool want =
          !ids.empty() && (notify_wake_ || (idle_wake_ && backlog_possible_) || now >= next_poll);
      idle_wake_ = false;
      if (!want) {
        const auto until =
            ids.empty() ? now + std::max(options_.poll_interval, milliseconds(1000)) : next_poll;
        const bool have_idle = !ids.empty();
        claim_cv_.wait_until(lock, stop, until, [&] {
          return exit_pending_ || idle_wake_ || (have_idle && notify_wake_) ||
                 (accepting_ && !throttled_ && !can_claim);
        });
        continue;
      }
      notify_wake_ = false;
      // A claim of a hundred rows holds its locks and the first worker for
      // tens of milliseconds on a small host; smaller batches, one right
      // after the other, start the first tasks sooner.
      truncated = ids.size() > kMaxClaimBatch;
      if (truncated) ids.resize(kMaxClaimBatch);
      for (const auto& id : ids) workers_[id]->claiming = true;
      req = ClaimRequestLocked(ids);
    }

    const auto t0 = SteadyClock::now();
    auto claimed = store_.Claim(req);
    const auto t1 = SteadyClock::now();
    metrics_->claims.Inc();
    metrics_->claim_duration.Observe(Seconds(t1 - t0));

    std::vector<std::pair<std::string, std::string>> to_release;  // task id, worker id
    bool rate_check = false;
    {
      std::lock_guard lock(mu_);
      for (const auto& id : ids) {
        auto it = workers_.find(id);
        if (it != workers_.end()) it->second->claiming = false;
      }
      if (!claimed.ok()) {
        next_poll = t1 + backoff.Next();
        spdlog::warn("claim failed node_id={} error={}", options_.node_id,
                     ErrorText(claimed.error()));
        continue;
      }
      for (const auto& task : *claimed) metrics_->Started(task.queue);
      std::size_t fallback = 0;
      for (auto& task : *claimed) {
        std::string wid;
        if (task.worker_id) {
          wid = *task.worker_id;
        } else {
          while (fallback < ids.size() && workers_.count(ids[fallback]) &&
                 workers_[ids[fallback]]->slot) {
            ++fallback;
          }
          wid = fallback < ids.size() ? ids[fallback++] : std::string();
        }
        auto it = workers_.find(wid);
        Worker* w = it == workers_.end() ? nullptr : it->second.get();
        if (w == nullptr || w->exited || w->slot || w->task_id ||
            w->state != queue::WorkerState::kIdle || !accepting_) {
          to_release.emplace_back(task.id, wid);
          continue;
        }
        w->task_id = task.id;
        w->reporting = false;
        w->state = queue::WorkerState::kBusy;
        w->task_stop = std::stop_source();
        w->cause = StopCause::kNone;
        w->slot = std::move(task);
        w->cv.notify_all();
      }
      const std::size_t got = claimed->size();
      metrics_->claimed.Inc(static_cast<double>(got));
      backlog_possible_ = got >= ids.size();
      if (got > 0) backoff.Reset();
      next_poll = t1 + backoff.Next();
      if (truncated && backlog_possible_) next_poll = t1;  // more idle workers, more tasks
      if (got < ids.size()) rate_check = true;
      UpdateWorkerGaugesLocked();
    }
    if (rate_check) {
      // A task held back by its queue's rate limit starts when its window
      // opens, not at the idle poll.
      if (auto opens = store_.NextRateOpening(req)) {
        std::lock_guard lock(mu_);
        next_poll = std::min(next_poll, SteadyClock::now() + *opens + milliseconds(1));
      }
    }
    for (auto& [task_id, worker_id] : to_release) {
      Status st = store_.Release(task_id, worker_id);
      if (!st.ok()) {
        spdlog::warn("release of unplaced task failed task_id={} worker_id={} error={}", task_id,
                     worker_id, ErrorText(st.error()));
      }
    }
  }
}

// --- heartbeat, cancel, reaper, log flush -------------------------------------

void Pool::HeartbeatLoop(std::stop_token stop) {
  const auto interval = std::max(milliseconds(10), options_.lease / 3);
  auto last_ok = SteadyClock::now();
  bool lost_all = false;
  while (!stop.stop_requested()) {
    queue::HeartbeatRequest req;
    req.node_id = options_.node_id;
    req.lease = options_.lease;
    {
      std::lock_guard lock(mu_);
      req.target_workers = target_;
      for (const auto& [id, w] : workers_) {
        if (w->exited) continue;
        req.workers.push_back(queue::WorkerBeat{w->id, w->state, w->task_id});
      }
    }
    const auto t0 = SteadyClock::now();
    auto r = store_.Heartbeat(req);
    const auto t1 = SteadyClock::now();
    metrics_->heartbeat_duration.Observe(Seconds(t1 - t0));
    if (r.ok()) {
      last_ok = t1;
      lost_all = false;
      for (const auto& id : r->lost_task_ids) {
        // A task that finished while the heartbeat was in flight is reported
        // too; only one still running is news (StopTask skips a worker that
        // is writing its task's outcome).
        if (StopTask(id, StopCause::kLeaseLost)) {
          spdlog::warn("lease lost task_id={} node_id={}: stopped it", id, options_.node_id);
        }
      }
    } else {
      spdlog::warn("heartbeat failed node_id={} error={}", options_.node_id, ErrorText(r.error()));
      // Past the lease another node may already run our tasks: stop them.
      if (!lost_all && t1 - last_ok > options_.lease) {
        spdlog::error("no heartbeat for longer than the lease node_id={}: stopping running tasks",
                      options_.node_id);
        StopAllRunning(StopCause::kLeaseLost);
        lost_all = true;
      }
    }
    SleepFor(stop, interval);
  }
}

bool Pool::StopTask(const std::string& task_id, StopCause cause) {
  std::optional<std::stop_source> source;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, w] : workers_) {
      if (w->task_id && *w->task_id == task_id) {
        if (w->reporting) break;  // ended already: nothing to stop
        StopCause expected = StopCause::kNone;
        w->cause.compare_exchange_strong(expected, cause);
        source = w->task_stop;
        break;
      }
    }
  }
  // Outside the lock: the isolator's stop callbacks run in this thread.
  if (source) source->request_stop();
  return source.has_value();
}

void Pool::StopAllRunning(StopCause cause) {
  std::vector<std::stop_source> sources;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, w] : workers_) {
      if (!w->task_id) continue;
      StopCause expected = StopCause::kNone;
      w->cause.compare_exchange_strong(expected, cause);
      sources.push_back(w->task_stop);
    }
  }
  for (auto& s : sources) s.request_stop();
}

void Pool::CancelLoop(std::stop_token stop) {
  while (!stop.stop_requested()) {
    std::vector<std::string> ids;
    {
      std::lock_guard lock(mu_);
      for (const auto& [id, w] : workers_) {
        if (w->task_id && !w->exited) ids.push_back(*w->task_id);
      }
    }
    if (!ids.empty()) {
      auto r = store_.CancelRequested(ids);
      if (r.ok()) {
        for (const auto& id : *r) {
          spdlog::info("cancel requested task_id={} node_id={}: stopping it", id, options_.node_id);
          StopTask(id, StopCause::kCancel);
        }
      } else {
        spdlog::warn("cancel check failed node_id={} error={}", options_.node_id,
                     ErrorText(r.error()));
      }
    }
    std::unique_lock lock(mu_);
    cancel_cv_.wait_for(lock, stop, options_.cancel_check_interval, [&] { return cancel_wake_; });
    cancel_wake_ = false;
  }
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
