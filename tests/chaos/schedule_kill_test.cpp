// Scenario: two nodes serve the same schedules (twenty, one slot a second
// each); one node is SIGKILLed again and again, at random moments, so some
// kills land while it fires. Afterwards, in the database: every schedule
// made exactly one task per slot, with no slot lost and none twice, from its
// first task to its last.
#include <signal.h>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <random>
#include <sstream>
#include <thread>

#include "tests/chaos/scenario.h"

namespace runner::chaos {

TEST_CASE("a node SIGKILLed while firing schedules neither loses nor duplicates a slot",
          "[chaos][schedule]") {
  Scenario s;
  RunnerArgs a = s.Args("victim");
  a.workers = 1;
  a.mode = "process";
  RunnerArgs b = s.Args("survivor");
  b.workers = 1;
  b.mode = "process";
  RunnerProcess& survivor = s.Add(b, "survivor");
  REQUIRE(survivor.Start());
  RunnerProcess& victim = s.Add(a, "victim");
  REQUIRE(victim.Start());

  const int schedules = 20;
  for (int i = 0; i < schedules; ++i) {
    // The tasks wait an hour before they may run: what is checked is their
    // creation, and the host stays free for the nodes.
    const std::string body = R"({"name":"s)" + std::to_string(i) +
                             R"(","every":1,"overlap":"allow","catch_up":"all",)"
                             R"("task":{"command":["true"],"delay":3600}})";
    auto res = HttpPost(i % 2 == 0 ? victim.port() : survivor.port(), "/api/v1/schedules", body);
    INFO(res.body);
    REQUIRE(res.status == 201);
  }
  std::mt19937 rng(19);
  std::uniform_int_distribution<int> pause_ms(300, 1500);
  const int kills = Pick(6, 30);
  for (int k = 0; k < kills; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));
    victim.Signal(SIGKILL);
    REQUIRE(victim.Wait(10s) >= 0);
    REQUIRE(victim.Start());
  }
  // Stop firing, then read what the schedules made.
  victim.Signal(SIGKILL);
  survivor.Signal(SIGKILL);
  REQUIRE(victim.Wait(10s) >= 0);
  REQUIRE(survivor.Wait(10s) >= 0);
  const std::string& db = s.db.conninfo();
  const std::string slots = "FROM tasks WHERE idempotency_key LIKE 'schedule:%'";
  const long long total = QueryInt(db, "SELECT count(*) " + slots);
  const long long distinct =
      QueryInt(db, "SELECT count(DISTINCT (schedule, scheduled_for)) " + slots);
  // Per schedule: slots from its first task to its last, one second apart.
  const long long expected = QueryInt(
      db,
      "SELECT coalesce(sum(n), 0) FROM (SELECT round(extract(epoch FROM max(scheduled_for) - "
      "min(scheduled_for)))::bigint + 1 AS n " +
          slots + " GROUP BY schedule) x");
  std::ostringstream md;
  md << "## 8. Schedules while a node is killed\n\n"
     << "Two nodes serve " << schedules
     << " schedules (one slot a second each, catch_up all); one node is SIGKILLed " << kills
     << " times at random moments and restarted.\n\n"
     << "| measure | value |\n|---|---|\n"
     << "| tasks made by the schedules | " << total << " |\n"
     << "| slots with a task (distinct) | " << distinct << " |\n"
     << "| slots spanned from each schedule's first task to its last | " << expected << " |\n"
     << "| slots twice / slots lost | " << (total - distinct) << " / " << (expected - distinct)
     << " |\n\n"
     << "A targeted scenario holds a schedule's row lock so a node's fire statement is in "
        "flight when it is killed: its orphaned statement commits once and the other node, "
        "queued on the same slot, writes nothing; with the dead node's backend terminated "
        "too, nothing is committed and the restarted node makes the slot's task once.\n";
  ReportSection("8-schedules", md.str());
  INFO("tasks " << total << ", distinct slots " << distinct << ", slots spanned " << expected);
  CHECK(total >= schedules * 5);
  CHECK(total == distinct);  // no slot twice
  CHECK(total == expected);  // no slot lost
  CHECK(QueryInt(db, "SELECT count(DISTINCT schedule) " + slots) == schedules);
}

namespace {

// The backend of a node's schedule connection (application_name
// runner-schedules) that waits for a lock in this database, other than
// `not_pid`; 0 when there is none.
long long BlockedScheduleBackend(const std::string& db, long long not_pid = 0) {
  return QueryInt(db,
                  "SELECT coalesce(min(pid), 0) FROM pg_stat_activity WHERE datname = "
                  "current_database() AND application_name = 'runner-schedules' AND "
                  "wait_event_type = 'Lock' AND pid <> " +
                      std::to_string(not_pid));
}

bool BackendGone(const std::string& db, long long pid) {
  return QueryInt(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = " + std::to_string(pid)) ==
         0;
}

// The schedule's next_run_at, in microseconds since the epoch.
long long NextRun(const std::string& db, const std::string& name) {
  return QueryInt(db,
                  "SELECT (extract(epoch FROM next_run_at) * 1000000)::bigint FROM schedules "
                  "WHERE name = '" +
                      name + "'");
}

long long TasksForSlot(const std::string& db, const std::string& name, long long slot_us) {
  return QueryInt(db, "SELECT count(*) FROM tasks WHERE schedule = '" + name +
                          "' AND scheduled_for = 'epoch'::timestamptz + " +
                          std::to_string(slot_us) + " * interval '1 microsecond'");
}

}  // namespace

// The random kills above rarely land inside the fire statement itself. Here
// the test holds the schedule's row lock, so a node's fire statement (move
// next_run_at + insert the task, one statement) is provably in flight when
// the node is SIGKILLed. Round 1: both nodes queue on the same slot; the one
// first in the queue is killed, its orphaned statement commits once the lock
// is released, and the other, which saw the same slot due, must write
// nothing. Round 2: the survivor is killed inside its statement and its
// backend ends with it, so nothing of the slot is committed; the first node,
// restarted, must make the slot's task, once. The lock is held for a few
// seconds only: well inside the nodes' lock_timeout (15 s).
TEST_CASE("a node SIGKILLed inside its fire statement neither loses nor duplicates the slot",
          "[chaos][schedule]") {
  Scenario s;
  const std::string& db = s.db.conninfo();
  RunnerArgs args_a = s.Args("a");
  args_a.workers = 1;
  args_a.mode = "process";
  RunnerArgs args_b = s.Args("b");
  args_b.workers = 1;
  args_b.mode = "process";
  RunnerProcess& a = s.Add(args_a, "a");
  RunnerProcess& b = s.Add(args_b, "b");
  REQUIRE(a.Start());
  REQUIRE(b.Start());
  // Each node has one schedule connection, opened as it starts: a's is the older.
  const std::string schedule_backends =
      "FROM pg_stat_activity WHERE datname = current_database() AND application_name = "
      "'runner-schedules'";
  REQUIRE(QueryInt(db, "SELECT count(*) " + schedule_backends) == 2);
  const long long a_conn =
      QueryInt(db, "SELECT pid " + schedule_backends + " ORDER BY backend_start LIMIT 1");
  auto res = HttpPost(a.port(), "/api/v1/schedules",
                      R"({"name":"held","every":2,"overlap":"allow","catch_up":"all",)"
                      R"("task":{"command":["true"],"delay":3600}})");
  INFO(res.body);
  REQUIRE(res.status == 201);

  // Round 1: the node first in the lock queue dies inside its statement.
  long long slot1 = 0;
  RunnerProcess* first = nullptr;
  RunnerProcess* second = nullptr;
  {
    pqxx::connection holder(db);
    pqxx::work lock(holder);
    lock.exec("SELECT 1 FROM schedules WHERE name = 'held' FOR UPDATE");
    slot1 = NextRun(db, "held");
    long long first_backend = 0;
    REQUIRE(testing::WaitFor([&] { return (first_backend = BlockedScheduleBackend(db)) != 0; }, 10s,
                             20ms));
    first = first_backend == a_conn ? &a : &b;
    second = first == &a ? &b : &a;
    INFO("first in the queue: " << (first == &a ? "a" : "b"));
    first->Signal(SIGKILL);
    REQUIRE(first->Wait(10s) >= 0);
    // The other node races for the same slot: it queues behind the orphan.
    REQUIRE(testing::WaitFor([&] { return BlockedScheduleBackend(db, first_backend) != 0; }, 10s,
                             20ms));
    CHECK(TasksForSlot(db, "held", slot1) == 0);
    lock.commit();  // releases the row: the orphaned statement runs first
    REQUIRE(testing::WaitFor([&] { return BackendGone(db, first_backend); }, 10s, 20ms));
    // The dead node's statement committed: the task exists, and the other
    // node, which saw the same slot due, made no second one.
    CHECK(TasksForSlot(db, "held", slot1) == 1);
    REQUIRE(testing::WaitFor([&] { return NextRun(db, "held") > slot1; }, 10s, 50ms));
  }
  // Round 2: the survivor is killed inside its fire statement and its backend
  // ends with it, so nothing of the slot is committed; the first node,
  // restarted, makes it.
  long long slot2 = 0;
  {
    pqxx::connection holder(db);
    pqxx::work lock(holder);
    lock.exec("SELECT 1 FROM schedules WHERE name = 'held' FOR UPDATE");
    long long backend = 0;
    REQUIRE(
        testing::WaitFor([&] { return (backend = BlockedScheduleBackend(db)) != 0; }, 10s, 20ms));
    slot2 = NextRun(db, "held");
    CHECK(slot2 > slot1);
    second->Signal(SIGKILL);
    REQUIRE(second->Wait(10s) >= 0);
    QueryInt(db, "SELECT count(pg_terminate_backend(" + std::to_string(backend) + "))");
    REQUIRE(testing::WaitFor([&] { return BackendGone(db, backend); }, 10s, 20ms));
    lock.commit();
    CHECK(TasksForSlot(db, "held", slot2) == 0);
    CHECK(NextRun(db, "held") == slot2);  // the slot is still due: nothing moved it
    REQUIRE(first->Start());
    REQUIRE(testing::WaitFor([&] { return TasksForSlot(db, "held", slot2) == 1; }, 15s, 50ms));
    REQUIRE(testing::WaitFor([&] { return NextRun(db, "held") > slot2 + 4'000'000; }, 15s, 50ms));
  }
  first->Signal(SIGKILL);
  REQUIRE(first->Wait(10s) >= 0);
  // Over the whole run (catch_up all): one task per slot, none twice, none lost.
  const std::string slots = "FROM tasks WHERE schedule = 'held'";
  const long long total = QueryInt(db, "SELECT count(*) " + slots);
  const long long distinct = QueryInt(db, "SELECT count(DISTINCT scheduled_for) " + slots);
  const long long spanned = QueryInt(
      db,
      "SELECT round(extract(epoch FROM max(scheduled_for) - min(scheduled_for)) / 2)::bigint "
      "+ 1 " +
          slots);
  INFO("tasks " << total << ", distinct slots " << distinct << ", slots spanned " << spanned);
  CHECK(TasksForSlot(db, "held", slot1) == 1);
  CHECK(TasksForSlot(db, "held", slot2) == 1);
  CHECK(total == distinct);
  CHECK(total == spanned);
  CHECK(QueryInt(db, "SELECT (min(scheduled_for) <= 'epoch'::timestamptz + " +
                         std::to_string(slot1) + " * interval '1 microsecond')::int " + slots) ==
        1);
}

}  // namespace runner::chaos
