#include "runner/pool/task_outcome.h"

#include <string>
#include <utility>

namespace runner::pool {
namespace {

queue::FinishReport Failed(const isolation::RunResult& r, std::string code, std::string message,
                           bool retryable) {
  queue::FinishReport rep;
  rep.state = queue::TaskState::kFailed;
  if (r.kind != isolation::RunResult::Kind::kError && r.exit_code >= 0) rep.exit_code = r.exit_code;
  rep.error = queue::TaskError{std::move(code), std::move(message)};
  rep.retryable = retryable;
  return rep;
}

std::string Or(const std::string& text, const char* fallback) {
  return text.empty() ? std::string(fallback) : text;
}

}  // namespace

TaskOutcome MapRunResult(const isolation::RunResult& r, StopCause cause) {
  using Kind = isolation::RunResult::Kind;
  TaskOutcome out;
  switch (r.kind) {
    case Kind::kExited:
      if (r.exit_code == 0) {
        out.report.state = queue::TaskState::kSucceeded;
        out.report.exit_code = 0;
      } else {
        out.report = Failed(r, "nonzero_exit",
                            Or(r.message, "the task exited with a nonzero code") + " (exit code " +
                                std::to_string(r.exit_code) + ")",
                            true);
      }
      break;
    case Kind::kTimedOut:
      out.report.state = queue::TaskState::kTimedOut;
      if (r.exit_code >= 0) out.report.exit_code = r.exit_code;
      out.report.error =
          queue::TaskError{"timed_out", Or(r.message, "the task ran past its timeout")};
      break;
    case Kind::kOomKilled:
      out.report =
          Failed(r, "oom_killed",
                 Or(r.message, "the task was killed for exceeding its memory limit"), true);
      break;
    case Kind::kOverLimit:
      out.report =
          Failed(r, "over_limit", Or(r.message, "the task was killed for exceeding a limit"), true);
      break;
    case Kind::kError: {
      std::string code = r.error_code.empty() ? "internal" : r.error_code;
      // A missing image or a bad request does not heal by retrying.
      bool retryable = code != "image_not_found" && code != "validation_failed";
      out.report = Failed(r, code, Or(r.message, "the task could not be run"), retryable);
      break;
    }
    case Kind::kStopped:
      switch (cause) {
        case StopCause::kCancel:
          out.report.state = queue::TaskState::kCancelled;
          out.report.error = queue::TaskError{"cancelled", "the task was cancelled"};
          out.report.retryable = false;
          break;
        case StopCause::kShutdown:
          out.action = TaskOutcome::Action::kRelease;
          break;
        case StopCause::kLeaseLost:
        case StopCause::kNone:
          out.report = Failed(r, "lease_lost",
                              "the worker lost the task's lease (database unreachable or lease "
                              "expired); the task was stopped",
                              true);
          break;
      }
      break;
  }
  out.report.usage = r.usage;
  out.report.isolation_used = r.isolation;
  return out;
}

TaskOutcome Deferred(const Error& why, std::chrono::milliseconds delay) {
  TaskOutcome out;
  out.action = TaskOutcome::Action::kDefer;
  out.deferral = queue::Deferral{
      queue::TaskError{why.code.empty() ? "isolation_unavailable" : why.code,
                       why.message + " (the task waits in the queue; its attempt is not counted)"},
      delay};
  out.report.error = out.deferral.why;
  return out;
}

}  // namespace runner::pool
