#pragma once

// Picks the isolator for a task from what it asked for, the node's default
// mode and whether Docker is up right now:
//
//   requested   node default   Docker up      Docker down
//   docker      (any)          docker         Error isolation_unavailable
//   process     (any)          process        process
//   auto        docker         docker         Error isolation_unavailable
//   auto        process        process        process
//   auto        auto           docker         process (fallback)
//
// A task that asked for Docker is never run without a container. Docker's
// availability is re-read through Isolator::Available() (the Docker isolator
// caches its /_ping for about a second) on every Pick() and on Refresh(); each
// transition (up -> down, down -> up) is reported once to the OnChange
// callbacks so the pool can log it, emit an event and set a metric. The
// first observation is not a transition; read it with docker_available().
//
// Mode() says what a task asking `auto` gets now: "docker" when the default
// mode is docker, or auto with Docker up; "process" when the default mode is
// process, or auto with Docker down or absent. ("mixed", in NodeStatus, is
// the pool's to report when it is running tasks of both kinds.)
//
// Thread-safety: all methods may be called from any thread. Callbacks run on
// the thread that noticed the change, one at a time, in registration order;
// they must not call back into the selector. Pick() calls made while a
// transition is being reported wait for its callbacks, so keep them short
// (log, count, queue an event).

#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "isolation/isolator.h"

namespace runner::isolation {

class IsolationSelector {
 public:
  // `docker` may be null (no Docker support on this node); `process` must not
  // be (std::invalid_argument). Neither is owned; both must outlive the selector.
  IsolationSelector(Isolator* docker, Isolator* process, IsolationMode default_mode);

  // The isolator for a task that asked for `requested`, or Error
  // `isolation_unavailable` with a message saying what to do.
  Result<Isolator*> Pick(IsolationMode requested);

  // Registers a callback for Docker availability transitions.
  void OnChange(std::function<void(bool docker_available)> callback);

  // Re-checks Docker now (call it periodically so a transition is noticed
  // even when no task is picked). Returns the current availability.
  bool Refresh();

  // Last known availability (Refresh() if never checked).
  bool docker_available();
  std::string Mode();
  IsolationMode default_mode() const { return default_mode_; }

 private:
  bool Check();

  Isolator* const docker_;
  Isolator* const process_;
  const IsolationMode default_mode_;

  std::mutex mu_;
  std::optional<bool> docker_up_;  // guarded by mu_; nullopt until first checked

  // Guards callbacks_, serialises their calls, and orders transitions: held
  // (before mu_) while a transition is recorded and reported.
  std::mutex callbacks_mu_;
  std::vector<std::function<void(bool)>> callbacks_;
};

}  // namespace runner::isolation
