#pragma once

// A schedule as the store keeps it and the API shows it, its validation, and
// its slots. A schedule makes a task per slot: the slots of `cron` in
// `timezone` (cron.h, Vixie DST rules), or, for `every`, the instants
// created_at + k * every (k >= 1), exactly `every` apart.
//
// Times here are microseconds since the Unix epoch (UTC), the unit the store
// exchanges with PostgreSQL exactly.
//
// Thread-safety: value types and pure functions.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "runner/queue/task.h"
#include "runner/schedule/cron.h"
#include "runner/schedule/time_zone.h"

namespace runner::schedule {

using Micros = std::int64_t;

enum class Overlap { kSkip, kAllow, kCancelPrevious };
enum class CatchUp { kNone, kLatest, kAll };
std::string_view ToString(Overlap overlap);
std::string_view ToString(CatchUp catch_up);
std::optional<Overlap> ParseOverlap(std::string_view text);
std::optional<CatchUp> ParseCatchUp(std::string_view text);

// catch_up `all` makes at most this many tasks after an outage.
inline constexpr int kMaxCatchUp = 100;
inline constexpr double kMinEvery = 1;                  // seconds
inline constexpr double kMaxEvery = 366.0 * 24 * 3600;  // seconds

// What a client gives: the body of POST /api/v1/schedules.
struct ScheduleSpec {
  std::string name;
  std::optional<std::string> cron;
  std::optional<double> every;  // seconds
  std::string timezone = "UTC";
  queue::NewTask task;
  std::string task_json = "{}";  // the task object as sent (secrets: their names only)
  Overlap overlap = Overlap::kSkip;
  CatchUp catch_up = CatchUp::kNone;
  bool paused = false;
  // PUT only: task.secrets given as names (as a schedule shows them) keep the
  // values the schedule has stored for them. Sorted; task.secrets is empty.
  std::vector<std::string> keep_secrets;
};

struct Schedule {
  ScheduleSpec spec;
  std::optional<queue::TimePoint> next_run_at;  // none: the cron never matches again
  std::optional<queue::TimePoint> last_run_at;
  std::optional<std::string> last_task_id;
  queue::TimePoint created_at{};
};

// nullopt when acceptable; else Error{"validation_failed", "<field>: <why>"}:
// the name (queue-name rules), exactly one of cron and every, the cron
// expression, the time zone, every >= 1 s, and the task (the rules of
// POST /api/v1/tasks, plus: no depends_on, no idempotency_key, which the
// schedule sets itself).
std::optional<Error> ValidateSpec(const ScheduleSpec& spec);

// The slots of a valid spec.
class Slots {
 public:
  static Result<Slots> For(const ScheduleSpec& spec, Micros created_at);
  // The first slot strictly after `t`; nothing when the cron never matches again.
  std::optional<Micros> After(Micros t) const;

 private:
  std::optional<CronExpr> cron_;
  TimeZone zone_ = TimeZone::Utc();
  Micros every_ = 0;
  Micros anchor_ = 0;
};

Micros ToMicros(queue::TimePoint t);
queue::TimePoint FromMicros(Micros us);

}  // namespace runner::schedule
