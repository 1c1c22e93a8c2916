#pragma once

// How a worker reports what its isolator returned: a final state through
// QueueStore::Finish, the task back to the queue through Release (the pool
// stopped it for shutdown or drain, so the attempt must not count), or through
// Defer (the node could not start it: Docker is down).
//
// Thread-safety: pure functions.

#include <chrono>
#include <string>

#include "isolation/isolator.h"
#include "runner/queue/queue_store.h"

namespace runner::pool {

// Why the pool fired a running task's stop_token (the isolator only says
// kStopped; the pool knows the reason).
enum class StopCause { kNone, kCancel, kLeaseLost, kShutdown };

struct TaskOutcome {
  enum class Action { kFinish, kRelease, kDefer };
  Action action = Action::kFinish;
  queue::FinishReport report;
  queue::Deferral deferral;  // kDefer
};

// The node could not start the task for a reason of its own (`why`, e.g.
// isolation_unavailable while Docker is down): back to the queue with its
// attempt given back, runnable again after `delay`, its error saying why.
TaskOutcome Deferred(const Error& why, std::chrono::milliseconds delay);

// kExited 0 -> succeeded; nonzero -> failed nonzero_exit; kTimedOut ->
// timed_out; kOomKilled -> failed oom_killed; kOverLimit -> failed over_limit;
// kError -> failed with its code (image_not_found and validation errors are not
// retryable); kStopped -> cancelled / released / failed lease_lost by cause.
TaskOutcome MapRunResult(const isolation::RunResult& result, StopCause cause);

}  // namespace runner::pool
