// Scenario: two nodes serve the same schedules (twenty, one slot a second
// each); one node is SIGKILLed again and again, at random moments, so some
// kills land while it fires. Afterwards, in the database: every schedule
// made exactly one task per slot, with no slot lost and none twice, from its
// first task to its last.
#include <signal.h>

#include <catch2/catch.hpp>
#include <random>
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
  INFO("tasks " << total << ", distinct slots " << distinct << ", slots spanned " << expected);
  CHECK(total >= schedules * 5);
  CHECK(total == distinct);  // no slot twice
  CHECK(total == expected);  // no slot lost
  CHECK(QueryInt(db, "SELECT count(DISTINCT schedule) " + slots) == schedules);
}

}  // namespace runner::chaos
