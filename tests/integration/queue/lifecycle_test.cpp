#include <catch2/catch.hpp>
#include <mutex>
#include <set>
#include <thread>

#include "base/ulid.h"
#include "runner/queue/notify_listener.h"
#include "tests/integration/queue/queue_fixture.h"

using namespace runner::queue;
using namespace runner::queue::testing;
using runner::testing::TestDatabase;
using runner::testing::WaitFor;
using namespace std::chrono_literals;

TEST_CASE("a submitted task keeps every field and takes the defaults", "[queue][submit]") {
  TestDatabase db;
  StoreOptions options;
  options.default_timeout = 120;
  options.default_limits.memory = 64LL << 20;
  auto store = OpenStore(db, options);
  NewTask nt = Echo();
  nt.env = {{"KEY", "va\"lue"}};
  nt.labels = {{"team", "a"}};
  nt.limits.cpus = 0.5;
  nt.max_attempts = 3;
  nt.isolation = runner::isolation::IsolationMode::kProcess;
  nt.command = {"sh", "-c", "echo \"quoted\" {braces}, \\back"};
  auto r = store->Submit(nt);
  REQUIRE(r.ok());
  CHECK(r->created);
  auto got = store->Get(r->task.id);
  REQUIRE(got.ok());
  CHECK(got->command == nt.command);
  CHECK(got->env == nt.env);
  CHECK(got->labels == nt.labels);
  CHECK(got->limits.cpus == 0.5);
  CHECK(got->limits.memory == (64LL << 20));
  CHECK(got->timeout == 120);
  CHECK(got->image == "runner-task:latest");
  CHECK(got->isolation == runner::isolation::IsolationMode::kProcess);
  CHECK(got->state == TaskState::kQueued);
  CHECK(got->max_attempts == 3);
  CHECK(runner::IsUlid(got->id));
  CHECK(store->Get(runner::NewUlid()).error().code == "not_found");
  CHECK(Scalar(db, "SELECT kind FROM events WHERE task_id = '" + got->id + "'") == "task.queued");
}

TEST_CASE("the same idempotency key returns the existing task, also when racing",
          "[queue][submit]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask nt = Echo();
  nt.idempotency_key = "deploy-1";
  auto first = store->Submit(nt);
  auto second = store->Submit(nt);
  REQUIRE((first.ok() && second.ok()));
  CHECK(first->created);
  CHECK_FALSE(second->created);
  CHECK(first->task.id == second->task.id);

  nt.idempotency_key = "deploy-2";
  std::mutex mu;
  std::vector<SubmitOutcome> outcomes;
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      auto r = store->Submit(nt);
      REQUIRE(r.ok());
      std::lock_guard lock(mu);
      outcomes.push_back(*r);
    });
  }
  for (auto& t : threads) t.join();
  int created = 0;
  for (const auto& o : outcomes) {
    created += o.created ? 1 : 0;
    CHECK(o.task.id == outcomes.front().task.id);
  }
  CHECK(created == 1);
  CHECK(Scalar(db, "SELECT count(*) FROM tasks") == "2");
}

TEST_CASE("a batch submit keeps order and fields, makes one task per key, and wakes its queues",
          "[queue][submit]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask before = Echo();
  before.idempotency_key = "nightly";
  auto existing = store->Submit(before);
  REQUIRE(existing.ok());

  std::vector<NewTask> batch;
  for (int i = 0; i < 5; ++i) {
    NewTask nt = Echo();
    nt.command = {"sh", "-c", "echo " + std::to_string(i), "\"quoted\" {x}"};
    nt.env = {{"N", std::to_string(i)}};
    nt.queue = i % 2 == 0 ? "even" : "odd";
    nt.priority = i;
    batch.push_back(nt);
  }
  batch[1].idempotency_key = "nightly";  // taken before the batch
  batch[2].idempotency_key = "twice";
  batch[4].idempotency_key = "twice";  // repeated within the batch
  std::mutex mu;
  std::set<std::string> woken;  // queues named by wake-ups; guarded by mu
  NotifyListener listener(db.conninfo(), [&](std::string_view channel, std::string_view queue) {
    std::lock_guard lock(mu);
    if (channel == kTasksChannel && !queue.empty()) woken.emplace(queue);
  });
  REQUIRE(WaitFor([&] { return listener.Connected(); }, 5s, 10ms));
  auto out = store->SubmitBatch(batch);
  REQUIRE(out.ok());
  REQUIRE(out->size() == 5);
  CHECK((*out)[0].created);
  CHECK((*out)[0].task.command == batch[0].command);
  CHECK((*out)[0].task.env == batch[0].env);
  CHECK((*out)[3].task.queue == "odd");
  CHECK((*out)[3].task.priority == 3);
  CHECK_FALSE((*out)[1].created);
  CHECK((*out)[1].task.id == existing->task.id);
  CHECK((*out)[2].created);
  CHECK_FALSE((*out)[4].created);
  CHECK((*out)[4].task.id == (*out)[2].task.id);
  // Three new tasks (0, 2, 3), each stored as returned, each with its event.
  CHECK(Scalar(db, "SELECT count(*) FROM tasks") == "4");
  for (int i : {0, 2, 3}) {
    auto got = store->Get((*out)[static_cast<std::size_t>(i)].task.id);
    REQUIRE(got.ok());
    CHECK(got->command == batch[static_cast<std::size_t>(i)].command);
    CHECK(got->state == TaskState::kQueued);
  }
  CHECK(Scalar(db, "SELECT count(*) FROM events WHERE kind = 'task.queued'") == "4");
  // A wake-up for each queue of the batch, sent at commit.
  CHECK(WaitFor(
      [&] {
        std::lock_guard lock(mu);
        return woken == std::set<std::string>{"even", "odd"};
      },
      5s));
}

TEST_CASE("invalid submissions are refused with the field named", "[queue][submit]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask empty;
  auto r = store->Submit(empty);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == "validation_failed");
  CHECK(r.error().message.find("command") != std::string::npos);
  NewTask unknown = Echo();
  unknown.depends_on = {runner::NewUlid()};
  auto u = store->Submit(unknown);
  REQUIRE_FALSE(u.ok());
  CHECK(u.error().code == "validation_failed");
  CHECK(u.error().message.find("depends_on") != std::string::npos);
  CHECK(Scalar(db, "SELECT count(*) FROM tasks") == "0");
}

TEST_CASE("a task runs only after its dependencies succeed", "[queue][dependencies]") {
  TestDatabase db;
  auto store = OpenStore(db);
  auto a = store->Submit(Echo("a"));
  REQUIRE(a.ok());
  NewTask nb = Echo("b");
  nb.priority = 100;  // would go first if dependencies were ignored
  nb.depends_on = {a->task.id};
  auto b = store->Submit(nb);
  REQUIRE(b.ok());
  auto first = store->Claim(ClaimFor({"w1", "w2"}));
  REQUIRE(first.ok());
  REQUIRE(first->size() == 1);
  CHECK(first->front().id == a->task.id);
  auto none = store->Claim(ClaimFor({"w2"}));
  REQUIRE(none.ok());
  CHECK(none->empty());
  REQUIRE(*store->Finish(a->task.id, "w1", Report(TaskState::kSucceeded)) ==
          FinishOutcome::kFinished);
  auto second = store->Claim(ClaimFor({"w2"}));
  REQUIRE(second.ok());
  REQUIRE(second->size() == 1);
  CHECK(second->front().id == b->task.id);
}

TEST_CASE("a failed dependency fails its dependents transitively", "[queue][dependencies]") {
  TestDatabase db;
  auto store = OpenStore(db);
  auto c = store->Submit(Echo("c"));
  REQUIRE(c.ok());
  NewTask nd = Echo("d");
  nd.depends_on = {c->task.id};
  auto d = store->Submit(nd);
  REQUIRE(d.ok());
  NewTask ne = Echo("e");
  ne.depends_on = {d->task.id};
  auto e = store->Submit(ne);
  REQUIRE(e.ok());
  auto claimed = store->Claim(ClaimFor({"w1"}));
  REQUIRE(claimed.ok());
  REQUIRE(claimed->size() == 1);
  REQUIRE(*store->Finish(c->task.id, "w1", Report(TaskState::kFailed)) == FinishOutcome::kFinished);
  for (const auto& id : {d->task.id, e->task.id}) {
    auto t = store->Get(id);
    REQUIRE(t.ok());
    CHECK(t->state == TaskState::kFailed);
    REQUIRE(t->error.has_value());
    CHECK(t->error->code == "dependency_failed");
  }
  // A new task depending on the failed one fails at once instead of waiting forever.
  NewTask late = Echo("late");
  late.depends_on = {c->task.id};
  auto l = store->Submit(late);
  REQUIRE(l.ok());
  CHECK(l->task.state == TaskState::kFailed);
  CHECK(l->task.error->code == "dependency_failed");
}

TEST_CASE("a failing task retries with exponential backoff until its attempts run out",
          "[queue][retry]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask nt = Echo();
  nt.max_attempts = 3;
  nt.backoff = 0.3;
  auto s = store->Submit(nt);
  REQUIRE(s.ok());
  const std::string id = s->task.id;

  auto expect_delay = [&](double seconds) {
    auto t = store->Get(id);
    REQUIRE(t.ok());
    CHECK(t->state == TaskState::kQueued);
    auto delay =
        std::chrono::duration<double>(t->run_at - std::chrono::system_clock::now()).count();
    CHECK(delay > seconds - 0.15);
    CHECK(delay <= seconds + 0.01);
  };
  auto claim_when_due = [&](std::chrono::milliseconds not_before) {
    auto start = std::chrono::steady_clock::now();
    auto r = store->Claim(ClaimFor({"w1"}));
    REQUIRE(r.ok());
    CHECK(r->empty());  // not before the backoff
    REQUIRE(WaitFor(
        [&] {
          auto c = store->Claim(ClaimFor({"w1"}));
          return c.ok() && c->size() == 1;
        },
        5s, 10ms));
    CHECK(std::chrono::steady_clock::now() - start >= not_before);
  };

  REQUIRE(store->Claim(ClaimFor({"w1"}))->size() == 1);
  CHECK(*store->Finish(id, "w1", Report(TaskState::kFailed)) == FinishOutcome::kRetrying);
  expect_delay(0.3);
  claim_when_due(200ms);
  CHECK(*store->Finish(id, "w1", Report(TaskState::kTimedOut)) == FinishOutcome::kRetrying);
  expect_delay(0.6);
  claim_when_due(450ms);
  CHECK(*store->Finish(id, "w1", Report(TaskState::kFailed)) == FinishOutcome::kFinished);
  auto t = store->Get(id);
  REQUIRE(t.ok());
  CHECK(t->state == TaskState::kFailed);
  CHECK(t->attempt == 3);
  CHECK(t->exit_code == 1);
  CHECK(Scalar(db, "SELECT count(*) FROM events WHERE kind = 'task.retrying'") == "2");

  // Not retryable: final at once.
  auto once = store->Submit(nt);
  REQUIRE(store->Claim(ClaimFor({"w2"}))->size() == 1);
  CHECK(*store->Finish(once->task.id, "w2", Report(TaskState::kFailed, false)) ==
        FinishOutcome::kFinished);
}

TEST_CASE("a worker that stops renewing loses its task, and its late finish is refused",
          "[queue][lease]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask nt = Echo();
  nt.max_attempts = 2;
  auto s = store->Submit(nt);
  REQUIRE(s.ok());
  auto held = store->Claim(ClaimFor({"old"}, "node-a", 300ms));
  REQUIRE(held.ok());
  REQUIRE(held->size() == 1);
  ReapPolicy policy;
  REQUIRE(WaitFor(
      [&] {
        auto r = store->Reap(policy);
        return r.ok() && r->requeued == 1;
      },
      5s, 50ms));
  auto t = store->Get(s->task.id);
  REQUIRE(t.ok());
  CHECK(t->state == TaskState::kQueued);
  auto taken = store->Claim(ClaimFor({"new"}, "node-b"));
  REQUIRE(taken.ok());
  REQUIRE(taken->size() == 1);
  CHECK(taken->front().attempt == 2);
  CHECK(*store->Finish(s->task.id, "old", Report(TaskState::kSucceeded)) ==
        FinishOutcome::kLeaseLost);
  HeartbeatRequest hb;
  hb.node_id = "node-a";
  hb.workers = {{"old", WorkerState::kBusy, s->task.id}};
  auto lost = store->Heartbeat(hb);
  REQUIRE(lost.ok());
  CHECK(lost->lost_task_ids == std::vector<std::string>{s->task.id});
  CHECK(*store->Finish(s->task.id, "new", Report(TaskState::kSucceeded)) ==
        FinishOutcome::kFinished);
  CHECK(store->Get(s->task.id)->state == TaskState::kSucceeded);

  // With no attempts left, an expired lease fails the task with lease_lost.
  auto last = store->Submit(Echo());
  REQUIRE(store->Claim(ClaimFor({"gone"}, "node-a", 100ms))->size() == 1);
  REQUIRE(WaitFor(
      [&] {
        auto r = store->Reap(policy);
        return r.ok() && r->failed_lease_lost == 1;
      },
      5s, 50ms));
  auto f = store->Get(last->task.id);
  CHECK(f->state == TaskState::kFailed);
  CHECK(f->error->code == "lease_lost");
}

TEST_CASE("a heartbeat renews every lease of the node in one call", "[queue][lease]") {
  TestDatabase db;
  auto store = OpenStore(db);
  std::vector<NewTask> batch(3, Echo());
  REQUIRE(store->SubmitBatch(batch).ok());
  auto held = store->Claim(ClaimFor({"w1", "w2", "w3"}, "node-a", 400ms));
  REQUIRE(held->size() == 3);
  HeartbeatRequest hb;
  hb.node_id = "node-a";
  hb.lease = 30s;
  hb.target_workers = 3;
  for (const auto& t : *held) hb.workers.push_back({*t.worker_id, WorkerState::kBusy, t.id});
  hb.workers.push_back({"w4", WorkerState::kIdle, std::nullopt});
  auto r = store->Heartbeat(hb);
  REQUIRE(r.ok());
  CHECK(r->lost_task_ids.empty());
  std::this_thread::sleep_for(500ms);  // past the original lease
  auto reap = store->Reap(ReapPolicy{});
  REQUIRE(reap.ok());
  CHECK(reap->requeued == 0);
  auto workers = store->ListWorkers();
  REQUIRE(workers.ok());
  CHECK(workers->size() == 4);
  auto nodes = store->ListNodes();
  REQUIRE(nodes.ok());
  REQUIRE(nodes->size() == 1);
  CHECK(nodes->front().target == 3);
}

TEST_CASE("cancel stops a queued task at once and flags a running one", "[queue][cancel]") {
  TestDatabase db;
  auto store = OpenStore(db);
  auto queued = store->Submit(Echo("q"));
  NewTask dependent = Echo("dep");
  dependent.depends_on = {queued->task.id};
  auto dep = store->Submit(dependent);
  auto c = store->Cancel(queued->task.id);
  REQUIRE(c.ok());
  CHECK(c->state == TaskState::kCancelled);
  CHECK(c->finished_at.has_value());
  CHECK(store->Get(dep->task.id)->error->code == "dependency_failed");
  CHECK(store->Cancel(queued->task.id).error().code == "conflict");
  CHECK(store->Cancel(runner::NewUlid()).error().code == "not_found");

  auto running = store->Submit(Echo("r"));
  REQUIRE(store->Claim(ClaimFor({"w1"}))->size() == 1);
  std::vector<std::string> ids{running->task.id};
  CHECK(store->CancelRequested(ids)->empty());
  auto flagged = store->Cancel(running->task.id);
  REQUIRE(flagged.ok());
  CHECK(flagged->state == TaskState::kRunning);
  CHECK(flagged->cancel_requested);
  CHECK(*store->CancelRequested(ids) == ids);
  auto report = Report(TaskState::kCancelled);
  report.error = TaskError{"cancelled", "cancelled by request"};
  CHECK(*store->Finish(running->task.id, "w1", report) == FinishOutcome::kFinished);
  auto done = store->Get(running->task.id);
  CHECK(done->state == TaskState::kCancelled);
  CHECK(Scalar(db, "SELECT count(*) FROM events WHERE kind = 'task.cancelled'") == "2");
}

TEST_CASE("release puts a task back without using up an attempt", "[queue][lease]") {
  TestDatabase db;
  auto store = OpenStore(db);
  auto s = store->Submit(Echo());
  REQUIRE(store->Claim(ClaimFor({"w1"}))->size() == 1);
  CHECK(store->Release(s->task.id, "someone-else").error().code == "conflict");
  REQUIRE(store->Release(s->task.id, "w1").ok());
  auto t = store->Get(s->task.id);
  CHECK(t->state == TaskState::kQueued);
  CHECK(t->attempt == 0);
  auto again = store->Claim(ClaimFor({"w2"}));
  REQUIRE(again->size() == 1);
  CHECK(again->front().attempt == 1);
}
