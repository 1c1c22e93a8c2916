#include <catch2/catch.hpp>
#include <set>
#include <thread>

#include "base/ulid.h"
#include "runner/queue/migrations.h"
#include "tests/integration/queue/queue_fixture.h"

using namespace runner::queue;
using namespace runner::queue::testing;
using runner::testing::TestDatabase;
using runner::testing::WaitFor;
using namespace std::chrono_literals;

TEST_CASE("migrations run once, also when run twice and by several nodes at once",
          "[queue][migrate]") {
  TestDatabase db;
  REQUIRE(Migrate(db.conninfo()).ok());
  REQUIRE(Migrate(db.conninfo()).ok());
  CHECK(Scalar(db, "SELECT count(*) FROM schema_migrations") ==
        std::to_string(Migrations().size()));

  TestDatabase fresh;
  std::vector<std::thread> nodes;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    nodes.emplace_back([&] {
      if (Migrate(fresh.conninfo()).ok()) ++ok;
    });
  }
  for (auto& n : nodes) n.join();
  CHECK(ok == 4);
  CHECK(Scalar(fresh, "SELECT count(*) FROM schema_migrations") ==
        std::to_string(Migrations().size()));
}

TEST_CASE("stored logs stop at the cap and say they were cut", "[queue][logs]") {
  TestDatabase db;
  StoreOptions options;
  options.log_cap = 1000;
  auto store = OpenStore(db, options);
  auto s = store->Submit(Echo());
  const std::string id = s->task.id;
  std::vector<LogChunk> chunks;
  for (int i = 0; i < 3; ++i) {
    LogChunk c;
    c.stream = runner::isolation::OutputStream::kStdout;
    c.data = std::string(400, static_cast<char>('a' + i));
    chunks.push_back(c);
  }
  LogChunk err;
  err.stream = runner::isolation::OutputStream::kStderr;
  err.data = "boom\n";
  chunks.push_back(err);
  REQUIRE(store->AppendLogs(id, chunks).ok());

  auto all = store->Logs(id, LogStream::kAll, 0, 1 << 20);
  REQUIRE(all.ok());
  std::string stored;
  for (const auto& c : all->chunks) stored += c.data;
  CHECK(stored.size() == 1000);
  CHECK(stored == std::string(400, 'a') + std::string(400, 'b') + std::string(200, 'c'));
  CHECK(all->truncated);
  auto task = store->Get(id);
  CHECK(task->logs_truncated);
  // Tails keep the latest output even past the cap.
  CHECK(task->stdout_tail.size() == 1200);
  CHECK(task->stdout_tail.substr(800) == std::string(400, 'c'));
  CHECK(task->stderr_tail == "boom\n");

  auto out_only = store->Logs(id, LogStream::kStdout, 0, 1 << 20);
  CHECK(out_only->chunks.size() == 3);
  auto after = store->Logs(id, LogStream::kAll, all->chunks.front().seq, 1 << 20);
  CHECK(after->chunks.size() == all->chunks.size() - 1);
  auto small = store->Logs(id, LogStream::kAll, 0, 10);
  CHECK(small->chunks.size() == 1);  // at least one chunk, then the byte budget

  // The tail keeps the last 4 KiB.
  std::vector<LogChunk> big(1);
  big[0].data = std::string(5000, 'x') + "END";
  REQUIRE(store->AppendLogs(id, big).ok());
  task = store->Get(id);
  CHECK(task->stdout_tail.size() == kTailBytes);
  CHECK(task->stdout_tail.substr(kTailBytes - 3) == "END");
  CHECK(store->Logs(runner::NewUlid(), LogStream::kAll, 0, 100).error().code == "not_found");
}

TEST_CASE("only one node reaps at a time", "[queue][reap]") {
  TestDatabase db;
  auto store = OpenStore(db);
  {
    pqxx::connection other_node(db.conninfo());
    pqxx::nontransaction tx(other_node);
    tx.exec("SELECT pg_advisory_lock(" + std::to_string(kReaperLockKey) + ")");
    auto r = store->Reap(ReapPolicy{});
    REQUIRE(r.ok());
    CHECK_FALSE(r->ran);
    // Released here, not by closing the connection: the server ends a closed
    // session after the client has moved on, and the next Reap could still
    // find the lock held.
    tx.exec("SELECT pg_advisory_unlock(" + std::to_string(kReaperLockKey) + ")");
  }
  auto r = store->Reap(ReapPolicy{});
  REQUIRE(r.ok());
  CHECK(r->ran);

  std::atomic<int> ran{0};
  std::atomic<int> ok{0};
  std::vector<std::thread> nodes;
  for (int i = 0; i < 2; ++i) {
    nodes.emplace_back([&] {
      auto x = store->Reap(ReapPolicy{});
      if (x.ok()) {
        ++ok;
        if (x->ran) ++ran;
      }
    });
  }
  for (auto& n : nodes) n.join();
  CHECK(ok == 2);
  CHECK(ran >= 1);
}

TEST_CASE("the reaper marks dead nodes and workers and trims old history", "[queue][reap]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NodeInfo node{"node-dead", "host-a", 42, "process", 1, {}};
  REQUIRE(store->RegisterNode(node).ok());
  REQUIRE(store->RegisterWorker({"w-dead", "node-dead", WorkerState::kIdle, {}, {}, {}}).ok());
  REQUIRE(store->RegisterNode({"node-live", "host-b", 43, "docker", 2, {}}).ok());
  auto done = store->Submit(Echo());
  REQUIRE(store->Claim(ClaimFor({"w1"}))->size() == 1);
  REQUIRE(*store->Finish(done->task.id, "w1", Report(TaskState::kSucceeded)) ==
          FinishOutcome::kFinished);
  {
    pqxx::connection conn(db.conninfo());
    pqxx::work tx(conn);
    tx.exec("UPDATE nodes SET heartbeat_at = now() - interval '1 hour' WHERE id = 'node-dead'");
    tx.exec("UPDATE workers SET heartbeat_at = now() - interval '1 hour'");
    tx.exec("UPDATE tasks SET finished_at = now() - interval '30 days'");
    tx.exec("UPDATE events SET at = now() - interval '30 days'");
    tx.commit();
  }
  auto dead = store->DeadNodeIds(90s);
  REQUIRE(dead.ok());
  CHECK(*dead == std::vector<std::string>{"node-dead"});
  auto r = store->Reap(ReapPolicy{});
  REQUIRE(r.ok());
  CHECK(r->ran);
  CHECK(r->dead_nodes == 1);
  CHECK(r->dead_workers == 1);
  CHECK(r->deleted_tasks == 1);
  CHECK(r->deleted_events >= 3);
  auto nodes = store->ListNodes();
  REQUIRE(nodes->size() == 1);
  CHECK(nodes->front().id == "node-live");
  CHECK(store->ListWorkers()->empty());
  CHECK(*store->DeadNodeIds(90s) == std::vector<std::string>{"node-dead"});
  CHECK(store->Get(done->task.id).error().code == "not_found");
  REQUIRE(store->DeregisterNode("node-live").ok());
  CHECK(store->ListNodes()->empty());
}

TEST_CASE("counts per state are right and cached for a moment", "[queue][counts]") {
  TestDatabase db;
  StoreOptions options;
  options.counts_cache = 0ms;
  auto store = OpenStore(db, options);
  std::vector<NewTask> batch(4, Echo());
  auto s = store->SubmitBatch(batch);
  REQUIRE(s.ok());
  REQUIRE(store->Claim(ClaimFor({"w1", "w2"}))->size() == 2);
  auto claimed = store->Get(s->at(0).task.id);
  REQUIRE(*store->Finish(claimed->id, *claimed->worker_id, Report(TaskState::kSucceeded)) ==
          FinishOutcome::kFinished);
  REQUIRE(store->Cancel(s->at(3).task.id).ok());
  auto c = store->Counts();
  REQUIRE(c.ok());
  CHECK(c->at(TaskState::kQueued) == 1);
  CHECK(c->at(TaskState::kRunning) == 1);
  CHECK(c->at(TaskState::kSucceeded) == 1);
  CHECK(c->at(TaskState::kCancelled) == 1);
  CHECK(c->at(TaskState::kFailed) == 0);
  CHECK(c->at(TaskState::kTimedOut) == 0);

  TestDatabase db2;
  StoreOptions cached;
  cached.counts_cache = 10s;
  auto store2 = OpenStore(db2, cached);
  CHECK(store2->Counts()->at(TaskState::kQueued) == 0);
  REQUIRE(store2->Submit(Echo()).ok());
  CHECK(store2->Counts()->at(TaskState::kQueued) == 0);  // served from the cache
}

TEST_CASE("listing pages through tasks newest first with a cursor", "[queue][list]") {
  TestDatabase db;
  auto store = OpenStore(db);
  std::vector<std::string> ids;
  for (int i = 0; i < 25; ++i) {
    NewTask t = Echo();
    t.queue = i % 5 == 0 ? "rare" : "default";
    ids.push_back(store->Submit(t)->task.id);
  }
  TaskFilter f;
  f.limit = 10;
  std::vector<std::string> seen;
  int pages = 0;
  while (true) {
    auto page = store->List(f);
    INFO((page.ok() ? std::string() : page.error().message));
    REQUIRE(page.ok());
    ++pages;
    for (const auto& t : page->tasks) seen.push_back(t.id);
    if (!page->next_cursor) break;
    f.cursor = page->next_cursor;
  }
  CHECK(pages == 3);
  std::vector<std::string> newest_first(ids.rbegin(), ids.rend());
  CHECK(seen == newest_first);

  TaskFilter rare;
  rare.queue = "rare";
  CHECK(store->List(rare)->tasks.size() == 5);
  TaskFilter running;
  running.state = TaskState::kRunning;
  CHECK(store->List(running)->tasks.empty());
  TaskFilter bad;
  bad.cursor = "garbage";
  CHECK(store->List(bad).error().code == "validation_failed");
  bad.cursor.reset();
  bad.limit = 0;
  CHECK(store->List(bad).error().code == "validation_failed");
}

TEST_CASE("events are kept in order and readable after an id", "[queue][events]") {
  TestDatabase db;
  auto store = OpenStore(db);
  REQUIRE(store->Emit({"pool.scaled", std::nullopt, std::nullopt, R"({"target":4})"}).ok());
  auto s = store->Submit(Echo());
  auto all = store->EventsAfter(0, 100);
  REQUIRE(all.ok());
  REQUIRE(all->size() == 2);
  CHECK(all->at(0).kind == "pool.scaled");
  CHECK(all->at(0).data_json == R"({"target": 4})");
  CHECK(all->at(1).kind == "task.queued");
  CHECK(all->at(1).task_id == s->task.id);
  auto later = store->EventsAfter(all->at(0).id, 100);
  CHECK(later->size() == 1);
}

TEST_CASE("the reaper fails dependents left waiting on a dependency that failed",
          "[queue][reap][dependencies]") {
  TestDatabase db;
  auto store = OpenStore(db);
  auto parent = store->Submit(Echo());
  NewTask child = Echo();
  child.depends_on = {parent->task.id};
  auto c = store->Submit(child);
  REQUIRE(c.ok());
  // As if a node crashed between finishing the parent and failing its dependents.
  Scalar(db, "UPDATE tasks SET state = 'failed', finished_at = now() WHERE id = '" +
                 parent->task.id + "' RETURNING id");
  REQUIRE(store->Reap(ReapPolicy{})->ran);
  auto t = store->Get(c->task.id);
  CHECK(t->state == TaskState::kFailed);
  CHECK(t->error->code == "dependency_failed");
}
