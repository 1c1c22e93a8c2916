#pragma once

// Schedules in PostgreSQL (the `schedules` table of migration 2) and the one
// statement that fires a slot.
//
// Exactly once per slot across nodes: Fire() moves next_run_at from the slot
// the caller saw to the next one and inserts the slot's task in the same
// statement, guarded by `next_run_at = <what the caller saw>`. Two nodes that
// both see a slot due both try; the row lock serialises them and the second
// finds next_run_at moved and writes nothing. A node that dies mid-fire has
// committed both the move and the task, or neither. The task also carries the
// idempotency key `schedule:<name>:<slot>`.
//
// The store owns one connection (a scheduler and a few API calls use it; a
// call waits at most acquire_timeout for it), reopened after it breaks.
// Events schedule.created/updated/deleted/fired/skipped are written in the
// same transaction as the change they describe.
//
// Secrets (task.secrets) are stored as tasks store them: sealed under the
// node key (runner/secrets), here with `schedule:<name>` as the associated
// data, inside task_row; only their names are kept in the task shown back.
// Each slot's task gets them resealed for its own id, so the claim opens them
// as any task's. A node that cannot open a schedule's secrets still makes the
// slot's task, with the schedule's blob, which no claim opens: the task fails
// with secrets_unavailable and never runs without them.
//
// Thread-safety: every method may be called from any thread.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "runner/queue/postgres_store.h"
#include "runner/schedule/schedule.h"

namespace runner::schedule {

// A schedule whose next slot has come, as the scheduler needs it.
struct DueSchedule {
  ScheduleSpec spec;  // task_json and task are left empty
  Micros created_at = 0;
  Micros next_run_at = 0;
  std::optional<std::string> secrets_sealed;  // hex, sealed for the schedule
};

// One step of firing: move next_run_at from `expected` to `next` (nullopt:
// the cron never matches again) and, when `slot` is set, make its task
// (unless paused, or overlap `skip` finds a live task of the schedule).
// `missed` slots passed over are recorded in a schedule.skipped event.
struct FireStep {
  std::string name;
  Micros expected = 0;
  std::optional<Micros> slot;
  std::optional<Micros> next;
  int missed = 0;
  std::optional<std::string> secrets_sealed;  // DueSchedule::secrets_sealed
};

struct FireOutcome {
  bool moved = false;    // false: another node fired this slot first (nothing written)
  bool skipped = false;  // overlap `skip` found a live task: no task
  std::optional<std::string> task_id;  // the task made for the slot
  int cancelled = 0;  // overlap `cancel_previous`: tasks cancelled or asked to stop
};

class ScheduleStore {
 public:
  // Connects; the schema must exist (queue::PostgresStore::Open migrates).
  // `options` gives the conninfo, the timeouts, the task defaults and the
  // secret key (without one, a schedule with secrets is refused).
  static Result<std::unique_ptr<ScheduleStore>> Open(const queue::StoreOptions& options);
  ~ScheduleStore();
  ScheduleStore(const ScheduleStore&) = delete;
  ScheduleStore& operator=(const ScheduleStore&) = delete;

  // Called after each change of a schedule (to wake the local scheduler).
  void OnChange(std::function<void()> fn);

  // 409 `conflict` when the name exists. `now` is the creation time: the
  // anchor of `every` and the start of the first slot.
  Result<Schedule> Create(const ScheduleSpec& spec, queue::TimePoint now);
  // Replaces all fields but created_at; next_run_at is the first slot after `now`.
  Result<Schedule> Replace(const ScheduleSpec& spec, queue::TimePoint now);
  Result<Schedule> Get(const std::string& name);
  Result<std::vector<Schedule>> List();
  Status Delete(const std::string& name);
  // A task now, outside the slots (no overlap check). Returns its id.
  Result<std::string> Trigger(const std::string& name, queue::TimePoint now);

  // For the scheduler: schedules whose next_run_at <= now, earliest first.
  Result<std::vector<DueSchedule>> Due(Micros now, int limit);
  Result<FireOutcome> Fire(const FireStep& step);
  // The earliest next_run_at of all schedules (nothing when there is none).
  Result<std::optional<Micros>> EarliestNext();

 private:
  class Connection;  // a pqxx::connection (schedule_store.cpp)
  explicit ScheduleStore(queue::StoreOptions options);
  template <class R, class F>
  R Run(const char* op, F&& f);
  void Changed();

  const queue::StoreOptions options_;
  // One caller of conn_ at a time, waiting at most acquire_timeout. Not a
  // std::timed_mutex: its try_lock_for is pthread_mutex_clocklock, which
  // GCC 12's ThreadSanitizer does not see, so every unlock was reported as
  // the unlock of an unlocked mutex.
  std::mutex mu_;
  std::condition_variable idle_cv_;   // notified when busy_ turns false
  bool busy_ = false;                 // guarded by mu_: a caller holds conn_
  std::unique_ptr<Connection> conn_;  // owned by the caller that set busy_; null: reopen
  std::mutex change_mu_;
  std::function<void()> on_change_;  // guarded by change_mu_
};

}  // namespace runner::schedule
