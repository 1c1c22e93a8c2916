#include "runner/schedule/schedule.h"

#include <catch2/catch.hpp>
#include <limits>

namespace runner::schedule {
namespace {

ScheduleSpec Spec() {
  ScheduleSpec s;
  s.name = "report";
  s.every = 2;
  s.task.command = {"true"};
  return s;
}

std::string Why(const ScheduleSpec& s) {
  auto e = ValidateSpec(s);
  return e ? e->message : "";
}

}  // namespace

TEST_CASE("every slots are created_at + k * every, strictly after the time asked", "[schedule]") {
  auto slots = Slots::For(Spec(), 1'000'500'000);
  REQUIRE(slots.ok());
  CHECK(*slots->After(0) == 1'002'500'000);
  CHECK(*slots->After(1'000'500'000) == 1'002'500'000);
  CHECK(*slots->After(1'002'499'999) == 1'002'500'000);
  CHECK(*slots->After(1'002'500'000) == 1'004'500'000);
  CHECK(*slots->After(1'101'000'000) == 1'102'500'000);
}

TEST_CASE("cron slots come from the expression in the schedule's zone", "[schedule]") {
  ScheduleSpec s = Spec();
  s.every.reset();
  s.cron = "0 * * * *";
  auto slots = Slots::For(s, 0);
  REQUIRE(slots.ok());
  // 1780272000 is 2026-06-01T00:00:00Z; a fraction of a second past a slot
  // still gives the next one.
  CHECK(*slots->After(1780272000'000000) == 1780275600'000000);
  CHECK(*slots->After(1780272000'500000) == 1780275600'000000);
  CHECK(*slots->After(1780271999'999999) == 1780272000'000000);
}

TEST_CASE("a schedule's validation names the field and what is wrong", "[schedule]") {
  CHECK(Why(Spec()).empty());
  auto s = Spec();
  s.name = "no spaces";
  CHECK(Why(s).rfind("name:", 0) == 0);
  s = Spec();
  s.cron = "* * * * *";
  CHECK(Why(s).rfind("cron, every:", 0) == 0);
  s.every.reset();
  s.cron.reset();
  CHECK(Why(s).rfind("cron, every:", 0) == 0);
  s.cron = "* 24 * * *";
  CHECK(Why(s).rfind("cron: hour", 0) == 0);
  s = Spec();
  s.every = 0.5;
  CHECK(Why(s).rfind("every:", 0) == 0);
  s = Spec();
  s.every = 1e300;
  CHECK(Why(s).rfind("every: must be a number of seconds from 1 to 31622400", 0) == 0);
  s.every = -5;
  CHECK(Why(s).rfind("every:", 0) == 0);
  s.every = std::numeric_limits<double>::quiet_NaN();
  CHECK(Why(s).rfind("every:", 0) == 0);
  s.every = 1.5;  // whole seconds are not required; at least one is
  CHECK(Why(s).empty());
  s = Spec();
  s.name = "a/b";
  CHECK(Why(s).rfind("name:", 0) == 0);
  s.name = std::string(200, 'n');
  CHECK(Why(s).rfind("name:", 0) == 0);
  s.name = std::string(64, 'n');
  CHECK(Why(s).empty());
  s.name = "..";
  CHECK(Why(s).rfind("name: '..' cannot name a schedule", 0) == 0);
  s.name = ".";
  CHECK(Why(s).rfind("name:", 0) == 0);
  s.name = "...";  // not a path segment of its own
  CHECK(Why(s).empty());
  s = Spec();
  s.timezone = std::string(100000, 'A');
  CHECK(Why(s) == "timezone: 100000 characters; an IANA time zone name is at most 128");
  s = Spec();
  s.timezone = "Europe/Atlantis";
  CHECK(Why(s).rfind("timezone: Europe/Atlantis", 0) == 0);
  s = Spec();
  s.task.command.clear();
  CHECK(Why(s).rfind("task.command", 0) == 0);
  s = Spec();
  s.task.depends_on = {"01JD0000000000000000000000"};
  CHECK(Why(s).rfind("task.depends_on", 0) == 0);
  s = Spec();
  s.task.secrets = {{"TOKEN", "hunter2"}};
  CHECK(Why(s).empty());  // sealed by the store, as a task's
  s.task.secrets = {{"1TOKEN", "hunter2"}};
  CHECK(Why(s).rfind("task.secrets", 0) == 0);
  s = Spec();
  s.task.idempotency_key = "k";
  CHECK(Why(s).rfind("task.idempotency_key", 0) == 0);
}

}  // namespace runner::schedule
