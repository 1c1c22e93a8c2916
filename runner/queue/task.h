#pragma once

// The task as the queue stores it and as every layer above passes it around.
// Field names follow docs/api.md; times are UTC.
//
// Thread-safety: value types.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isolation/isolator.h"

namespace runner::queue {

using Clock = std::chrono::system_clock;
using TimePoint = Clock::time_point;

enum class TaskState { kQueued, kRunning, kSucceeded, kFailed, kCancelled, kTimedOut };

std::string_view ToString(TaskState state);
std::optional<TaskState> ParseTaskState(std::string_view text);
bool IsFinal(TaskState state);

struct TaskError {
  std::string
      code;  // docs/api.md: oom_killed | timed_out | cancelled | nonzero_exit | image_not_found
             // | isolation_unavailable | lease_lost | over_limit | dependency_failed | internal
  std::string message;
};

// A submission, after JSON parsing and before validation. Optional fields take
// the node's configured defaults when absent.
struct NewTask {
  std::vector<std::string> command;
  std::optional<std::string> image;
  isolation::IsolationMode isolation = isolation::IsolationMode::kAuto;
  std::map<std::string, std::string> env;
  // Given to the task as environment variables like env, but never returned:
  // sealed at rest (runner/secrets), masked in output, deleted once final.
  std::map<std::string, std::string> secrets;
  isolation::Limits limits;
  std::optional<double> timeout;  // seconds
  int priority = 0;               // higher runs first
  std::string queue = "default";
  int max_attempts = 1;
  double delay = 0;  // seconds before it may run
  std::vector<std::string> depends_on;
  std::optional<std::string> idempotency_key;
  std::map<std::string, std::string> labels;
  std::optional<double> backoff;     // base seconds of the exponential retry backoff
  std::optional<std::string> group;  // fair share within the queue; none: the unnamed group
};

struct Task {
  std::string id;  // ULID
  TaskState state = TaskState::kQueued;
  std::string queue = "default";
  int priority = 0;
  std::vector<std::string> command;
  std::string image;
  isolation::IsolationMode isolation = isolation::IsolationMode::kAuto;
  std::optional<std::string> isolation_used;
  std::map<std::string, std::string> env;
  std::vector<std::string> secret_names;  // sorted; the only part of secrets ever returned
  // Filled by a claim only (opened with the node's key), for the worker that
  // runs the task; empty on every other read. secrets_error instead when the
  // node could not open them: the task must fail, never run without them.
  std::map<std::string, std::string> secrets;
  std::optional<TaskError> secrets_error;
  isolation::Limits limits;
  double timeout = 0;  // seconds, 0 = none
  int attempt = 0;     // attempts started so far
  int max_attempts = 1;
  double backoff = 0;
  std::vector<std::string> depends_on;
  std::optional<std::string> idempotency_key;
  std::map<std::string, std::string> labels;
  std::optional<std::string> worker_id;
  std::optional<std::string> node_id;
  std::optional<int> exit_code;
  std::optional<TaskError> error;
  std::optional<isolation::Usage> usage;
  TimePoint created_at{};
  TimePoint run_at{};
  std::optional<TimePoint> started_at;
  std::optional<TimePoint> finished_at;
  std::optional<TimePoint> lease_expires_at;
  bool cancel_requested = false;
  std::string stdout_tail;
  std::string stderr_tail;
  bool logs_truncated = false;             // stored logs hit the per-task cap
  std::optional<std::string> schedule;     // the schedule that created it
  std::optional<TimePoint> scheduled_for;  // and the slot it was created for
  std::optional<std::string> group;
};

}  // namespace runner::queue
