#include "runner/schedule/schedule.h"

#include <cmath>

#include "runner/queue/validation.h"

namespace runner::schedule {

std::string_view ToString(Overlap overlap) {
  switch (overlap) {
    case Overlap::kSkip:
      return "skip";
    case Overlap::kAllow:
      return "allow";
    case Overlap::kCancelPrevious:
      return "cancel_previous";
  }
  return "skip";
}

std::string_view ToString(CatchUp catch_up) {
  switch (catch_up) {
    case CatchUp::kNone:
      return "none";
    case CatchUp::kLatest:
      return "latest";
    case CatchUp::kAll:
      return "all";
  }
  return "none";
}

std::optional<Overlap> ParseOverlap(std::string_view text) {
  if (text == "skip") return Overlap::kSkip;
  if (text == "allow") return Overlap::kAllow;
  if (text == "cancel_previous") return Overlap::kCancelPrevious;
  return std::nullopt;
}

std::optional<CatchUp> ParseCatchUp(std::string_view text) {
  if (text == "none") return CatchUp::kNone;
  if (text == "latest") return CatchUp::kLatest;
  if (text == "all") return CatchUp::kAll;
  return std::nullopt;
}

std::optional<Error> ValidateSpec(const ScheduleSpec& spec) {
  auto bad = [](std::string message) { return Error{"validation_failed", std::move(message)}; };
  if (!queue::IsValidQueueName(spec.name)) {
    return bad("name: must be 1 to 64 characters of A-Z a-z 0-9 _ . -");
  }
  // The name is a path segment (/api/v1/schedules/NAME): browsers and curl
  // resolve "." and ".." away, so such a schedule could not be reached.
  if (spec.name == "." || spec.name == "..") {
    return bad("name: '" + spec.name + "' cannot name a schedule (it is a path segment)");
  }
  if (spec.cron.has_value() == spec.every.has_value()) {
    return bad("cron, every: give exactly one of cron (an expression) and every (seconds)");
  }
  if (spec.cron) {
    auto expr = ParseCron(*spec.cron);
    if (!expr) return expr.error();
  } else if (!std::isfinite(*spec.every) || *spec.every < kMinEvery || *spec.every > kMaxEvery) {
    return bad("every: must be a number of seconds from 1 to 31622400");
  }
  if (spec.timezone.size() > 128) {  // not echoed back
    return bad("timezone: " + std::to_string(spec.timezone.size()) +
               " characters; an IANA time zone name is at most 128");
  }
  if (auto zone = TimeZone::Load(spec.timezone); !zone) {
    return bad("timezone: " + spec.timezone +
               " is not an IANA time zone this host knows (such as UTC or Europe/Berlin)");
  }
  if (!spec.task.depends_on.empty()) {
    return bad("task.depends_on: a schedule's tasks cannot depend on other tasks");
  }
  if (spec.task.idempotency_key) {
    return bad("task.idempotency_key: a schedule keys its tasks itself (schedule:NAME:SLOT)");
  }
  if (auto e = queue::ValidateNewTask(spec.task)) {
    e->message = "task." + e->message;
    return e;
  }
  return std::nullopt;
}

Result<Slots> Slots::For(const ScheduleSpec& spec, Micros created_at) {
  Slots s;
  if (spec.cron) {
    auto expr = ParseCron(*spec.cron);
    if (!expr) return expr.error();
    auto zone = TimeZone::Load(spec.timezone);
    if (!zone) return zone.error();
    s.cron_ = *expr;
    s.zone_ = std::move(*zone);
  } else {
    s.every_ = static_cast<Micros>(std::llround(spec.every.value_or(1) * 1e6));
    if (s.every_ < 1) s.every_ = 1'000'000;
    s.anchor_ = created_at;
  }
  return s;
}

std::optional<Micros> Slots::After(Micros t) const {
  if (cron_) {
    // Cron slots are whole minutes: floor to the second keeps "strictly after".
    UnixSeconds after = t >= 0 ? t / 1'000'000 : -((-t + 999'999) / 1'000'000);
    auto next = NextSlot(*cron_, zone_, after);
    if (!next) return std::nullopt;
    return *next * 1'000'000;
  }
  if (t < anchor_) return anchor_ + every_;
  return anchor_ + ((t - anchor_) / every_ + 1) * every_;
}

Micros ToMicros(queue::TimePoint t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

queue::TimePoint FromMicros(Micros us) {
  return queue::TimePoint(
      std::chrono::duration_cast<queue::Clock::duration>(std::chrono::microseconds(us)));
}

}  // namespace runner::schedule
