#pragma once

// The firing loop of schedules. Every node runs one; each pass fires what is
// due (ScheduleStore::Due) with ScheduleStore::Fire, whose guarded statement
// makes each slot's task at most once across all nodes. The loop sleeps until
// the earliest next_run_at (a task is made within about a second of its
// slot), at most `poll` (to see schedules other nodes changed), and wakes at
// once on Poke() (a change on this node).
//
// Catch-up: the slots from next_run_at up to now are due. `none` fires the
// latest of them when it is at most `miss_grace` old (a pass that is merely
// late) and skips the rest; `latest` fires the latest; `all` fires each of
// the last kMaxCatchUp, oldest first. A paused schedule fires nothing but its
// next_run_at still moves on. Skipped slots are counted in one
// schedule.skipped event (reason `missed`).
//
// Time comes from the injected Clock (SystemNow for slots, Now for waits), so
// tests drive firing with a manual clock and RunOnce().
//
// Thread-safety: Start/Stop from the owner; RunOnce and Poke from any thread.

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <thread>

#include "base/clock.h"
#include "base/result.h"
#include "runner/metrics/registry.h"
#include "runner/schedule/schedule_store.h"

namespace runner::schedule {

struct SchedulerOptions {
  std::chrono::milliseconds poll{1000};         // the longest sleep between passes
  std::chrono::milliseconds miss_grace{10000};  // catch_up none: later than this is missed
  std::chrono::milliseconds retry{2000};        // after a database error
};

struct PassReport {
  int fired = 0;    // tasks made
  int skipped = 0;  // slots without a task (overlap or missed)
};

class Scheduler {
 public:
  Scheduler(ScheduleStore& store, Clock& clock, metrics::Registry& metrics,
            SchedulerOptions options = {});
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  void Start();
  void Stop();  // idempotent; joins
  void Poke();
  // One pass at clock.SystemNow(): fires every due schedule.
  Result<PassReport> RunOnce();

 private:
  void Loop(std::stop_token stop);
  Status FireDue(const DueSchedule& due, Micros now, PassReport& report);

  ScheduleStore& store_;
  Clock& clock_;
  SchedulerOptions options_;
  metrics::Counter& fired_;
  metrics::Counter& skipped_overlap_;
  metrics::Counter& skipped_missed_;
  metrics::Histogram& lag_;
  std::mutex run_mu_;  // one pass at a time on this node
  std::mutex mu_;
  std::condition_variable_any cv_;
  bool poked_ = false;  // guarded by mu_
  std::jthread thread_;
};

}  // namespace runner::schedule
