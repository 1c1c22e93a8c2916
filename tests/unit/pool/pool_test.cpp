#include "runner/pool/pool.h"

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "base/ulid.h"
#include "runner/metrics/registry.h"
#include "runner/pool/idle_backoff.h"
#include "runner/pressure/monitor.h"
#include "tests/support/fakes/isolator_fake.h"
#include "tests/support/fakes/manual_clock.h"
#include "tests/support/fakes/queue_store_fake.h"
#include "tests/support/services.h"

using namespace std::chrono_literals;
using runner::pool::Pool;
using runner::pool::PoolOptions;
using runner::queue::TaskState;
using runner::testing::FakeIsolator;
using runner::testing::FakeQueueStore;
using runner::testing::WaitFor;

namespace {

PoolOptions FastOptions(int workers) {
  PoolOptions o;
  o.node_id = runner::NewUlid();
  o.host = "test";
  o.workers = workers;
  o.max_workers = 16;
  o.poll_interval = 10ms;
  o.idle_backoff_max = 50ms;
  o.lease = 300ms;
  o.cancel_check_interval = 50ms;
  o.reap_interval = 1000ms;
  o.drain_timeout = 10000ms;
  o.stop_grace = 5000ms;
  o.logs.flush_interval = 20ms;
  return o;
}

struct Harness {
  explicit Harness(PoolOptions o) {
    pool = std::make_unique<Pool>(
        store,
        [this](runner::isolation::IsolationMode) -> runner::Result<runner::isolation::Isolator*> {
          return &iso;
        },
        std::move(o), registry);
  }
  ~Harness() { pool.reset(); }
  FakeQueueStore store;
  FakeIsolator iso;
  runner::metrics::Registry registry;
  std::unique_ptr<Pool> pool;
};

bool AllIdle(Pool& pool, int n) {
  auto s = pool.GetStatus();
  return s.active == n && s.idle == n;
}

}  // namespace

TEST_CASE("the pool never runs more tasks than workers and reaches N under load", "[pool]") {
  Harness h(FastOptions(4));
  h.store.AddTasks(40, {"sleep", "20"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.store.FinishedCount() == 40; }, 20s));
  CHECK(h.iso.MaxRunning() == 4);
  CHECK(h.store.CountInState(TaskState::kSucceeded) == 40);
  for (const auto& [id, runs] : h.iso.RunsByTask()) CHECK(runs == 1);
  CHECK(h.store.MaxClaimBatch() <= 4);
  h.pool->Stop(false);
}

TEST_CASE("workers register with ULID ids at start and deregister at stop", "[pool]") {
  Harness h(FastOptions(3));
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return AllIdle(*h.pool, 3); }, 5s));
  CHECK(h.store.NodeRegistered());
  auto workers = h.pool->Workers();
  REQUIRE(workers.size() == 3);
  for (const auto& w : workers) {
    CHECK(runner::IsUlid(w.id));
    CHECK(h.store.RegisteredWorkers().count(w.id) == 1);
  }
  CHECK(h.store.EventsOfKind("worker.started").size() == 3);
  CHECK(h.pool->Running());
  h.pool->Stop(false);
  CHECK_FALSE(h.pool->Running());
  CHECK(h.pool->GetStatus().state == runner::PoolState::kStopped);
  CHECK(h.store.RegisteredWorkers().empty());
  CHECK_FALSE(h.store.NodeRegistered());
  CHECK(h.store.EventsOfKind("worker.stopped").size() == 3);
  h.pool->Stop(false);  // idempotent
}

TEST_CASE("the default worker count is the CPU count", "[pool]") {
  Harness h(FastOptions(0));
  int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  CHECK(h.pool->GetStatus().target == std::min(cpus, 16));
}

TEST_CASE("scale up starts workers at once and scale down stops idle workers first", "[pool]") {
  Harness h(FastOptions(2));
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return AllIdle(*h.pool, 2); }, 5s));
  std::string busy_task = h.store.AddTask({"block"});
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.iso.Running() == 1; }, 5s));

  REQUIRE(h.pool->Scale(5).ok());
  REQUIRE(WaitFor(
      [&] {
        auto s = h.pool->GetStatus();
        return s.active == 5 && s.idle == 4 && s.busy == 1;
      },
      5s));

  REQUIRE(h.pool->Scale(1).ok());
  REQUIRE(WaitFor([&] { return h.pool->GetStatus().active == 1; }, 5s));
  auto workers = h.pool->Workers();
  REQUIRE(workers.size() == 1);
  CHECK(workers[0].task_id == busy_task);  // the busy worker was kept
  CHECK(h.iso.Running() == 1);             // and its task was not interrupted
  h.iso.Unblock();
  REQUIRE(WaitFor([&] { return h.store.TaskById(busy_task).state == TaskState::kSucceeded; }, 5s));
  CHECK(h.store.EventsOfKind("pool.scaled").size() == 2);
  CHECK(h.store.RegisteredWorkers().size() == 1);

  CHECK(h.pool->Scale(0).error().code == "validation_failed");
  CHECK(h.pool->Scale(17).error().code == "validation_failed");
  h.pool->Stop(false);
}

TEST_CASE("scale down lets busy workers finish their task before they stop", "[pool]") {
  Harness h(FastOptions(3));
  REQUIRE(h.pool->Start().ok());
  h.store.AddTasks(3, {"block"});
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.iso.Running() == 3; }, 5s));
  REQUIRE(h.pool->Scale(1).ok());
  CHECK(h.pool->GetStatus().target == 1);
  CHECK(h.pool->GetStatus().busy == 3);
  h.iso.Unblock();
  REQUIRE(WaitFor([&] { return h.store.CountInState(TaskState::kSucceeded) == 3; }, 5s));
  REQUIRE(WaitFor([&] { return h.pool->GetStatus().active == 1; }, 5s));
  h.pool->Stop(false);
}

TEST_CASE("graceful stop with three tasks in flight lets them finish and claims nothing new",
          "[pool][stop]") {
  Harness h(FastOptions(3));
  h.store.AddTasks(3, {"sleep", "300"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.iso.Running() == 3; }, 5s));
  std::string later = h.store.AddTask({"ok"});
  h.pool->Stop(false);
  CHECK(h.store.CountInState(TaskState::kSucceeded) == 3);
  CHECK(h.store.TaskById(later).state == TaskState::kQueued);
  CHECK(h.store.Releases() == 0);
  CHECK(h.store.RegisteredWorkers().empty());
}

TEST_CASE("the drain timeout stops stragglers and returns their tasks to the queue",
          "[pool][stop]") {
  Harness h(FastOptions(2));
  std::string a = h.store.AddTask({"block"});
  std::string b = h.store.AddTask({"block"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.iso.Running() == 2; }, 5s));
  auto t0 = std::chrono::steady_clock::now();
  h.pool->Stop(false, 200ms);
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took >= 200ms);
  CHECK(took < 5s);
  CHECK(h.iso.Running() == 0);
  CHECK(h.store.TaskById(a).state == TaskState::kQueued);
  CHECK(h.store.TaskById(b).state == TaskState::kQueued);
  CHECK(h.store.TaskById(a).attempt == 0);  // a release does not use up an attempt
  CHECK(h.store.Releases() == 2);
}

TEST_CASE("force stop stops running tasks at once and releases them", "[pool][stop]") {
  Harness h(FastOptions(2));
  std::string a = h.store.AddTask({"block"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.iso.Running() == 1; }, 5s));
  auto t0 = std::chrono::steady_clock::now();
  h.pool->Stop(true);
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
  CHECK(h.store.TaskById(a).state == TaskState::kQueued);
  CHECK(h.store.RegisteredWorkers().empty());
}

TEST_CASE("a force stop interrupts a graceful stop that is draining", "[pool][stop]") {
  Harness h(FastOptions(1));
  std::string a = h.store.AddTask({"block"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.iso.Running() == 1; }, 5s));
  std::thread graceful([&] { h.pool->Stop(false, 60s); });
  REQUIRE(WaitFor([&] { return h.pool->GetStatus().state == runner::PoolState::kDraining; }, 5s));
  auto t0 = std::chrono::steady_clock::now();
  h.pool->Stop(true);
  graceful.join();
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK(h.store.TaskById(a).state == TaskState::kQueued);
}

TEST_CASE("a stopped pool starts again and runs new work", "[pool][stop]") {
  Harness h(FastOptions(2));
  REQUIRE(h.pool->Start().ok());
  h.pool->Stop(false);
  std::string id = h.store.AddTask({"ok"});
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kSucceeded; }, 5s));
  CHECK(WaitFor([&] { return h.store.RegisteredWorkers().size() == 2; }, 5s));
  h.pool->Stop(false);
}

TEST_CASE("this node's leftover containers are reaped before its first claim, never after",
          "[pool][reaper]") {
  // A slow Docker daemon (the hook takes 300 ms): a reap of this node's own
  // containers running beside the first claims removed the new tasks'
  // containers (it_node under TSan: a task's output was lost).
  auto o = FastOptions(2);
  const std::string self = o.node_id;
  Harness h(o);
  h.store.AddTasks(4, {"ok"});
  std::mutex mu;
  std::vector<std::size_t> own_reaps;  // claims made before each reap that named this node
  h.pool->SetOrphanReaper([&](const std::vector<std::string>& nodes) {
    if (std::find(nodes.begin(), nodes.end(), self) == nodes.end()) return true;
    std::size_t claims = h.store.ClaimTimes().size();
    std::this_thread::sleep_for(300ms);
    std::lock_guard lock(mu);
    own_reaps.push_back(claims);
    return true;
  });
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return h.store.CountInState(TaskState::kSucceeded) == 4; }, 10s));
  h.pool->Stop(false);
  std::lock_guard lock(mu);
  CHECK(own_reaps == std::vector<std::size_t>{0});
}

TEST_CASE("the idle backoff doubles up to 30 s and resets on a claim", "[pool][backoff]") {
  runner::pool::IdleBackoff b(1000ms, 30000ms);
  std::vector<long> seen;
  for (int i = 0; i < 7; ++i) seen.push_back(static_cast<long>(b.Next().count()));
  CHECK(seen == std::vector<long>{1000, 2000, 4000, 8000, 16000, 30000, 30000});
  b.Reset();
  CHECK(b.Next() == 1000ms);
}

TEST_CASE("an idle pool polls less and less often and polls fast again after a claim",
          "[pool][backoff]") {
  auto o = FastOptions(1);
  o.poll_interval = 50ms;
  o.idle_backoff_max = 400ms;
  Harness h(o);
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return h.store.ClaimTimes().size() >= 6; }, 10s));
  auto times = h.store.ClaimTimes();
  auto gap = [&](std::size_t i) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(times[i + 1] - times[i]);
  };
  // 50, 100, 200, 400, 400 (the first claim is at start). Waits only ever
  // overshoot, so lower bounds hold on a loaded host.
  CHECK(gap(0) >= 45ms);
  CHECK(gap(1) >= 90ms);
  CHECK(gap(2) >= 180ms);
  CHECK(gap(3) >= 360ms);
  CHECK(gap(4) >= 360ms);
  CHECK(gap(4) < 2000ms);                    // capped, not 800 ms and growing
  std::string id = h.store.AddTask({"ok"});  // no Wake(): found by the poll
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kSucceeded; }, 5s));
  auto before = h.store.ClaimTimes().size();
  REQUIRE(WaitFor([&] { return h.store.ClaimTimes().size() >= before + 2; }, 5s));
  times = h.store.ClaimTimes();
  // Back to the base interval (50 ms) rather than the capped 400 ms.
  CHECK(times[before] - times[before - 1] < 300ms);
  h.pool->Stop(false);
}

TEST_CASE("a NOTIFY wake-up claims at once even during a long idle backoff", "[pool][backoff]") {
  auto o = FastOptions(1);
  o.poll_interval = 5000ms;
  o.idle_backoff_max = 30000ms;
  Harness h(o);
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return h.store.ClaimTimes().size() >= 1; }, 5s));
  std::string id = h.store.AddTask({"ok"});
  auto t0 = std::chrono::steady_clock::now();
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kSucceeded; }, 2s));
  CHECK(std::chrono::steady_clock::now() - t0 < 1s);
  h.pool->Stop(false);
}

TEST_CASE("every heartbeat carries each busy worker's task id", "[pool][heartbeat]") {
  Harness h(FastOptions(2));
  std::string id = h.store.AddTask({"block"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.iso.Running() == 1; }, 5s));
  REQUIRE(WaitFor(
      [&] {
        for (const auto& hb : h.store.Heartbeats()) {
          for (const auto& b : hb.workers) {
            if (b.task_id == id && b.state == runner::queue::WorkerState::kBusy) return true;
          }
        }
        return false;
      },
      5s));
  auto hbs = h.store.Heartbeats();
  CHECK(hbs.back().node_id == h.pool->node_id());
  CHECK(hbs.back().workers.size() == 2);
  CHECK(hbs.back().target_workers == 2);
  h.iso.Unblock();
  h.pool->Stop(false);
}

TEST_CASE("a task whose lease is lost is stopped and ends lease_lost", "[pool][heartbeat]") {
  Harness h(FastOptions(1));
  std::string id = h.store.AddTask({"block"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.iso.Running() == 1; }, 5s));
  h.store.LoseLease(id);
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kFailed; }, 5s));
  CHECK(h.store.TaskById(id).error->code == "lease_lost");
  CHECK(h.iso.Running() == 0);
  h.pool->Stop(false);
}

TEST_CASE("running tasks are stopped when heartbeats fail for longer than the lease",
          "[pool][heartbeat]") {
  Harness h(FastOptions(1));
  std::string id = h.store.AddTask({"block"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.iso.Running() == 1; }, 5s));
  h.store.SetHeartbeatFails(true);
  REQUIRE(WaitFor([&] { return h.iso.Running() == 0; }, 5s));
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kFailed; }, 5s));
  CHECK(h.store.TaskById(id).error->code == "lease_lost");
  h.store.SetHeartbeatFails(false);
  h.pool->Stop(false);
}

TEST_CASE("a cancel request stops a running task within a second", "[pool][cancel]") {
  auto o = FastOptions(1);
  o.cancel_check_interval = 500ms;
  Harness h(o);
  std::string id = h.store.AddTask({"block"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.iso.Running() == 1; }, 5s));
  h.store.RequestCancel(id);
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kCancelled; }, 3s));
  CHECK(std::chrono::steady_clock::now() - t0 < 1s);
  CHECK(h.store.TaskById(id).error->code == "cancelled");
  h.pool->Stop(false);
}

TEST_CASE("a worker whose isolator throws is replaced and its task is failed", "[pool]") {
  Harness h(FastOptions(2));
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return AllIdle(*h.pool, 2); }, 5s));
  auto before = h.store.RegisteredWorkers();
  std::string id = h.store.AddTask({"throw"});
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kFailed; }, 5s));
  CHECK(h.store.TaskById(id).error->code == "internal");
  REQUIRE(WaitFor([&] { return h.store.EventsOfKind("worker.failed").size() == 1; }, 5s));
  REQUIRE(WaitFor(
      [&] {
        return AllIdle(*h.pool, 2) && h.store.RegisteredWorkers().size() == 2 &&
               h.store.RegisteredWorkers() != before;
      },
      5s));
  // The replacement works.
  std::string next = h.store.AddTask({"ok"});
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.store.TaskById(next).state == TaskState::kSucceeded; }, 5s));
  h.pool->Stop(false);
}

TEST_CASE("a task the node cannot start goes back to the queue without spending its attempt",
          "[pool][defer]") {
  // The pool's claim loop and the store's deferral both run on this clock.
  runner::testing::ManualClock clock(std::chrono::system_clock::now());
  FakeQueueStore store(clock);
  FakeIsolator iso;
  runner::metrics::Registry registry;
  std::atomic<bool> down{true};
  auto options = FastOptions(1);
  options.defer_delay = 300ms;
  Pool pool(
      store,
      [&](runner::isolation::IsolationMode) -> runner::Result<runner::isolation::Isolator*> {
        if (down) return runner::MakeError("isolation_unavailable", "docker is down (fake)");
        return &iso;
      },
      options, registry, clock);
  std::string id = store.AddTask({"ok"});
  REQUIRE(pool.Start().ok());
  REQUIRE(WaitFor(
      [&] {
        clock.Advance(10ms);
        return store.Deferrals() >= 1;
      },
      5s, 5ms));
  // Back in the queue, attempt given back, and the error says why it waits.
  auto waiting = store.TaskById(id);
  CHECK(waiting.state != TaskState::kFailed);
  CHECK(waiting.attempt <= 1);
  REQUIRE(waiting.error.has_value());
  CHECK(waiting.error->code == "isolation_unavailable");
  CHECK(waiting.error->message.find("waits in the queue") != std::string::npos);
  // The deferral holds it back while the pool keeps polling: four more claim
  // statements as the clock moves a poll interval (10 ms; the idle back-off
  // is at most 50 ms) at a time, all within the 300 ms deferral.
  const int claims = store.ClaimCounts()[id];
  const std::size_t statements = store.ClaimTimes().size();
  int advanced_ms = 0;
  REQUIRE(WaitFor(
      [&] {
        if (advanced_ms + 10 < 250) {
          clock.Advance(10ms);
          advanced_ms += 10;
        }
        return store.ClaimTimes().size() >= statements + 4;
      },
      5s, 5ms));
  CHECK(store.ClaimCounts()[id] == claims);
  CHECK(iso.Started() == 0);

  down = false;
  REQUIRE(WaitFor(
      [&] {
        clock.Advance(10ms);
        return store.TaskById(id).state == TaskState::kSucceeded;
      },
      5s, 5ms));
  CHECK(store.TaskById(id).attempt == 1);  // claimed twice, counted once
  CHECK(registry.Render().find("runner_tasks_finished_total{state=\"deferred\"}") !=
        std::string::npos);
  pool.Stop(false);
}

TEST_CASE("a heartbeat that finds the lease of a task that just ended gone stops nothing",
          "[pool][lease]") {
  // What the operator saw: "lease lost ... stopped it" for a task that had
  // succeeded, when its finish committed while a heartbeat was in flight.
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  spdlog::default_logger()->sinks().push_back(sink);
  Harness h(FastOptions(1));  // lease 300 ms: a heartbeat every 100 ms
  h.store.HoldFinish(true);
  std::string id = h.store.AddTask({"ok"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  REQUIRE(WaitFor([&] { return h.store.FinishWaiting(); }, 5s));
  // The task's process is over; the database now says its lease is gone.
  const auto beats = h.store.Heartbeats().size();
  h.store.LoseLease(id);
  REQUIRE(WaitFor([&] { return h.store.Heartbeats().size() >= beats + 2; }, 5s));
  h.store.HoldFinish(false);
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kSucceeded; }, 5s));
  h.pool->Stop(false);
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
  CHECK(log.str().find("lease lost task_id=" + id) == std::string::npos);
}

TEST_CASE("claims skip the isolations the node cannot run and take them once it can",
          "[pool][defer]") {
  Harness h(FastOptions(2));
  h.pool->SetUnavailableIsolations({"auto"});  // what a docker-mode node says while Docker is down
  std::string id = h.store.AddTask({"ok"});
  REQUIRE(h.pool->Start().ok());
  h.pool->Wake();
  // Ten claim statements (polls) ran, and none took it: counted, not slept.
  const auto polls = h.store.ClaimTimes().size();
  REQUIRE(WaitFor([&] { return h.store.ClaimTimes().size() >= polls + 10; }, 5s));
  CHECK(h.store.ClaimCounts()[id] == 0);
  CHECK(h.store.TaskById(id).state == TaskState::kQueued);

  h.pool->SetUnavailableIsolations({});
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kSucceeded; }, 5s));
  CHECK(h.store.TaskById(id).attempt == 1);
  h.pool->Stop(false);
}

TEST_CASE("task results are reported as the user expects", "[pool][outcome]") {
  using runner::isolation::RunResult;
  using runner::pool::MapRunResult;
  using runner::pool::StopCause;
  using runner::pool::TaskOutcome;
  auto run = [](RunResult::Kind kind, int code = 0, std::string error = "") {
    RunResult r;
    r.kind = kind;
    r.exit_code = code;
    r.error_code = std::move(error);
    return r;
  };
  auto ok = MapRunResult(run(RunResult::Kind::kExited, 0), StopCause::kNone);
  CHECK(ok.report.state == TaskState::kSucceeded);
  CHECK(ok.report.exit_code == 0);
  auto bad = MapRunResult(run(RunResult::Kind::kExited, 3), StopCause::kNone);
  CHECK(bad.report.state == TaskState::kFailed);
  CHECK(bad.report.error->code == "nonzero_exit");
  CHECK(bad.report.exit_code == 3);
  CHECK(MapRunResult(run(RunResult::Kind::kTimedOut, 137), StopCause::kNone).report.state ==
        TaskState::kTimedOut);
  CHECK(MapRunResult(run(RunResult::Kind::kOomKilled, 137), StopCause::kNone).report.error->code ==
        "oom_killed");
  CHECK(MapRunResult(run(RunResult::Kind::kOverLimit, 137), StopCause::kNone).report.error->code ==
        "over_limit");
  auto missing =
      MapRunResult(run(RunResult::Kind::kError, -1, "image_not_found"), StopCause::kNone);
  CHECK(missing.report.error->code == "image_not_found");
  CHECK_FALSE(missing.report.retryable);
  CHECK(MapRunResult(run(RunResult::Kind::kStopped), StopCause::kCancel).report.state ==
        TaskState::kCancelled);
  CHECK(MapRunResult(run(RunResult::Kind::kStopped), StopCause::kShutdown).action ==
        TaskOutcome::Action::kRelease);
  CHECK(MapRunResult(run(RunResult::Kind::kStopped), StopCause::kLeaseLost).report.error->code ==
        "lease_lost");
}

TEST_CASE("task output reaches the store's logs", "[pool][logs]") {
  Harness h(FastOptions(1));
  std::string id = h.store.AddTask({"print", "hello from the task\n"});
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kSucceeded; }, 5s));
  CHECK(h.store.LogsOf(id) == "hello from the task\n");
  h.pool->Stop(false);
}

TEST_CASE("secrets reach the task's env and are masked in its output, split chunks included",
          "[pool][logs][secrets]") {
  Harness h(FastOptions(1));
  std::string id =
      h.store.AddTask({"print", "whole=", "env:TOKEN", " split=x-hunt", "er2-sword", "fish-y\n"});
  h.store.SetClaimedSecrets(id, {{"TOKEN", "hunter2-swordfish"}}, std::nullopt);
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kSucceeded; }, 5s));
  CHECK(h.store.LogsOf(id) == "whole=*** split=x-***-y\n");
  h.pool->Stop(false);
}

TEST_CASE("an isolator error that quotes a secret is masked in the task's error and events",
          "[pool][secrets]") {
  Harness h(FastOptions(1));
  std::string failed = h.store.AddTask({"fail-env", "TOKEN"});
  h.store.SetClaimedSecrets(failed, {{"TOKEN", "hunter2-swordfish"}}, std::nullopt);
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return h.store.TaskById(failed).error.has_value(); }, 5s));
  auto t = h.store.TaskById(failed);
  REQUIRE(t.error.has_value());
  CHECK(t.error->message == "the daemon refused the config: TOKEN=***");

  // An isolator that throws: the task's error and the worker's failure event.
  std::string thrown = h.store.AddTask({"throw-env", "TOKEN"});
  h.store.SetClaimedSecrets(thrown, {{"TOKEN", "hunter2-swordfish"}}, std::nullopt);
  REQUIRE(WaitFor([&] { return h.store.TaskById(thrown).error.has_value(); }, 5s));
  CHECK(h.store.TaskById(thrown).error->message.find("TOKEN=***") != std::string::npos);
  CHECK(h.store.TaskById(thrown).error->message.find("hunter2") == std::string::npos);
  REQUIRE(WaitFor([&] { return !h.store.EventsOfKind("worker.failed").empty(); }, 5s));
  for (const auto& e : h.store.EventsOfKind("worker.failed")) {
    INFO(e.data_json);
    CHECK(e.data_json.find("TOKEN=***") != std::string::npos);
    CHECK(e.data_json.find("hunter2") == std::string::npos);
  }
  h.pool->Stop(false);
}

TEST_CASE("a task whose secrets cannot be opened fails and never runs", "[pool][secrets]") {
  Harness h(FastOptions(1));
  std::string id = h.store.AddTask({"print", "ran\n"});
  h.store.SetClaimedSecrets(
      id, {},
      runner::queue::TaskError{"secrets_unavailable", "sealed with key aa, this node has bb"});
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kFailed; }, 5s));
  auto t = h.store.TaskById(id);
  REQUIRE(t.error.has_value());
  CHECK(t.error->code == "secrets_unavailable");
  CHECK(t.error->message.find("key aa") != std::string::npos);
  CHECK(h.iso.RunsByTask().count(id) == 0);
  CHECK(h.store.LogsOf(id).empty());
  h.pool->Stop(false);
}

TEST_CASE("backpressure stops claiming and resuming picks up the backlog", "[pool][pressure]") {
  Harness h(FastOptions(2));
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return AllIdle(*h.pool, 2); }, 5s));
  h.pool->SetBackpressure(true, "cpu 97.0% >= 90%");
  CHECK(h.pool->GetStatus().state == runner::PoolState::kThrottled);
  CHECK(h.pool->BackpressureReason() == std::string("cpu 97.0% >= 90%"));
  CHECK(h.store.EventsOfKind("pool.throttled").size() == 1);
  std::string id = h.store.AddTask({"ok"});
  h.pool->Wake();
  CHECK_FALSE(WaitFor([&] { return h.store.TaskById(id).state != TaskState::kQueued; }, 300ms));
  h.pool->SetBackpressure(false, "");
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kSucceeded; }, 5s));
  CHECK(h.store.EventsOfKind("pool.resumed").size() == 1);
  CHECK(h.pool->GetStatus().state == runner::PoolState::kRunning);
  CHECK(h.registry.Render().find("runner_backpressure_active 0") != std::string::npos);
  h.pool->Stop(false);
}

namespace {

class ScriptedSource : public runner::pressure::ResourceSource {
 public:
  explicit ScriptedSource(double* memory_percent) : memory_percent_(memory_percent) {}
  runner::pressure::Reading Read() override {
    runner::pressure::Reading r;
    r.cpu_percent = 5;
    r.memory_total = 1000;
    r.memory_used = static_cast<int64_t>(*memory_percent_ * 10);
    return r;
  }

 private:
  double* memory_percent_;
};

}  // namespace

TEST_CASE("the pressure monitor throttles the pool on injected readings and resumes it",
          "[pool][pressure]") {
  Harness h(FastOptions(1));
  double memory = 50;
  runner::pressure::Monitor monitor(
      std::make_unique<ScriptedSource>(&memory), runner::pressure::MonitorOptions{}, h.registry,
      [&](bool on, const std::string& reason) { h.pool->SetBackpressure(on, reason); });
  REQUIRE(h.pool->Start().ok());
  monitor.SampleOnce();
  CHECK_FALSE(h.pool->Backpressure());
  memory = 95;
  monitor.SampleOnce();
  CHECK(h.pool->Backpressure());
  CHECK(h.pool->BackpressureReason()->find("memory") != std::string::npos);
  std::string id = h.store.AddTask({"ok"});
  h.pool->Wake();
  CHECK_FALSE(WaitFor([&] { return h.store.TaskById(id).state != TaskState::kQueued; }, 200ms));
  memory = 85;  // under high, over low: still throttled
  monitor.SampleOnce();
  CHECK(h.pool->Backpressure());
  memory = 70;
  monitor.SampleOnce();
  CHECK_FALSE(h.pool->Backpressure());
  REQUIRE(WaitFor([&] { return h.store.TaskById(id).state == TaskState::kSucceeded; }, 5s));
  h.pool->Stop(false);
}

TEST_CASE("pool metrics count workers by state, claims and finished tasks", "[pool][metrics]") {
  Harness h(FastOptions(2));
  h.store.AddTasks(3, {"ok"});
  h.store.AddTask({"exit", "2"});
  REQUIRE(h.pool->Start().ok());
  REQUIRE(WaitFor([&] { return h.store.FinishedCount() == 4; }, 5s));
  REQUIRE(WaitFor([&] { return AllIdle(*h.pool, 2); }, 5s));
  std::string text = h.registry.Render();
  CHECK(text.find("runner_workers{state=\"idle\"} 2") != std::string::npos);
  CHECK(text.find("runner_tasks_finished_total{state=\"succeeded\"} 3") != std::string::npos);
  CHECK(text.find("runner_tasks_finished_total{state=\"failed\"} 1") != std::string::npos);
  CHECK(text.find("runner_claim_duration_seconds_count") != std::string::npos);
  CHECK(text.find("runner_pool_target_workers 2") != std::string::npos);
  h.pool->Stop(false);
}
