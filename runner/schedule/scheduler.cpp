#include "runner/schedule/scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>

namespace runner::schedule {
namespace {

// Bounds the walk over the slots of a long outage (a minutely cron over
// nearly two years); past it the walk restarts from now.
constexpr int kMaxSlotWalk = 1'000'000;
// Due schedules taken per query; a pass continues while a page comes back full.
constexpr int kDuePage = 100;

}  // namespace

Scheduler::Scheduler(ScheduleStore& store, Clock& clock, metrics::Registry& metrics,
                     SchedulerOptions options)
    : store_(store),
      clock_(clock),
      options_(options),
      fired_(metrics.GetCounter("runner_schedule_fired_total", "Tasks made by schedules")),
      skipped_overlap_(metrics.GetCounter("runner_schedule_skipped_total",
                                          "Schedule slots that made no task, by reason",
                                          {{"reason", "overlap"}})),
      skipped_missed_(metrics.GetCounter("runner_schedule_skipped_total",
                                         "Schedule slots that made no task, by reason",
                                         {{"reason", "missed"}})),
      lag_(metrics.GetHistogram("runner_schedule_lag_seconds",
                                "Time from a schedule's slot to the creation of its task",
                                metrics::LatencyBuckets())) {}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Start() {
  thread_ = std::jthread([this](std::stop_token stop) { Loop(stop); });
}

void Scheduler::Stop() {
  if (!thread_.joinable()) return;
  thread_.request_stop();
  cv_.notify_all();
  thread_.join();
}

void Scheduler::Poke() {
  {
    std::lock_guard lock(mu_);
    poked_ = true;
  }
  cv_.notify_all();
}

void Scheduler::Loop(std::stop_token stop) {
  while (!stop.stop_requested()) {
    auto wait = std::chrono::duration_cast<Clock::Duration>(options_.poll);
    const Micros pass_at = ToMicros(clock_.SystemNow());
    auto pass = RunOnce();
    if (!pass.ok()) {
      spdlog::warn("schedules: pass failed error=\"{}\"", pass.error().message);
      wait = std::chrono::duration_cast<Clock::Duration>(options_.retry);
    } else if (auto earliest = store_.EarliestNext();
               earliest.ok() && earliest->has_value() && **earliest > pass_at) {
      // Due after the pass began: wake for it (at least 10 ms on). A slot
      // still there from before the pass is one the pass could not fire
      // (its zone left tzdata): retrying it at once spun the loop at
      // 100 passes a second, so it waits for the poll like the rest.
      const Micros now = ToMicros(clock_.SystemNow());
      const auto until = std::chrono::microseconds(std::max<Micros>(10'000, **earliest - now));
      wait = std::min(wait, std::chrono::duration_cast<Clock::Duration>(until));
    }
    std::unique_lock lock(mu_);
    clock_.WaitUntil(cv_, lock, stop, clock_.Now() + wait, [&] { return poked_; });
    poked_ = false;
  }
}

Result<PassReport> Scheduler::RunOnce() {
  std::lock_guard pass_lock(run_mu_);
  PassReport report;
  const Micros now = ToMicros(clock_.SystemNow());
  for (int page = 0; page < 100; ++page) {
    auto due = store_.Due(now, kDuePage);
    if (!due.ok()) return due.error();
    for (const auto& d : *due) {
      if (auto st = FireDue(d, now, report); !st.ok()) return st.error();
    }
    if (static_cast<int>(due->size()) < kDuePage) break;
  }
  return report;
}

Status Scheduler::FireDue(const DueSchedule& due, Micros now, PassReport& report) {
  auto slots = Slots::For(due.spec, due.created_at);
  if (!slots) {
    spdlog::error("schedules: cannot compute slots schedule={} error=\"{}\"", due.spec.name,
                  slots.error().message);
    return {};
  }
  // The due slots (next_run_at .. now), keeping the last kMaxCatchUp.
  std::deque<Micros> recent;
  int total = 0;
  std::optional<Micros> s = due.next_run_at;
  for (int walked = 0; s && *s <= now; ++walked) {
    if (walked == kMaxSlotWalk) {
      s = slots->After(now);
      break;
    }
    recent.push_back(*s);
    if (static_cast<int>(recent.size()) > kMaxCatchUp) recent.pop_front();
    ++total;
    s = slots->After(*s);
  }
  const std::optional<Micros> final_next = s;
  std::vector<Micros> fire;
  if (!due.spec.paused && !recent.empty()) {
    switch (due.spec.catch_up) {
      case CatchUp::kNone: {
        const auto grace = std::chrono::microseconds(options_.miss_grace).count();
        if (now - recent.back() <= grace) fire.push_back(recent.back());
        break;
      }
      case CatchUp::kLatest:
        fire.push_back(recent.back());
        break;
      case CatchUp::kAll:
        fire.assign(recent.begin(), recent.end());
        break;
    }
  }
  const int missed = due.spec.paused ? 0 : total - static_cast<int>(fire.size());
  FireStep step;
  step.name = due.spec.name;
  step.expected = due.next_run_at;
  step.missed = missed;
  step.secrets_sealed = due.secrets_sealed;
  if (fire.empty()) {
    step.next = final_next;
    auto out = store_.Fire(step);
    if (!out.ok()) return out.error();
    if (out->moved && missed > 0) {
      skipped_missed_.Inc(missed);
      report.skipped += missed;
    }
    return {};
  }
  for (std::size_t i = 0; i < fire.size(); ++i) {
    step.slot = fire[i];
    step.next = i + 1 < fire.size() ? std::optional<Micros>(fire[i + 1]) : final_next;
    auto out = store_.Fire(step);
    if (!out.ok()) return out.error();
    if (!out->moved) return {};  // another node fired it
    if (i == 0 && missed > 0) {
      skipped_missed_.Inc(missed);
      report.skipped += missed;
    }
    if (out->task_id) {
      fired_.Inc();
      ++report.fired;
      lag_.Observe(static_cast<double>(ToMicros(clock_.SystemNow()) - fire[i]) / 1e6);
      spdlog::info("schedules: fired schedule={} task_id={}", due.spec.name, *out->task_id);
    } else if (out->skipped) {
      skipped_overlap_.Inc();
      ++report.skipped;
      spdlog::info("schedules: skipped schedule={} reason=overlap", due.spec.name);
    }
    if (i + 1 < fire.size()) step.expected = fire[i + 1];
    step.missed = 0;
  }
  return {};
}

}  // namespace runner::schedule
