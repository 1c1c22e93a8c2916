#pragma once

// How a worker reports what its isolator returned: a final state through
// QueueStore::Finish, or the task back to the queue through Release (the pool
// stopped it for shutdown or drain, so the attempt must not count).
//
// Thread-safety: pure functions.

#include <string>

#include "isolation/isolator.h"
#include "runner/queue/queue_store.h"

namespace runner::pool {

// Why the pool fired a running task's stop_token (the isolator only says
// kStopped; the pool knows the reason).
enum class StopCause { kNone, kCancel, kLeaseLost, kShutdown };

struct TaskOutcome {
  enum class Action { kFinish, kRelease };
  Action action = Action::kFinish;
  queue::FinishReport report;
};

// kExited 0 -> succeeded; nonzero -> failed nonzero_exit; kTimedOut ->
// timed_out; kOomKilled -> failed oom_killed; kOverLimit -> failed over_limit;
// kError -> failed with its code (image_not_found and validation errors are not
// retryable); kStopped -> cancelled / released / failed lease_lost by cause.
TaskOutcome MapRunResult(const isolation::RunResult& result, StopCause cause);

}  // namespace runner::pool
