// The pool's workers: each runs its handed-off tasks one at a time
// (WorkerLoop, RunTask, ReportOutcome) and is replaced when it fails.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/json.hpp>
#include <stdexcept>
#include <utility>

#include "base/ulid.h"
#include "runner/pool/idle_backoff.h"
#include "runner/pool/pool.h"
#include "runner/pool/pool_internal.h"
#include "runner/secrets/output_masker.h"

namespace runner::pool {

using internal::Seconds;
using internal::SleepFor;
using internal::SteadyClock;
using std::chrono::milliseconds;

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
  // An isolator's error text (a daemon's message, an exception) goes to the
  // task's error, an event and the log: it is masked like the output, in
  // case it quotes the task's environment.
  const auto masked = [values = secret_values](std::string text) {
    if (values.empty()) return text;
    secrets::OutputMasker masker(values);
    std::string out = masker.Feed(text);
    return out + masker.Flush();
  };
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
    const std::string what = masked(e.what());
    TaskOutcome out;
    out.report.state = queue::TaskState::kFailed;
    out.report.error =
        queue::TaskError{"internal", std::string("the ") + std::string(iso->Name()) +
                                         " isolator failed while running the task: " + what};
    out.report.retryable = true;
    out.report.isolation_used = std::string(iso->Name());
    ReportOutcome(w, task, out, started);
    throw std::runtime_error(what);  // the worker is replaced (its log and event say why)
  }
  result.message = masked(std::move(result.message));
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

}  // namespace runner::pool
