#pragma once

// IANA time zones for schedules, read from the system's tz database
// (/usr/share/zoneinfo, Debian's tzdata). GCC 12's <chrono> has no time zone
// database, and glibc can only switch zones process-wide through TZ, so the
// TZif file is read here: its transition table, and its POSIX TZ footer for
// instants past the table's end.
//
// Thread-safety: immutable after Load; any thread may query.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "base/result.h"

namespace runner::schedule {

// Seconds since the Unix epoch (UTC), the unit of every instant here.
using UnixSeconds = std::int64_t;

class TimeZone {
 public:
  // `name` is an IANA name ("Europe/Berlin", "UTC"). Errors (code
  // `validation_failed`) for names with `..` or odd characters and for zones
  // the database does not have.
  static Result<TimeZone> Load(const std::string& name,
                               const std::filesystem::path& zoneinfo = "/usr/share/zoneinfo");
  static TimeZone Utc();

  const std::string& name() const { return name_; }
  // The offset from UTC (seconds east) in force at `t`.
  std::int32_t OffsetAt(UnixSeconds t) const;

  // The instants at which the local wall-clock time `local` (seconds since
  // the epoch as if local time were UTC) occurs: one normally, two when a
  // fall-back repeats it (earlier first), none when a spring-forward skips
  // it.
  std::vector<UnixSeconds> Resolve(UnixSeconds local) const;
  // For a local time that Resolve finds no instant for: the first instant
  // after the gap (the transition itself).
  UnixSeconds GapEnd(UnixSeconds local) const;

  // A POSIX TZ rule ("CET-1CEST,M3.5.0,M10.5.0/3"), public for tests.
  struct Rule {
    std::int32_t std_offset = 0;  // seconds east of UTC
    std::int32_t dst_offset = 0;
    bool has_dst = false;
    struct When {
      char kind = 'M';  // 'J' (1..365, no Feb 29), 'D' (0..365), 'M' (month.week.day)
      int a = 0, b = 0, c = 0;
      std::int32_t time = 7200;  // local seconds after midnight
    } start, end;
    std::int32_t OffsetAt(UnixSeconds t) const;
  };
  static Result<Rule> ParseRule(const std::string& tz);

 private:
  std::string name_;
  std::vector<UnixSeconds> transitions_;  // ascending
  std::vector<std::int32_t> offsets_;     // offset in force from transitions_[i]
  std::int32_t initial_offset_ = 0;       // before the first transition
  bool has_rule_ = false;
  Rule rule_;
};

}  // namespace runner::schedule
