// Fair order between groups and the per-queue policies (issue #18), on real
// PostgreSQL with two stores standing for two nodes.

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include "base/ulid.h"
#include "runner/queue/migrations.h"
#include "runner/queue/queue_sql.h"
#include "tests/integration/queue/queue_fixture.h"

using namespace runner::queue;
using namespace runner::queue::testing;
using runner::testing::TestDatabase;
using runner::testing::WaitFor;
using namespace std::chrono_literals;

namespace {

NewTask InGroup(const std::string& queue, const std::string& group) {
  NewTask t = Echo(group);
  t.queue = queue;
  if (!group.empty()) t.group = group;
  return t;
}

QueuePolicy Caps(std::optional<int> max_running, std::optional<int> per_group) {
  QueuePolicy p;
  p.max_running = max_running;
  p.max_running_per_group = per_group;
  return p;
}

// The most tasks of `queue` (of one group with by_group) running at any start,
// from the start and finish times: a claim that sees a freed slot started
// after the finish committed, so these intervals never overlap falsely.
int64_t MaxOverlap(const TestDatabase& db, const std::string& queue, bool by_group) {
  const std::string same = by_group ? " AND o.\"group\" IS NOT DISTINCT FROM t.\"group\"" : "";
  return std::stoll(Scalar(
      db,
      "SELECT coalesce(max(n), 0) FROM (SELECT (SELECT count(*) FROM tasks o WHERE o.queue = "
      "t.queue AND o.started_at <= t.started_at AND (o.finished_at IS NULL OR o.finished_at > "
      "t.started_at)" +
          same + ") AS n FROM tasks t WHERE t.queue = '" + queue +
          "' AND t.started_at IS NOT NULL) x"));
}

}  // namespace

TEST_CASE("caps hold with eight claimers on two nodes, checked at every claim",
          "[queue][policy][caps]") {
  TestDatabase db;
  StoreOptions options;
  options.pool_size = 6;
  auto node_a = OpenStore(db, options);
  auto node_b = OpenStore(db, options);
  constexpr int kMax = 4;
  constexpr int kPerGroup = 2;
  REQUIRE(node_a->SetQueuePolicy("capped", Caps(kMax, kPerGroup)).ok());
  std::vector<NewTask> batch;
  for (int g = 0; g < 5; ++g) {
    for (int i = 0; i < 24; ++i) batch.push_back(InGroup("capped", "g" + std::to_string(g)));
  }
  for (int i = 0; i < 40; ++i) batch.push_back(InGroup("free", ""));
  REQUIRE(node_a->SubmitBatch(batch).ok());
  const int total = static_cast<int>(batch.size());

  std::mutex mu;
  int running = 0;                 // guarded by mu: capped tasks running
  std::map<std::string, int> per;  // guarded by mu: by group
  int worst = 0;
  int worst_group = 0;
  std::atomic<int> done{0};
  auto track = [&](const Task& t, int delta) {
    if (t.queue != "capped") return;
    std::lock_guard lock(mu);
    running += delta;
    per[*t.group] += delta;
    worst = std::max(worst, running);
    worst_group = std::max(worst_group, per[*t.group]);
  };
  std::vector<std::thread> threads;
  for (int c = 0; c < 8; ++c) {
    PostgresStore& store = c % 2 == 0 ? *node_a : *node_b;
    threads.emplace_back([&, c] {
      const std::string node = c % 2 == 0 ? "node-a" : "node-b";
      const std::string w = "w" + std::to_string(c);
      const auto deadline = std::chrono::steady_clock::now() + 60s;
      std::optional<Task> held;
      while (done.load() < total && std::chrono::steady_clock::now() < deadline) {
        if (!held) {
          auto r = store.Claim(ClaimFor({w}, node));
          if (!r.ok() || r->empty()) continue;
          held = r->front();
          track(*held, +1);
          continue;
        }
        std::this_thread::sleep_for(2ms);  // the task's work
        track(*held, -1);                  // before the finish commits: never a false alarm
        const Task finished = *held;
        held.reset();
        if (c % 4 < 2) {
          auto next = store.FinishAndClaim(finished.id, w, Report(TaskState::kSucceeded),
                                           ClaimFor({w}, node));
          REQUIRE(next.ok());
          ++done;
          if (next->next) {
            held = next->next;
            track(*held, +1);
          }
        } else {
          REQUIRE(store.Finish(finished.id, w, Report(TaskState::kSucceeded)).ok());
          ++done;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(done.load() == total);
  CHECK(worst <= kMax);
  CHECK(worst_group <= kPerGroup);
  CHECK(worst == kMax);  // the cap was reached: the check was not vacuous
  CHECK(MaxOverlap(db, "capped", false) <= kMax);
  CHECK(MaxOverlap(db, "capped", true) <= kPerGroup);
  CHECK(Scalar(db, "SELECT count(*) FROM tasks WHERE state <> 'succeeded'") == "0");
}

TEST_CASE("a small group's tasks start after about one task of a big group each",
          "[queue][policy][fair]") {
  TestDatabase db;
  auto store = OpenStore(db);
  const bool capped = GENERATE(false, true);
  if (capped) REQUIRE(store->SetQueuePolicy("q", Caps(100, std::nullopt)).ok());
  std::vector<NewTask> big(2000, InGroup("q", "big"));
  REQUIRE(store->SubmitBatch(big).ok());
  for (int i = 0; i < 10; ++i) {  // the big group is under way
    auto r = store->Claim(ClaimFor({"w"}));
    REQUIRE((r.ok() && r->size() == 1));
    REQUIRE(store->Finish(r->front().id, "w", Report(TaskState::kSucceeded)).ok());
  }
  std::vector<NewTask> small(3, InGroup("q", "small"));
  REQUIRE(store->SubmitBatch(small).ok());
  int big_started = 0;
  int small_started = 0;
  while (small_started < 3) {
    auto r = store->Claim(ClaimFor({"w"}));
    REQUIRE((r.ok() && r->size() == 1));
    (*r->front().group == "small" ? small_started : big_started)++;
    REQUIRE(store->Finish(r->front().id, "w", Report(TaskState::kSucceeded)).ok());
    REQUIRE(big_started < 100);
  }
  INFO("capped=" << capped);
  CHECK(big_started <= 3);
}

TEST_CASE("priority still comes before the rotation between groups", "[queue][policy][fair]") {
  TestDatabase db;
  auto store = OpenStore(db);
  std::vector<NewTask> big(50, InGroup("q", "big"));
  for (auto& t : big) t.priority = 5;
  REQUIRE(store->SubmitBatch(big).ok());
  REQUIRE(store->Submit(InGroup("q", "small")).ok());
  for (int i = 0; i < 50; ++i) {
    auto r = store->Claim(ClaimFor({"w"}));
    REQUIRE((r.ok() && r->size() == 1));
    CHECK(*r->front().group == "big");
    REQUIRE(store->Finish(r->front().id, "w", Report(TaskState::kSucceeded)).ok());
  }
}

TEST_CASE("the rate limit is a sliding window: never count + 1 starts within per seconds",
          "[queue][policy][rate]") {
  TestDatabase db;
  auto node_a = OpenStore(db);
  auto node_b = OpenStore(db);
  QueuePolicy p;
  p.rate_limit = RateLimit{5, 0.5};
  REQUIRE(node_a->SetQueuePolicy("rated", p).ok());
  REQUIRE(node_a->SubmitBatch(std::vector<NewTask>(40, InGroup("rated", ""))).ok());
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < 4; ++c) {
    threads.emplace_back([&, c] {
      PostgresStore& store = c % 2 == 0 ? *node_a : *node_b;
      const std::string w = "w" + std::to_string(c);
      const auto deadline = std::chrono::steady_clock::now() + 20s;
      while (started.load() < 17 && std::chrono::steady_clock::now() < deadline) {
        auto r = store.Claim(ClaimFor({w}));
        if (!r.ok() || r->empty()) continue;
        ++started;
        REQUIRE(store.Finish(r->front().id, w, Report(TaskState::kSucceeded)).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  REQUIRE(started.load() >= 17);
  // Any six consecutive starts span at least the window.
  CHECK(Scalar(db,
               "SELECT count(*) FROM (SELECT started_at, lead(started_at, 5) OVER (ORDER BY "
               "started_at) AS sixth FROM tasks WHERE started_at IS NOT NULL) x WHERE sixth < "
               "started_at + interval '0.5 second'") == "0");
  // ...and the window is used: five starts in the first one.
  CHECK(Scalar(db,
               "SELECT count(*) FROM tasks WHERE started_at < (SELECT min(started_at) FROM tasks) "
               "+ interval '0.5 second'") == "5");
}

TEST_CASE("a rate-limited claim says when the window opens", "[queue][policy][rate]") {
  TestDatabase db;
  auto store = OpenStore(db);
  QueuePolicy p;
  p.rate_limit = RateLimit{2, 1.0};
  REQUIRE(store->SetQueuePolicy("rated", p).ok());
  REQUIRE(store->SubmitBatch(std::vector<NewTask>(3, InGroup("rated", ""))).ok());
  auto first = store->Claim(ClaimFor({"w1", "w2", "w3"}));
  REQUIRE(first.ok());
  CHECK(first->size() == 2);
  auto opens = store->NextRateOpening(ClaimFor({"w3"}));
  // After the call: `opens` counts from the database's clock during it, so a
  // t0 taken before would wake early by the call's latency (CI, under load).
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(opens.has_value());
  CHECK(*opens <= 1000ms);
  CHECK(*opens >= 500ms);
  auto queue = store->GetQueue("rated");
  REQUIRE(queue.ok());
  CHECK(queue->throttled == "rate_limit");
  // Not before the window opens, and at once when it does.
  auto early = store->Claim(ClaimFor({"w3"}));
  REQUIRE(early.ok());
  CHECK(early->empty());
  std::this_thread::sleep_until(t0 + *opens + 5ms);  // the claimer's wake-up, as Pool does it
  auto later = store->Claim(ClaimFor({"w3"}));
  REQUIRE(later.ok());
  CHECK(later->size() == 1);
  CHECK_FALSE(store->NextRateOpening(ClaimFor({"w3"})).has_value());
}

TEST_CASE("pause holds a queue's tasks, running ones finish, resume releases them",
          "[queue][policy][pause]") {
  TestDatabase db;
  auto store = OpenStore(db);
  REQUIRE(store->Submit(InGroup("p", "")).ok());
  auto running = store->Claim(ClaimFor({"w1"}));
  REQUIRE((running.ok() && running->size() == 1));
  QueuePolicy paused;
  paused.paused = true;
  REQUIRE(store->SetQueuePolicy("p", paused).ok());
  auto held = store->Submit(InGroup("p", ""));
  REQUIRE(held.ok());
  auto other = store->Submit(InGroup("other", ""));
  REQUIRE(other.ok());
  auto claim = store->Claim(ClaimFor({"w2", "w3"}));
  REQUIRE(claim.ok());
  REQUIRE(claim->size() == 1);
  CHECK(claim->front().id == other->task.id);
  auto q = store->GetQueue("p");
  REQUIRE(q.ok());
  CHECK(q->throttled == "paused");
  CHECK(q->queued == 1);
  CHECK(q->running == 1);
  REQUIRE(store->Finish(running->front().id, "w1", Report(TaskState::kSucceeded)).ok());
  CHECK(store->Get(held->task.id)->attempt == 0);
  auto still = store->Claim(ClaimFor({"w1"}));
  REQUIRE(still.ok());
  CHECK(still->empty());
  REQUIRE(store->SetQueuePolicy("p", QueuePolicy{}).ok());  // resume: no limits at all
  auto resumed = store->Claim(ClaimFor({"w1"}));
  REQUIRE((resumed.ok() && resumed->size() == 1));
  CHECK(resumed->front().id == held->task.id);
  CHECK(Scalar(db, "SELECT count(*) FROM events WHERE kind = 'queue.updated'") == "2");
}

TEST_CASE("a slot freed by a finish is taken in the same statement", "[queue][policy][caps]") {
  TestDatabase db;
  auto store = OpenStore(db);
  REQUIRE(store->SetQueuePolicy("one", Caps(1, std::nullopt)).ok());
  auto a = store->Submit(InGroup("one", ""));
  auto b = store->Submit(InGroup("one", ""));
  REQUIRE((a.ok() && b.ok()));
  auto first = store->Claim(ClaimFor({"w1", "w2"}));
  REQUIRE((first.ok() && first->size() == 1));
  auto none = store->Claim(ClaimFor({"w2"}));
  REQUIRE((none.ok() && none->empty()));
  auto next = store->FinishAndClaim(first->front().id, "w1", Report(TaskState::kSucceeded),
                                    ClaimFor({"w1"}));
  REQUIRE(next.ok());
  REQUIRE(next->next.has_value());
  CHECK(next->next->id == b->task.id);
}

// The one-task claim's fast path (migration v8) hands over to the general walk
// whenever a cap decides: a full group, the last slot taken. The walk then
// takes the next group's task and flags the queue (a finish must wake the
// claimers), as before v8; a claim that fits flags nothing (no notify).
TEST_CASE("a one-task claim past a full group takes the next group and flags the queue",
          "[queue][policy][caps]") {
  TestDatabase db;
  auto store = OpenStore(db);
  REQUIRE(store->SetQueuePolicy("q", Caps(2, 1)).ok());
  const std::string flagged = "SELECT waiting_until > now() FROM queue_policies WHERE queue = 'q'";
  auto a1 = store->Submit(InGroup("q", "a"));
  REQUIRE(a1.ok());
  auto first = store->Claim(ClaimFor({"w1"}));
  REQUIRE((first.ok() && first->size() == 1));
  CHECK(first->front().id == a1->task.id);
  CHECK(Scalar(db, flagged) == "f");  // room left: nothing to wake
  NewTask a2 = InGroup("q", "a");
  a2.priority = 5;  // first in claim order, in the full group
  auto a2r = store->Submit(a2);
  auto b1 = store->Submit(InGroup("q", "b"));
  REQUIRE((a2r.ok() && b1.ok()));
  auto second = store->Claim(ClaimFor({"w2"}));
  REQUIRE((second.ok() && second->size() == 1));
  CHECK(second->front().id == b1->task.id);
  CHECK(Scalar(db, flagged) == "t");  // group a was full: its finish wakes the claimers
  // Both slots taken: none, and a2 waits for a finish.
  auto none = store->Claim(ClaimFor({"w3"}));
  REQUIRE((none.ok() && none->empty()));
  auto next =
      store->FinishAndClaim(a1->task.id, "w1", Report(TaskState::kSucceeded), ClaimFor({"w1"}));
  REQUIRE(next.ok());
  REQUIRE(next->next.has_value());
  CHECK(next->next->id == a2r->task.id);
  CHECK(Scalar(db, "SELECT count(DISTINCT cap_slot) FROM tasks WHERE state = 'running'") == "2");
}

TEST_CASE("a cap set or lowered while tasks run is never exceeded", "[queue][policy][caps]") {
  TestDatabase db;
  auto node_a = OpenStore(db);
  auto node_b = OpenStore(db);
  REQUIRE(node_a->SubmitBatch(std::vector<NewTask>(12, InGroup("low", ""))).ok());
  auto running_count = [&] {
    return std::stoi(Scalar(db, "SELECT count(*) FROM tasks WHERE state = 'running'"));
  };
  // Three start with no policy (they hold no run slot), then the cap comes.
  auto uncapped = node_a->Claim(ClaimFor({"u1", "u2", "u3"}));
  REQUIRE((uncapped.ok() && uncapped->size() == 3));
  REQUIRE(node_a->SetQueuePolicy("low", Caps(4, std::nullopt)).ok());
  auto more = node_b->Claim(ClaimFor({"c1", "c2", "c3"}));
  REQUIRE(more.ok());
  CHECK(running_count() <= 4);
  std::vector<std::pair<std::string, std::string>> live;  // (task, worker)
  for (std::size_t i = 0; i < uncapped->size(); ++i) {
    live.emplace_back((*uncapped)[i].id, "u" + std::to_string(i + 1));
  }
  for (std::size_t i = 0; i < more->size(); ++i) {
    live.emplace_back((*more)[i].id, "c" + std::to_string(i + 1));
  }
  // Lowered below what runs: no start until what runs fits under it.
  REQUIRE(node_b->SetQueuePolicy("low", Caps(2, std::nullopt)).ok());
  int next_worker = 0;
  while (!live.empty()) {
    auto [id, worker] = live.back();
    live.pop_back();
    REQUIRE(node_a->Finish(id, worker, Report(TaskState::kSucceeded)).ok());
    auto c = (live.size() % 2 == 0 ? node_a : node_b)
                 ->Claim(ClaimFor(
                     {"n" + std::to_string(next_worker), "n" + std::to_string(next_worker + 1)}));
    REQUIRE(c.ok());
    for (std::size_t i = 0; i < c->size(); ++i) {
      live.emplace_back((*c)[i].id, "n" + std::to_string(next_worker + static_cast<int>(i)));
    }
    next_worker += 2;
    if (!c->empty()) CHECK(running_count() <= 2);
  }
  // Everything ran, the lowered cap held from the first start after it.
  CHECK(Scalar(db, "SELECT count(*) FROM tasks WHERE state = 'succeeded'") == "12");
}

TEST_CASE("a capped queue's backlog does not slow the claims of another queue",
          "[queue][policy][caps]") {
  TestDatabase db;
  auto store = OpenStore(db);
  auto median_claim = [&](int n) {
    std::vector<double> ms;
    for (int i = 0; i < n; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      auto r = store->Claim(ClaimFor({"w"}));
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      REQUIRE((r.ok() && r->size() == 1));
      CHECK(r->front().queue == "free");
      REQUIRE(store->Finish(r->front().id, "w", Report(TaskState::kSucceeded)).ok());
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  };
  REQUIRE(store->SubmitBatch(std::vector<NewTask>(200, InGroup("free", ""))).ok());
  const double before = median_claim(50);
  // 20,000 tasks of higher priority in a full queue: today's claim would walk them all.
  REQUIRE(store->SetQueuePolicy("full", Caps(1, std::nullopt)).ok());
  auto blocker = InGroup("full", "");
  blocker.priority = 10;
  REQUIRE(store->Submit(blocker).ok());
  auto r = store->Claim(ClaimFor({"x"}));
  REQUIRE((r.ok() && r->size() == 1 && r->front().queue == "full"));
  std::vector<NewTask> backlog(2000, blocker);
  for (int i = 0; i < 10; ++i) REQUIRE(store->SubmitBatch(backlog).ok());
  Scalar(db, "ANALYZE tasks");
  const double after = median_claim(50);
  INFO("median claim before " << before << " ms, after " << after << " ms");
  CHECK(after < before * 2 + 2);
}

TEST_CASE("a populated database at version 5 upgrades: running tasks keep their slots, caps hold",
          "[queue][policy][caps][migrate]") {
  TestDatabase db;
  {
    // The schema as version 5 left it.
    pqxx::connection c(db.conninfo());
    pqxx::nontransaction(c).exec(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())");
    for (const auto& m : Migrations()) {
      if (m.version > 5) continue;
      pqxx::work tx(c);
      tx.exec(std::string(m.sql));
      tx.exec_params("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version,
                     std::string(m.name));
      tx.commit();
    }
  }
  // What a node of that version leaves: a cap of 3, 2 per group, eight tasks
  // in two groups, three of them started by the claim statement (unchanged
  // since) through v5's claim function. Raw SQL: this build's store prepares
  // statements that need the newer schema.
  std::vector<std::pair<std::string, std::string>> live;  // (task, worker)
  {
    pqxx::connection c(db.conninfo());
    pqxx::nontransaction tx(c);
    tx.exec(std::string(sql::kSessionPlanSettings));
    tx.exec(
        "INSERT INTO queue_policies (queue, max_running, max_running_per_group)"
        " VALUES ('capped', 3, 2)");
    for (int i = 0; i < 8; ++i) {
      tx.exec_params(
          "INSERT INTO tasks (id, queue, state, image, command, timeout, \"group\")"
          " VALUES ($1, 'capped', 'queued', 'img', ARRAY['true'], 60, $2)",
          runner::NewUlid(), std::string(i % 2 == 0 ? "a" : "b"));
    }
    c.prepare(sql::kClaim.name, std::string(sql::kClaim.text));
    auto r = tx.exec_prepared(sql::kClaim.name, "{w1,w2,w3,w4}", "old-node", int64_t{30000},
                              nullptr, int64_t{4}, nullptr);
    REQUIRE(r.size() == 3);
    for (const auto& row : tx.exec("SELECT id, lease_owner FROM tasks WHERE state = 'running'")) {
      live.emplace_back(row[0].as<std::string>(), row[1].as<std::string>());
    }
  }
  CHECK(Scalar(db, "SELECT count(DISTINCT cap_slot) FROM tasks WHERE state = 'running'") == "3");

  REQUIRE(Migrate(db.conninfo()).ok());
  CHECK(Scalar(db, "SELECT max(version) FROM schema_migrations") ==
        std::to_string(Migrations().back().version));
  auto node = OpenStore(db);
  auto running = [&] {
    return std::stoi(Scalar(db, "SELECT count(*) FROM tasks WHERE state = 'running'"));
  };
  auto none = node->Claim(ClaimFor({"x1", "x2"}));
  REQUIRE(none.ok());
  CHECK(none->empty());  // the three that run before the upgrade fill the cap
  int next_worker = 0;
  int finished = 0;
  while (!live.empty()) {
    auto [id, worker] = live.front();
    live.erase(live.begin());
    REQUIRE(node->Finish(id, worker, Report(TaskState::kSucceeded)).ok());
    ++finished;
    auto c = node->Claim(
        ClaimFor({"n" + std::to_string(next_worker), "n" + std::to_string(next_worker + 1)}));
    REQUIRE(c.ok());
    for (std::size_t i = 0; i < c->size(); ++i) {
      live.emplace_back((*c)[i].id, "n" + std::to_string(next_worker + static_cast<int>(i)));
    }
    next_worker += 2;
    CHECK(running() <= 3);
    CHECK(std::stoi(Scalar(db,
                           "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM tasks"
                           " WHERE state = 'running' GROUP BY \"group\") g")) <= 2);
  }
  CHECK(finished == 8);
  CHECK(MaxOverlap(db, "capped", false) <= 3);
  CHECK(MaxOverlap(db, "capped", true) <= 2);
}
