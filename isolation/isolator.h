#pragma once

// The seam between the runner core and whatever runs a task: one call runs one
// task to completion in a fresh sandbox (a Docker container, or a process group
// with its own cgroup and work dir) and always cleans that sandbox up, on every
// path. Nothing here knows about the queue.
//
// Thread-safety: an Isolator is shared by all workers of a node; Run() is called
// concurrently from many worker threads and must be safe for that. Observer
// callbacks are invoked from the isolator's threads (possibly several), never
// concurrently for the same Run() call.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "base/error_codes.h"
#include "base/result.h"

namespace runner::isolation {

enum class IsolationMode { kAuto, kDocker, kProcess };

inline std::string_view ToString(IsolationMode mode) {
  switch (mode) {
    case IsolationMode::kDocker:
      return "docker";
    case IsolationMode::kProcess:
      return "process";
    case IsolationMode::kAuto:
      break;
  }
  return "auto";
}

inline std::optional<IsolationMode> ParseIsolationMode(std::string_view text) {
  if (text == "auto") return IsolationMode::kAuto;
  if (text == "docker") return IsolationMode::kDocker;
  if (text == "process") return IsolationMode::kProcess;
  return std::nullopt;
}

// Limits of one task. Zero means "no limit of that kind".
struct Limits {
  double cpus = 0;     // CPU cores, e.g. 0.5
  int64_t memory = 0;  // bytes, RAM without swap
  int64_t disk = 0;    // bytes the task may write
  int64_t pids = 0;    // processes/threads
};

// What a finished task used.
struct Usage {
  double cpu_seconds = 0;
  int64_t peak_memory = 0;  // bytes
  double duration = 0;      // seconds, wall clock from start to exit
};

// One live sample while a task runs (Docker stats or cgroup counters).
struct UsageSample {
  double cpu_percent = 0;  // 100 = one full core
  double cpu_seconds = 0;  // cumulative
  int64_t memory = 0;      // bytes, current working set
  int64_t disk = 0;        // bytes written to the work dir, when known
  int64_t pids = 0;
};

enum class OutputStream { kStdout, kStderr };

// What to do when a running task goes over its soft limit (a fraction of a
// limit). `kWarn` logs and raises an event; `kThrottle` lowers its CPU quota;
// `kKill` ends it with RunResult::Kind::kOverLimit.
enum class OverLimitAction { kWarn, kThrottle, kKill };

struct OverLimitPolicy {
  OverLimitAction action = OverLimitAction::kWarn;
  double soft_fraction = 0.9;  // of each limit
};

struct TaskSpec {
  std::string task_id;
  std::string worker_id;
  std::string node_id;
  int attempt = 1;
  std::vector<std::string> command;  // argv, never empty
  std::string image;                 // used by Docker
  std::map<std::string, std::string> env;
  Limits limits;
  std::chrono::milliseconds timeout{0};  // 0 = none
  std::map<std::string, std::string> labels;
};

struct RunResult {
  enum class Kind {
    kExited,     // the task ran and exited by itself; see exit_code
    kTimedOut,   // the isolator stopped it at spec.timeout
    kStopped,    // the stop_token fired (cancel, lease lost, shutdown: the caller knows why)
    kOomKilled,  // killed for exceeding its memory limit
    kOverLimit,  // killed by the over-limit policy or for exceeding its disk limit
    kError,      // could not run it at all, see error_code (image_not_found,
                 // isolation_unavailable, internal)
  };
  Kind kind = Kind::kError;
  int exit_code = -1;      // valid for kExited; the signal-derived code otherwise when known
  std::string error_code;  // docs/api.md error code when kind != kExited
  std::string message;     // what happened, how to fix it
  Usage usage;
  std::string isolation;  // "docker" or "process": what actually ran it
};

// How a run ended, as every isolator reports it: `kind`, the error code that
// goes with it (base/error_codes.h: timed_out, cancelled, oom_killed,
// over_limit; nonzero_exit for kExited with an exit code other than 0, set
// before this call) and what happened. Exit code and usage stay the caller's.
inline void SetEnding(RunResult& r, RunResult::Kind kind, std::string message) {
  using Kind = RunResult::Kind;
  r.kind = kind;
  switch (kind) {
    case Kind::kExited:
      r.error_code = r.exit_code != 0 ? errc::kNonzeroExit : "";
      break;
    case Kind::kTimedOut:
      r.error_code = errc::kTimedOut;
      break;
    case Kind::kStopped:
      r.error_code = errc::kCancelled;
      break;
    case Kind::kOomKilled:
      r.error_code = errc::kOomKilled;
      break;
    case Kind::kOverLimit:
      r.error_code = errc::kOverLimit;
      break;
    case Kind::kError:
      if (r.error_code.empty()) r.error_code = errc::kInternal;
      break;
  }
  r.message = std::move(message);
}

// A run that could not start the task: kError with `code` (an errc code).
inline RunResult RunError(std::string isolation, std::string code, std::string message) {
  RunResult r;
  r.isolation = std::move(isolation);
  r.error_code = std::move(code);
  SetEnding(r, RunResult::Kind::kError, std::move(message));
  return r;
}

class Observer {
 public:
  virtual ~Observer() = default;
  // The sandbox exists and the task is running (container id, or pid).
  virtual void OnStarted(std::string_view isolation, std::string_view handle) {
    (void)isolation;
    (void)handle;
  }
  // A piece of output, in order per stream. May be large; copy what you keep.
  virtual void OnOutput(OutputStream stream, std::string_view data) = 0;
  virtual void OnUsage(const UsageSample& sample) { (void)sample; }
  // A soft limit was crossed; `action` is what the policy did about it.
  virtual void OnOverLimit(std::string_view resource, OverLimitAction action,
                           std::string_view message) {
    (void)resource;
    (void)action;
    (void)message;
  }
};

class Isolator {
 public:
  virtual ~Isolator() = default;
  // "docker" or "process".
  virtual std::string_view Name() const = 0;
  // Cheap, may be cached for a second or two.
  virtual bool Available() = 0;
  // Runs spec to completion. Returns when the sandbox is gone. Honors
  // spec.timeout itself; stop requests end it as Kind::kStopped.
  virtual RunResult Run(const TaskSpec& spec, Observer& observer, std::stop_token stop) = 0;
};

}  // namespace runner::isolation
