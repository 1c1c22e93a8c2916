#include "runner/schedule/scheduler.h"

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <catch2/catch.hpp>
#include <memory>
#include <pqxx/pqxx>
#include <set>
#include <sstream>
#include <thread>

#include "runner/queue/postgres_store.h"
#include "runner/schedule/schedule_store.h"
#include "runner/secrets/secret_box.h"
#include "tests/support/fakes/manual_clock.h"
#include "tests/support/services.h"

namespace runner::schedule {
namespace {

using namespace std::chrono_literals;
using runner::testing::ManualClock;
using runner::testing::TestDatabase;

// 2026-06-01T00:00:00Z, a whole minute, so `every` slots land on seconds.
const auto kStart = std::chrono::system_clock::time_point(std::chrono::seconds(1780272000));

std::string Scalar(const TestDatabase& db, const std::string& query) {
  pqxx::connection conn(db.conninfo());
  pqxx::nontransaction tx(conn);
  auto r = tx.exec(query);
  return r[0][0].is_null() ? "" : r[0][0].as<std::string>();
}

int Count(const TestDatabase& db, const std::string& query) { return std::stoi(Scalar(db, query)); }

// A database with the queue schema, a schedule store and a scheduler on a
// manual clock, as one node has them.
struct Fixture {
  TestDatabase db;
  queue::StoreOptions options;
  std::unique_ptr<queue::PostgresStore> queue;
  std::unique_ptr<ScheduleStore> store;
  ManualClock clock{kStart};
  metrics::Registry registry;
  std::unique_ptr<Scheduler> scheduler;

  explicit Fixture(SchedulerOptions so = {},
                   std::shared_ptr<const secrets::SecretKey> key = nullptr) {
    options.conninfo = db.conninfo();
    options.secret_key = std::move(key);
    auto q = queue::PostgresStore::Open(options);
    if (!q) throw std::runtime_error(q.error().message);
    queue = std::move(*q);
    auto s = ScheduleStore::Open(options);
    if (!s) throw std::runtime_error(s.error().message);
    store = std::move(*s);
    scheduler = std::make_unique<Scheduler>(*store, clock, registry, so);
  }

  Schedule Every(const std::string& name, double every, Overlap overlap = Overlap::kSkip,
                 CatchUp catch_up = CatchUp::kNone) {
    ScheduleSpec spec;
    spec.name = name;
    spec.every = every;
    spec.task.command = {"true"};
    spec.task_json = R"({"command":["true"]})";
    spec.overlap = overlap;
    spec.catch_up = catch_up;
    auto made = store->Create(spec, clock.SystemNow());
    if (!made) throw std::runtime_error(made.error().message);
    return *made;
  }

  PassReport Pass() {
    auto r = scheduler->RunOnce();
    if (!r) throw std::runtime_error(r.error().message);
    return *r;
  }

  int Tasks(const std::string& name, const std::string& state = "") {
    return Count(db, "SELECT count(*) FROM tasks WHERE schedule = '" + name + "'" +
                         (state.empty() ? "" : " AND state = '" + state + "'"));
  }
};

TEST_CASE("an every schedule makes one task per slot at created_at + k * every", "[schedule]") {
  Fixture f;
  f.Every("tick", 2, Overlap::kAllow);
  CHECK(f.Pass().fired == 0);  // nothing is due at creation
  for (int k = 1; k <= 5; ++k) {
    f.clock.Advance(2s);
    CHECK(f.Pass().fired == 1);
    CHECK(f.Pass().fired == 0);  // the same slot never fires twice
  }
  CHECK(f.Tasks("tick") == 5);
  // The slots are exactly `every` apart from created_at, and the task says so.
  CHECK(Scalar(f.db,
               "SELECT string_agg(extract(epoch FROM scheduled_for)::bigint::text, ',' ORDER BY "
               "scheduled_for) FROM tasks WHERE schedule = 'tick'") ==
        "1780272002,1780272004,1780272006,1780272008,1780272010");
  CHECK(Scalar(f.db,
               "SELECT idempotency_key FROM tasks WHERE schedule = 'tick' ORDER BY "
               "scheduled_for LIMIT 1") == "schedule:tick:2026-06-01T00:00:02.000000Z");
  auto s = f.store->Get("tick");
  REQUIRE(s.ok());
  CHECK(ToMicros(*s->next_run_at) == ToMicros(kStart + 12s));
  CHECK(s->last_task_id.has_value());
  CHECK(Count(f.db, "SELECT count(*) FROM events WHERE kind = 'schedule.fired'") == 5);
}

TEST_CASE("a schedule's tasks keep the task's queue, group and labels", "[schedule]") {
  Fixture f;
  ScheduleSpec spec;
  spec.name = "grouped";
  spec.every = 1;
  spec.task.command = {"sh", "-c", "echo a b"};
  spec.task.queue = "reports";
  spec.task.group = "team-a";
  spec.task.labels = {{"k", "v"}};
  REQUIRE(f.store->Create(spec, f.clock.SystemNow()).ok());
  f.clock.Advance(1s);
  CHECK(f.Pass().fired == 1);
  CHECK(Scalar(f.db,
               "SELECT queue || ' ' || \"group\" || ' ' || (labels->>'k') || ' ' || "
               "array_to_string(command, '|') FROM tasks") == "reports team-a v sh|-c|echo a b");
}

TEST_CASE("two nodes firing the same schedules make exactly one task per slot", "[schedule]") {
  Fixture a;
  auto b_store = ScheduleStore::Open(a.options);
  REQUIRE(b_store.ok());
  metrics::Registry b_registry;
  Scheduler b(**b_store, a.clock, b_registry);
  for (int i = 0; i < 4; ++i) a.Every("s" + std::to_string(i), 1, Overlap::kAllow);
  // 60 one-second slots of 4 schedules, both nodes racing for every one.
  int fired = 0;
  for (int second = 0; second < 60; ++second) {
    a.clock.Advance(1s);
    Result<PassReport> ra = PassReport{}, rb = PassReport{};
    std::thread other([&] { rb = b.RunOnce(); });
    ra = a.scheduler->RunOnce();
    other.join();
    REQUIRE(ra.ok());
    REQUIRE(rb.ok());
    fired += ra->fired + rb->fired;
  }
  CHECK(fired == 240);
  CHECK(Count(a.db, "SELECT count(*) FROM tasks") == 240);
  CHECK(Count(a.db, "SELECT count(DISTINCT (schedule, scheduled_for)) FROM tasks") == 240);
  CHECK(Count(a.db, "SELECT count(*) FROM events WHERE kind = 'schedule.fired'") == 240);
}

TEST_CASE("overlap skip makes no task while one is live, and says so", "[schedule]") {
  Fixture f;
  f.Every("nightly", 10);
  f.clock.Advance(10s);
  CHECK(f.Pass().fired == 1);
  f.clock.Advance(10s);
  auto second = f.Pass();
  CHECK(second.fired == 0);
  CHECK(second.skipped == 1);
  CHECK(f.Tasks("nightly") == 1);
  CHECK(Count(f.db,
              "SELECT count(*) FROM events WHERE kind = 'schedule.skipped' AND "
              "data->>'reason' = 'overlap'") == 1);
  // Once the live task ends, the next slot fires again.
  auto live = f.queue->Cancel(Scalar(f.db, "SELECT id FROM tasks WHERE schedule = 'nightly'"));
  REQUIRE(live.ok());
  f.clock.Advance(10s);
  CHECK(f.Pass().fired == 1);
  CHECK(f.Tasks("nightly") == 2);
}

TEST_CASE("overlap allow makes a task for every slot", "[schedule]") {
  Fixture f;
  f.Every("many", 5, Overlap::kAllow);
  for (int i = 0; i < 3; ++i) {
    f.clock.Advance(5s);
    CHECK(f.Pass().fired == 1);
  }
  CHECK(f.Tasks("many", "queued") == 3);
}

TEST_CASE("overlap cancel_previous cancels the queued one and stops the running one",
          "[schedule]") {
  Fixture f;
  f.Every("latest-only", 5, Overlap::kCancelPrevious);
  f.clock.Advance(5s);
  CHECK(f.Pass().fired == 1);
  f.clock.Advance(5s);
  CHECK(f.Pass().fired == 1);
  CHECK(f.Tasks("latest-only", "cancelled") == 1);
  CHECK(f.Tasks("latest-only", "queued") == 1);
  // The live one starts running; the next slot asks it to stop.
  queue::ClaimRequest claim;
  claim.node_id = "node-a";
  claim.worker_ids = {"worker-a"};
  auto claimed = f.queue->Claim(claim);
  REQUIRE(claimed.ok());
  REQUIRE(claimed->size() == 1);
  f.clock.Advance(5s);
  CHECK(f.Pass().fired == 1);
  CHECK(Scalar(f.db, "SELECT cancel_requested FROM tasks WHERE id = '" + claimed->front().id +
                         "'") == "t");
  CHECK(f.Tasks("latest-only", "queued") == 1);
}

TEST_CASE("catch_up decides what the slots missed while down become", "[schedule]") {
  SchedulerOptions so;
  so.miss_grace = 1s;
  Fixture f(so);
  f.Every("none", 10, Overlap::kAllow, CatchUp::kNone);
  f.Every("latest", 10, Overlap::kAllow, CatchUp::kLatest);
  f.Every("all", 10, Overlap::kAllow, CatchUp::kAll);
  // Down for 105 s: ten slots passed, the latest 5 s ago.
  f.clock.Advance(105s);
  f.Pass();
  CHECK(f.Tasks("none") == 0);
  CHECK(f.Tasks("latest") == 1);
  CHECK(Scalar(f.db,
               "SELECT extract(epoch FROM scheduled_for)::bigint FROM tasks WHERE "
               "schedule = 'latest'") == "1780272100");
  CHECK(f.Tasks("all") == 10);
  CHECK(Count(f.db, "SELECT count(DISTINCT scheduled_for) FROM tasks WHERE schedule = 'all'") ==
        10);
  // Each resumes at the next slot after now.
  for (const char* name : {"none", "latest", "all"}) {
    auto s = f.store->Get(name);
    REQUIRE(s.ok());
    CHECK(ToMicros(*s->next_run_at) == ToMicros(kStart + 110s));
  }
  CHECK(Count(f.db,
              "SELECT coalesce(sum((data->>'missed')::int), 0) FROM events WHERE kind = "
              "'schedule.skipped' AND data->>'schedule' = 'none'") == 10);
  // A pass that is merely late (within the grace) still fires with `none`.
  f.clock.Advance(5s + 500ms);
  f.Pass();
  CHECK(f.Tasks("none") == 1);
}

TEST_CASE("catch_up all makes at most 100 tasks after a long outage", "[schedule]") {
  Fixture f;
  f.Every("all", 1, Overlap::kAllow, CatchUp::kAll);
  f.clock.Advance(500s);
  CHECK(f.Pass().fired == 100);
  CHECK(Scalar(f.db, "SELECT min(extract(epoch FROM scheduled_for))::bigint FROM tasks") ==
        "1780272401");
}

TEST_CASE("the metrics count fired and skipped slots and the lag from slot to task",
          "[schedule][metrics]") {
  SchedulerOptions so;
  so.miss_grace = 1s;
  Fixture f(so);
  f.Every("m", 10);  // overlap skip, catch_up none
  auto& fired = f.registry.GetCounter("runner_schedule_fired_total", "");
  auto& overlap =
      f.registry.GetCounter("runner_schedule_skipped_total", "", {{"reason", "overlap"}});
  auto& missed = f.registry.GetCounter("runner_schedule_skipped_total", "", {{"reason", "missed"}});
  auto& lag = f.registry.GetHistogram("runner_schedule_lag_seconds", "", metrics::LatencyBuckets());
  // A pass a quarter of a second after the slot: one task, 0.25 s of lag.
  f.clock.Advance(10s + 250ms);
  CHECK(f.Pass().fired == 1);
  CHECK(fired.Value() == 1);
  REQUIRE(lag.Count() == 1);
  CHECK(lag.Sum() == Approx(0.25).margin(0.001));
  // The next slot finds that task still queued: skipped for overlap.
  f.clock.Advance(10s);
  CHECK(f.Pass().skipped == 1);
  CHECK(overlap.Value() == 1);
  CHECK(fired.Value() == 1);
  // Down for 45 s: the slots at 30, 40, 50 and 60 s pass; catch_up none misses them.
  f.clock.Advance(45s);
  CHECK(f.Pass().skipped == 4);
  CHECK(missed.Value() == 4);
  CHECK(fired.Value() == 1);
  CHECK(lag.Count() == 1);
  const std::string text = f.registry.Render();
  CHECK_THAT(text, Catch::Contains("runner_schedule_skipped_total{reason=\"missed\"} 4"));
  CHECK_THAT(text, Catch::Contains("runner_schedule_fired_total 1"));
}

TEST_CASE("a schedule's secrets are sealed at rest and each of its tasks opens them",
          "[schedule][secrets]") {
  std::array<unsigned char, secrets::kKeyBytes> bytes{};
  bytes.fill(7);
  Fixture f({}, std::make_shared<const secrets::SecretKey>(secrets::SecretKey::FromBytes(bytes)));
  ScheduleSpec spec;
  spec.name = "deploy";
  spec.every = 5;
  spec.overlap = Overlap::kAllow;
  spec.task.command = {"true"};
  spec.task.secrets = {{"TOKEN", "hunter2-sched"}};
  spec.task_json = R"({"command":["true"],"secrets":["TOKEN"]})";
  REQUIRE(f.store->Create(spec, f.clock.SystemNow()).ok());
  CHECK(Count(f.db, "SELECT count(*) FROM schedules WHERE schedules::text LIKE '%hunter2%'") == 0);
  // A slot's task and a manual one.
  f.clock.Advance(5s);
  CHECK(f.Pass().fired == 1);
  REQUIRE(f.store->Trigger("deploy", f.clock.SystemNow()).ok());
  CHECK(Count(f.db, "SELECT count(*) FROM tasks WHERE tasks::text LIKE '%hunter2%'") == 0);
  CHECK(Count(f.db,
              "SELECT count(*) FROM tasks WHERE secret_names = '{TOKEN}' AND secrets_sealed IS "
              "NOT NULL") == 2);
  // Sealed for each task's own id: the claim opens them as any task's.
  queue::ClaimRequest claim;
  claim.node_id = "node-a";
  claim.worker_ids = {"worker-a", "worker-b"};
  auto claimed = f.queue->Claim(claim);
  REQUIRE(claimed.ok());
  REQUIRE(claimed->size() == 2);
  for (const auto& t : *claimed) {
    CHECK_FALSE(t.secrets_error.has_value());
    CHECK(t.secrets == std::map<std::string, std::string>{{"TOKEN", "hunter2-sched"}});
  }
  // A node without the key still makes the slot's task, but one that no
  // claim opens: it fails instead of running without its secrets.
  queue::StoreOptions keyless = f.options;
  keyless.secret_key = nullptr;
  auto other = ScheduleStore::Open(keyless);
  REQUIRE(other.ok());
  metrics::Registry other_registry;
  Scheduler other_node(**other, f.clock, other_registry);
  f.clock.Advance(5s);
  auto pass = other_node.RunOnce();
  REQUIRE(pass.ok());
  CHECK(pass->fired == 1);
  claim.worker_ids = {"worker-c"};
  claimed = f.queue->Claim(claim);
  REQUIRE(claimed.ok());
  REQUIRE(claimed->size() == 1);
  REQUIRE(claimed->front().secrets_error.has_value());
  CHECK(claimed->front().secrets_error->code == "secrets_unavailable");
  CHECK(claimed->front().secrets.empty());
}

TEST_CASE("a paused schedule makes no task but its next run moves on", "[schedule]") {
  Fixture f;
  auto made = f.Every("paused", 10);
  ScheduleSpec spec = made.spec;
  spec.task.command = {"true"};
  spec.paused = true;
  REQUIRE(f.store->Replace(spec, f.clock.SystemNow()).ok());
  f.clock.Advance(35s);
  f.Pass();
  CHECK(f.Tasks("paused") == 0);
  auto s = f.store->Get("paused");
  REQUIRE(s.ok());
  CHECK(ToMicros(*s->next_run_at) == ToMicros(kStart + 40s));
  spec.paused = false;
  REQUIRE(f.store->Replace(spec, f.clock.SystemNow()).ok());
  f.clock.Advance(5s);
  CHECK(f.Pass().fired == 1);
}

TEST_CASE("a deleted schedule makes no more tasks", "[schedule]") {
  Fixture f;
  f.Every("gone", 1, Overlap::kAllow);
  f.clock.Advance(1s);
  CHECK(f.Pass().fired == 1);
  REQUIRE(f.store->Delete("gone").ok());
  f.clock.Advance(5s);
  CHECK(f.Pass().fired == 0);
  CHECK(f.Tasks("gone") == 1);
}

TEST_CASE("a cron schedule fires at its local wall-clock slot", "[schedule]") {
  Fixture f;
  ScheduleSpec spec;
  spec.name = "berlin";
  spec.cron = "30 2 * * *";
  spec.timezone = "Europe/Berlin";
  spec.task.command = {"true"};
  // 2026-06-01 is summer time (UTC+2): 02:30 local is 00:30 UTC.
  auto made = f.store->Create(spec, f.clock.SystemNow());
  REQUIRE(made.ok());
  CHECK(ToMicros(*made->next_run_at) == ToMicros(kStart + 30min));
  f.clock.Advance(30min);
  CHECK(f.Pass().fired == 1);
}

TEST_CASE("the running loop makes each task within a second of its slot", "[schedule]") {
  // Real time here: what is measured is the loop's wake-up, not a policy.
  TestDatabase db;
  queue::StoreOptions options;
  options.conninfo = db.conninfo();
  auto q = queue::PostgresStore::Open(options);
  REQUIRE(q.ok());
  auto store = ScheduleStore::Open(options);
  REQUIRE(store.ok());
  metrics::Registry registry;
  Scheduler scheduler(**store, SystemClock(), registry);
  ScheduleSpec spec;
  spec.name = "fast";
  spec.every = 1;
  spec.overlap = Overlap::kAllow;
  spec.task.command = {"true"};
  REQUIRE((*store)->Create(spec, SystemClock().SystemNow()).ok());
  scheduler.Start();
  REQUIRE(
      runner::testing::WaitFor([&] { return Count(db, "SELECT count(*) FROM tasks") >= 3; }, 10s));
  scheduler.Stop();
  CHECK(std::stod(Scalar(db,
                         "SELECT max(extract(epoch FROM created_at - scheduled_for)) FROM "
                         "tasks")) < 1.0);
}

}  // namespace
}  // namespace runner::schedule

namespace runner::schedule {
namespace {

// Schedule-store statements (of any node) waiting for a row lock.
int BlockedOnLock(const TestDatabase& db) {
  return Count(db,
               "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
               "application_name = 'runner-schedules' AND wait_event_type = 'Lock'");
}

// Holds the schedule's row lock until Release(), so the test can line up
// a DELETE and a fire behind it in the order it wants.
struct RowLock {
  pqxx::connection conn;
  pqxx::work tx;
  RowLock(const TestDatabase& db, const std::string& name) : conn(db.conninfo()), tx(conn) {
    tx.exec("SELECT 1 FROM schedules WHERE name = " + tx.quote(name) + " FOR UPDATE");
  }
  void Release() { tx.abort(); }
};

}  // namespace

TEST_CASE("a schedule deleted while its slot fires loses nothing and fires nothing after",
          "[schedule]") {
  Fixture f;
  auto api = ScheduleStore::Open(f.options);  // the DELETE comes from another node
  REQUIRE(api.ok());
  f.Every("racing", 10, Overlap::kAllow);
  f.clock.Advance(10s);

  SECTION("the DELETE takes the row first: the fire finds no schedule and makes no task") {
    RowLock lock(f.db, "racing");
    Status deleted = Status{};
    std::thread del([&] { deleted = (*api)->Delete("racing"); });
    REQUIRE(testing::WaitFor([&] { return BlockedOnLock(f.db) == 1; }, 10s, 10ms));
    Result<PassReport> pass = PassReport{};
    std::thread fire([&] { pass = f.scheduler->RunOnce(); });
    REQUIRE(testing::WaitFor([&] { return BlockedOnLock(f.db) == 2; }, 10s, 10ms));
    lock.Release();
    del.join();
    fire.join();
    REQUIRE(deleted.ok());
    REQUIRE(pass.ok());
    CHECK(pass->fired == 0);
    CHECK(f.Tasks("racing") == 0);
    CHECK(Count(f.db, "SELECT count(*) FROM events WHERE kind = 'schedule.fired'") == 0);
  }
  SECTION("the fire takes the row first: its slot's task is made, then the schedule goes") {
    RowLock lock(f.db, "racing");
    Result<PassReport> pass = PassReport{};
    std::thread fire([&] { pass = f.scheduler->RunOnce(); });
    REQUIRE(testing::WaitFor([&] { return BlockedOnLock(f.db) == 1; }, 10s, 10ms));
    Status deleted = Status{};
    std::thread del([&] { deleted = (*api)->Delete("racing"); });
    REQUIRE(testing::WaitFor([&] { return BlockedOnLock(f.db) == 2; }, 10s, 10ms));
    lock.Release();
    fire.join();
    del.join();
    REQUIRE(pass.ok());
    REQUIRE(deleted.ok());
    CHECK(pass->fired == 1);
    CHECK(f.Tasks("racing") == 1);
    CHECK(Count(f.db, "SELECT count(*) FROM events WHERE kind = 'schedule.fired'") == 1);
  }
  CHECK(Count(f.db, "SELECT count(*) FROM schedules") == 0);
  CHECK(Count(f.db, "SELECT count(*) FROM events WHERE kind = 'schedule.deleted'") == 1);
  // Nothing afterwards, on either node.
  const int made = f.Tasks("racing");
  for (int i = 0; i < 3; ++i) {
    f.clock.Advance(10s);
    CHECK(f.Pass().fired == 0);
  }
  CHECK(f.Tasks("racing") == made);
  CHECK((*api)->Trigger("racing", f.clock.SystemNow()).error().code == "not_found");
}

TEST_CASE("a paused schedule runs when triggered and stays paused on its slots", "[schedule]") {
  Fixture f;
  auto made = f.Every("held", 10);  // overlap skip
  ScheduleSpec spec = made.spec;
  spec.task.command = {"true"};
  spec.paused = true;
  REQUIRE(f.store->Replace(spec, f.clock.SystemNow()).ok());
  f.clock.Advance(3s);
  auto id = f.store->Trigger("held", f.clock.SystemNow());
  REQUIRE(id.ok());
  CHECK(Scalar(f.db,
               "SELECT schedule || ' ' || extract(epoch FROM scheduled_for)::bigint || ' ' "
               "|| state FROM tasks WHERE id = '" +
                   *id + "'") == "held 1780272003 queued");
  auto s = f.store->Get("held");
  REQUIRE(s.ok());
  CHECK(s->spec.paused);
  CHECK(s->last_task_id == *id);
  CHECK(ToMicros(*s->next_run_at) == ToMicros(kStart + 10s));  // the slots did not move
  // A manual run ignores overlap: a second one while the first is queued.
  REQUIRE(f.store->Trigger("held", f.clock.SystemNow()).ok());
  CHECK(f.Tasks("held") == 2);
  // The slots stay paused.
  f.clock.Advance(30s);
  auto pass = f.Pass();
  CHECK(pass.fired == 0);
  CHECK(pass.skipped == 0);
  CHECK(f.Tasks("held") == 2);
  CHECK(Count(f.db,
              "SELECT count(*) FROM events WHERE kind = 'schedule.fired' AND "
              "(data->>'trigger')::boolean") == 2);
}

}  // namespace runner::schedule

namespace runner::schedule {

TEST_CASE("a schedule whose slots cannot be computed neither spins the loop nor holds up others",
          "[schedule]") {
  // Real time: what is measured is how often the loop passes.
  TestDatabase db;
  queue::StoreOptions options;
  options.conninfo = db.conninfo();
  auto q = queue::PostgresStore::Open(options);
  REQUIRE(q.ok());
  auto store = ScheduleStore::Open(options);
  REQUIRE(store.ok());
  ScheduleSpec spec;
  spec.name = "lost-zone";
  spec.cron = "* * * * *";
  spec.timezone = "Europe/Berlin";
  spec.task.command = {"true"};
  REQUIRE((*store)->Create(spec, SystemClock().SystemNow()).ok());
  // Its zone leaves tzdata (as Debian moved US/Eastern to tzdata-legacy),
  // with a slot due.
  {
    pqxx::connection c(db.conninfo());
    pqxx::nontransaction tx(c);
    tx.exec(
        "UPDATE schedules SET timezone = 'Mars/Olympus_Mons', next_run_at = now() - "
        "interval '1 minute'");
  }
  spec.name = "healthy";
  spec.cron.reset();
  spec.timezone = "UTC";
  spec.every = 1;
  spec.overlap = Overlap::kAllow;
  REQUIRE((*store)->Create(spec, SystemClock().SystemNow()).ok());

  auto out = std::make_shared<std::ostringstream>();
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*out);
  auto logger = spdlog::default_logger();
  logger->sinks().push_back(sink);
  metrics::Registry registry;
  {
    Scheduler scheduler(**store, SystemClock(), registry);
    scheduler.Start();
    std::this_thread::sleep_for(2500ms);
    scheduler.Stop();
  }
  logger->sinks().pop_back();
  const std::string log = out->str();
  int passes = 0;
  for (auto at = log.find("cannot compute slots"); at != std::string::npos;
       at = log.find("cannot compute slots", at + 1)) {
    ++passes;
  }
  INFO(passes << " passes tried the broken schedule");
  CHECK(passes >= 1);
  CHECK(passes <= 5);  // once a poll (1 s), not every 10 ms
  CHECK(log.find("schedule=lost-zone") != std::string::npos);
  CHECK(Count(db, "SELECT count(*) FROM tasks WHERE schedule = 'healthy'") >= 2);
  CHECK(Count(db, "SELECT count(*) FROM tasks WHERE schedule = 'lost-zone'") == 0);
}

}  // namespace runner::schedule
