#pragma once

// Cron expressions and their slots, as Vixie cron reads them: five fields
// (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or jan-dec, day of
// week 0-7 or sun-sat, 0 and 7 both Sunday) with lists, ranges and steps,
// and the macros @hourly @daily @midnight @weekly @monthly @yearly
// @annually. When both day fields are restricted (neither starts with `*`),
// a day matches when either does; otherwise the restricted one decides.
//
// Slots are wall-clock times in the schedule's zone. Daylight saving: a local
// time that a spring-forward skips fires once, at the first instant after the
// gap; a local time that a fall-back repeats fires once, at its first
// occurrence. No Debian package has a C++ cron library, so this is ours.
//
// Thread-safety: value types; any thread.

#include <bitset>
#include <cstddef>
#include <optional>
#include <string>

#include "base/result.h"
#include "runner/schedule/time_zone.h"

namespace runner::schedule {

struct CronExpr {
  std::bitset<60> minutes;
  std::bitset<24> hours;
  std::bitset<32> days_of_month;  // 1..31
  std::bitset<13> months;         // 1..12
  std::bitset<7> days_of_week;    // 0..6, Sunday 0
  bool dom_restricted = false;
  bool dow_restricted = false;
};

// The longest expression accepted (in bytes).
inline constexpr std::size_t kMaxCronLength = 1000;

// Errors (code `validation_failed`) name the field and what is wrong:
// "cron: hour: 24 is out of range 0-23".
Result<CronExpr> ParseCron(const std::string& text);

// The first slot strictly after `after` (UTC), or nothing when the
// expression never matches (such as `0 0 30 2 *`) within the next 9 years.
std::optional<UnixSeconds> NextSlot(const CronExpr& expr, const TimeZone& zone, UnixSeconds after);

}  // namespace runner::schedule
