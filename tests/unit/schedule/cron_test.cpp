#include "runner/schedule/cron.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "runner/schedule/time_zone.h"

using runner::schedule::CronExpr;
using runner::schedule::NextSlot;
using runner::schedule::ParseCron;
using runner::schedule::TimeZone;
using runner::schedule::UnixSeconds;

namespace {

// "2026-03-29 01:00" (UTC) -> seconds since the epoch.
UnixSeconds Utc(const std::string& s) {
  namespace chr = std::chrono;
  const int y = std::stoi(s.substr(0, 4));
  const unsigned mo = static_cast<unsigned>(std::stoi(s.substr(5, 2)));
  const unsigned d = static_cast<unsigned>(std::stoi(s.substr(8, 2)));
  const int h = std::stoi(s.substr(11, 2));
  const int mi = std::stoi(s.substr(14, 2));
  const auto days = chr::sys_days{chr::year{y} / chr::month{mo} / chr::day{d}};
  return days.time_since_epoch().count() * 86400 + h * 3600 + mi * 60;
}

TimeZone Zone(const std::string& name) {
  auto z = TimeZone::Load(name);
  REQUIRE(z.ok());
  return *z;
}

std::optional<UnixSeconds> Next(const std::string& cron, const std::string& zone,
                                const std::string& after) {
  auto e = ParseCron(cron);
  REQUIRE(e.ok());
  return NextSlot(*e, Zone(zone), Utc(after));
}

std::string ParseError(const std::string& cron) {
  auto e = ParseCron(cron);
  REQUIRE_FALSE(e.ok());
  CHECK(e.error().code == "validation_failed");
  return e.error().message;
}

}  // namespace

TEST_CASE("cron slots follow crontab(5)'s examples", "[cron]") {
  struct Row {
    const char* cron;
    const char* after;
    const char* next;
  };
  // Examples of crontab(5) (Vixie cron / cronie), in UTC.
  const Row rows[] = {
      {"5 0 * * *", "2026-01-01 00:05", "2026-01-02 00:05"},
      {"15 14 1 * *", "2026-01-01 14:15", "2026-02-01 14:15"},
      {"0 22 * * 1-5", "2026-01-02 22:00", "2026-01-05 22:00"},  // Fri 22:00 -> Mon
      {"23 0-23/2 * * *", "2026-01-01 00:23", "2026-01-01 02:23"},
      {"5 4 * * sun", "2026-01-01 00:00", "2026-01-04 04:05"},
      {"0 0,12 1 */2 *", "2026-01-01 12:00", "2026-03-01 00:00"},
      // Day of month and day of week both restricted: either matches (Vixie).
      {"30 4 1,15 * 5", "2026-01-01 04:30", "2026-01-02 04:30"},
      {"30 4 1,15 * 5", "2026-01-09 04:30", "2026-01-15 04:30"},
      // Only one restricted: it alone decides (`*/2` starts with `*`).
      {"0 0 */2 * 5", "2026-01-01 00:00", "2026-01-02 00:00"},
      {"0 0 1 * */2", "2026-01-01 00:00", "2026-02-01 00:00"},  // not Sat 3 Jan: dom decides
      {"0 0 13 * *", "2026-01-01 00:00", "2026-01-13 00:00"},
      {"0 0 * JAN Mon", "2026-01-01 00:00", "2026-01-05 00:00"},  // names in any case
      {"0 0 * * 7", "2026-01-01 00:00", "2026-01-04 00:00"},      // 7 is Sunday
      {"0 0 * jan,jul sun", "2026-01-31 00:00", "2026-07-05 00:00"},
      {"*/15 * * * *", "2026-01-01 10:07", "2026-01-01 10:15"},
      {"5/20 * * * *", "2026-01-01 10:46", "2026-01-01 11:05"},
      {"@hourly", "2026-01-01 10:15", "2026-01-01 11:00"},
      {"@daily", "2026-01-01 10:15", "2026-01-02 00:00"},
      {"@weekly", "2026-01-01 10:15", "2026-01-04 00:00"},
      {"@monthly", "2026-01-01 10:15", "2026-02-01 00:00"},
      {"@yearly", "2026-01-01 10:15", "2027-01-01 00:00"},
      {"0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"},
      {"59 23 31 12 *", "2026-12-31 23:59", "2027-12-31 23:59"},
  };
  for (const auto& r : rows) {
    INFO(r.cron << " after " << r.after);
    auto next = Next(r.cron, "UTC", r.after);
    REQUIRE(next.has_value());
    CHECK(*next == Utc(r.next));
  }
}

TEST_CASE("a cron expression that never matches has no next slot", "[cron]") {
  CHECK_FALSE(Next("0 0 30 2 *", "UTC", "2026-01-01 00:00").has_value());
  CHECK_FALSE(Next("0 0 31 4 *", "UTC", "2026-01-01 00:00").has_value());
}

TEST_CASE("bad cron expressions name the field and the fault", "[cron]") {
  CHECK_THAT(ParseError("61 * * * *"), Catch::Contains("minute: 61 is out of range 0-59"));
  CHECK_THAT(ParseError("* 24 * * *"), Catch::Contains("hour: 24 is out of range 0-23"));
  CHECK_THAT(ParseError("* * 0 * *"), Catch::Contains("day of month: 0 is out of range 1-31"));
  CHECK_THAT(ParseError("* * * foo *"), Catch::Contains("month: 'foo' is not a number or a name"));
  CHECK_THAT(ParseError("* * * * 8"), Catch::Contains("day of week: 8 is out of range 0-7"));
  CHECK_THAT(ParseError("* * *"), Catch::Contains("has 3 fields; it needs 5"));
  CHECK_THAT(ParseError("5-1 * * * *"), Catch::Contains("runs backwards"));
  CHECK_THAT(ParseError("*/0 * * * *"), Catch::Contains("step 0 is out of range"));
  CHECK_THAT(ParseError("1,,2 * * * *"), Catch::Contains("empty list item"));
  CHECK_THAT(ParseError("@reboot"), Catch::Contains("unknown macro"));
  CHECK_THAT(ParseError("-1 * * * *"), Catch::Contains("minute"));
  CHECK_THAT(ParseError("60 * * * *"), Catch::Contains("minute: 60 is out of range 0-59"));
  CHECK_THAT(ParseError("* * * * */0"), Catch::Contains("day of week: step 0 is out of range"));
  CHECK_THAT(ParseError("*/60 * * * *"), Catch::Contains("minute: step 60 is out of range 1-59"));
  CHECK_THAT(ParseError("*/x * * * *"), Catch::Contains("minute: step 'x' is not a number"));
  CHECK_THAT(ParseError("1-2-3 * * * *"), Catch::Contains("minute: '2-3' is not a number"));
  CHECK_THAT(ParseError("0 0 * * mon-fri,saturday"),
             Catch::Contains("day of week: 'saturday' is not a number or a name"));
  CHECK_THAT(ParseError("0 0 * dec-jan *"),
             Catch::Contains("month: range 'dec-jan' runs backwards"));
  CHECK_THAT(ParseError("* * * * * *"), Catch::Contains("has 6 fields"));
  CHECK_THAT(ParseError(""), Catch::Contains("has 0 fields"));
  CHECK_THAT(ParseError("99999999999 * * * *"), Catch::Contains("minute: '99999999999' is not"));
}

TEST_CASE("a huge cron expression is refused without being echoed back", "[cron]") {
  // Every minute listed, in every field that has that many values: accepted.
  std::string minutes;
  for (int m = 0; m < 60; ++m) minutes += (m ? "," : "") + std::to_string(m);
  REQUIRE(ParseCron(minutes + " * * * *").ok());
  // A list of a hundred thousand items: refused by its length, which the
  // message gives instead of the text.
  std::string huge = "0";
  for (int i = 0; i < 100000; ++i) huge += ",0";
  huge += " * * * *";
  const std::string why = ParseError(huge);
  CHECK(why == "cron: " + std::to_string(huge.size()) + " characters; at most 1000");
  // The bound is on the text, exactly: 1000 bytes pass, 1001 do not.
  const std::string padded = "0" + std::string(1000 - 8, ' ') + "* * * *";
  REQUIRE(padded.size() == 1000);
  CHECK(ParseCron(padded).ok());
  CHECK(ParseError(padded + " ") == "cron: 1001 characters; at most 1000");
}

TEST_CASE("a local time that spring-forward skips fires once, at the end of the gap",
          "[cron][dst]") {
  // Europe/Berlin 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
  CHECK(Next("30 2 * * *", "Europe/Berlin", "2026-03-28 12:00") == Utc("2026-03-29 01:00"));
  CHECK(Next("30 2 * * *", "Europe/Berlin", "2026-03-29 01:00") == Utc("2026-03-30 00:30"));
  // Every slot of the skipped hour maps to one instant: one task, not four.
  CHECK(Next("0,15,30,45 2 * * *", "Europe/Berlin", "2026-03-28 12:00") == Utc("2026-03-29 01:00"));
  CHECK(Next("0,15,30,45 2 * * *", "Europe/Berlin", "2026-03-29 01:00") == Utc("2026-03-30 00:00"));
  // America/New_York 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
  CHECK(Next("30 2 * * *", "America/New_York", "2026-03-07 12:00") == Utc("2026-03-08 07:00"));
  // Slots around the gap keep their local times.
  CHECK(Next("30 1 * * *", "America/New_York", "2026-03-07 12:00") == Utc("2026-03-08 06:30"));
  CHECK(Next("30 3 * * *", "America/New_York", "2026-03-08 07:00") == Utc("2026-03-08 07:30"));
}

TEST_CASE("a local time that fall-back repeats fires once, at its first occurrence",
          "[cron][dst]") {
  // Europe/Berlin 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC);
  // 02:30 happens at 00:30 UTC and again at 01:30 UTC.
  CHECK(Next("30 2 * * *", "Europe/Berlin", "2026-10-24 12:00") == Utc("2026-10-25 00:30"));
  CHECK(Next("30 2 * * *", "Europe/Berlin", "2026-10-25 00:30") == Utc("2026-10-26 01:30"));
  // America/New_York 2026-11-01: 01:30 happens at 05:30 and 06:30 UTC.
  CHECK(Next("30 1 * * *", "America/New_York", "2026-10-31 12:00") == Utc("2026-11-01 05:30"));
  CHECK(Next("30 1 * * *", "America/New_York", "2026-11-01 05:30") == Utc("2026-11-02 06:30"));
  // An hourly job is not fired twice for the repeated hour.
  CHECK(Next("0 * * * *", "America/New_York", "2026-11-01 05:00") == Utc("2026-11-01 07:00"));
}

TEST_CASE("zones resolve local times as the tz database says", "[cron][tz]") {
  const auto berlin = Zone("Europe/Berlin");
  CHECK(berlin.OffsetAt(Utc("2026-07-01 00:00")) == 7200);
  CHECK(berlin.OffsetAt(Utc("2026-01-01 00:00")) == 3600);
  CHECK(berlin.Resolve(Utc("2026-10-25 02:30")).size() == 2);
  CHECK(berlin.Resolve(Utc("2026-03-29 02:30")).empty());
  CHECK(berlin.Resolve(Utc("2026-06-01 12:00")) ==
        std::vector<UnixSeconds>{Utc("2026-06-01 10:00")});
  CHECK(Next("0 9 * * *", "Europe/Berlin", "2026-07-01 00:00") == Utc("2026-07-01 07:00"));
  CHECK(Next("0 9 * * *", "Asia/Kolkata", "2026-07-01 00:00") == Utc("2026-07-01 03:30"));
}

TEST_CASE("the zone's POSIX rule agrees with its transition table", "[cron][tz]") {
  struct Row {
    const char* zone;
    const char* rule;
  };
  const Row rows[] = {{"Europe/Berlin", "CET-1CEST,M3.5.0,M10.5.0/3"},
                      {"America/New_York", "EST5EDT,M3.2.0,M11.1.0"},
                      {"Australia/Sydney", "AEST-10AEDT,M10.1.0,M4.1.0/3"},
                      {"America/Sao_Paulo", "<-03>3"}};
  for (const auto& r : rows) {
    INFO(r.zone);
    const auto zone = Zone(r.zone);
    auto rule = TimeZone::ParseRule(r.rule);
    REQUIRE(rule.ok());
    int mismatches = 0;
    for (UnixSeconds t = Utc("2027-01-01 00:00"); t < Utc("2036-12-31 00:00"); t += 3 * 3600) {
      if (rule->OffsetAt(t) != zone.OffsetAt(t)) ++mismatches;
    }
    CHECK(mismatches == 0);
  }
  // Past the table (2037 in Debian's files) the footer rule decides.
  const auto berlin = Zone("Europe/Berlin");
  CHECK(berlin.OffsetAt(Utc("2099-07-01 00:00")) == 7200);
  CHECK(berlin.OffsetAt(Utc("2099-12-01 00:00")) == 3600);
}

TEST_CASE("unknown and hostile zone names are refused", "[cron][tz]") {
  auto mars = TimeZone::Load("Mars/Olympus_Mons");
  REQUIRE_FALSE(mars.ok());
  CHECK_THAT(mars.error().message, Catch::Contains("unknown time zone"));
  for (const char* name :
       {"../../etc/passwd", "/etc/passwd", "Europe/../../../etc/shadow", "", "Europe/Berlin\n"}) {
    INFO(name);
    auto bad = TimeZone::Load(name);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code == "validation_failed");
  }
  auto not_tzif = TimeZone::Load("zone.tab");  // a file of the database, not a zone
  CHECK_FALSE(not_tzif.ok());
}

namespace {

// The cron's match of a local wall-clock minute (seconds as if UTC), by the
// rules of crontab(5), written out again here.
bool Matches(const CronExpr& e, UnixSeconds local) {
  namespace chr = std::chrono;
  const std::int64_t day = local >= 0 ? local / 86400 : (local - 86399) / 86400;
  const std::int64_t secs = local - day * 86400;
  const chr::sys_days sd{chr::days{day}};
  const chr::year_month_day ymd{sd};
  const bool dom = e.days_of_month[static_cast<unsigned>(ymd.day())];
  const bool dow = e.days_of_week[chr::weekday{sd}.c_encoding()];
  const bool day_ok = e.dom_restricted && e.dow_restricted ? dom || dow
                      : e.dom_restricted                   ? dom
                      : e.dow_restricted                   ? dow
                                                           : true;
  return day_ok && e.months[static_cast<unsigned>(ymd.month())] &&
         e.hours[static_cast<std::size_t>(secs / 3600)] &&
         e.minutes[static_cast<std::size_t>(secs % 3600 / 60)];
}

// The slots in (from, to], found by walking UTC minute by minute: a minute
// fires when a matching local minute is newly reached by the wall clock,
// that is, lies above the highest local time shown so far and at or below
// the local time now. A spring-forward's skipped minutes are reached at
// once at the end of the gap (one slot); a fall-back's repeated ones are
// not new the second time.
std::vector<UnixSeconds> Walk(const CronExpr& e, const TimeZone& zone, UnixSeconds from,
                              UnixSeconds to) {
  std::vector<UnixSeconds> out;
  UnixSeconds shown = std::numeric_limits<UnixSeconds>::min();
  for (UnixSeconds t = from - 2 * 86400; t <= to; t += 60) {
    const UnixSeconds local = t + zone.OffsetAt(t);
    bool fire = false;
    if (shown != std::numeric_limits<UnixSeconds>::min()) {
      for (UnixSeconds l = local; l > shown && !fire; l -= 60) fire = Matches(e, l);
    }
    shown = std::max(shown, local);
    if (fire && t > from) out.push_back(t);
  }
  return out;
}

}  // namespace

TEST_CASE("next slots agree with a minute-by-minute walk of the wall clock across DST days",
          "[cron][dst]") {
  struct Window {
    const char* zone;
    const char* from;  // UTC; the walk covers three days from here
  };
  const Window windows[] = {
      {"Europe/Berlin", "2026-03-28 00:00"},    {"Europe/Berlin", "2026-10-24 00:00"},
      {"America/New_York", "2026-03-07 00:00"}, {"America/New_York", "2026-10-31 00:00"},
      {"Australia/Sydney", "2026-04-04 00:00"}, {"Australia/Sydney", "2026-10-03 00:00"},
      {"Asia/Kolkata", "2026-06-01 00:00"},     {"UTC", "2026-02-27 00:00"},
  };
  const char* crons[] = {"* * * * *",      "*/15 * * * *",   "30 2 * * *",
                         "0,30 1-3 * * *", "0 * * * *",      "@daily",
                         "59 1 * * sun",   "15 2 25,29 * 6", "0 0 28-31 2 *"};
  for (const auto& w : windows) {
    const auto zone = Zone(w.zone);
    const UnixSeconds from = Utc(w.from);
    const UnixSeconds to = from + 3 * 86400;
    for (const char* cron : crons) {
      INFO(cron << " in " << w.zone << " from " << w.from);
      auto e = ParseCron(cron);
      REQUIRE(e.ok());
      const auto expected = Walk(*e, zone, from, to);
      std::vector<UnixSeconds> got;
      for (auto t = NextSlot(*e, zone, from); t && *t <= to; t = NextSlot(*e, zone, *t)) {
        got.push_back(*t);
      }
      CHECK(got == expected);
      // And from any instant, not only from the previous slot.
      for (UnixSeconds after = from; after < to; after += 7 * 60 + 13) {
        const auto next = NextSlot(*e, zone, after);
        const auto it = std::upper_bound(expected.begin(), expected.end(), after);
        if (it == expected.end()) {
          CHECK((!next || *next > to));
        } else {
          CHECK(next == std::optional<UnixSeconds>(*it));
        }
      }
    }
  }
}
