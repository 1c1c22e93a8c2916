#include "runner/queue/task.h"

#include "runner/queue/queue_store.h"

namespace runner::queue {

std::string_view ToString(TaskState state) {
  switch (state) {
    case TaskState::kQueued:
      return "queued";
    case TaskState::kRunning:
      return "running";
    case TaskState::kSucceeded:
      return "succeeded";
    case TaskState::kFailed:
      return "failed";
    case TaskState::kCancelled:
      return "cancelled";
    case TaskState::kTimedOut:
      return "timed_out";
  }
  return "queued";
}

std::optional<TaskState> ParseTaskState(std::string_view text) {
  for (auto s : {TaskState::kQueued, TaskState::kRunning, TaskState::kSucceeded, TaskState::kFailed,
                 TaskState::kCancelled, TaskState::kTimedOut}) {
    if (ToString(s) == text) return s;
  }
  return std::nullopt;
}

bool IsFinal(TaskState state) {
  return state != TaskState::kQueued && state != TaskState::kRunning;
}

std::string_view ToString(WorkerState state) {
  switch (state) {
    case WorkerState::kStarting:
      return "starting";
    case WorkerState::kIdle:
      return "idle";
    case WorkerState::kBusy:
      return "busy";
    case WorkerState::kStopping:
      return "stopping";
  }
  return "starting";
}

}  // namespace runner::queue
