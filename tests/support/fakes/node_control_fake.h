#pragma once

// A NodeControl for the API's unit tests: answers the status a test sets and
// records every pool command, in order, so a test can assert what a route
// asked the node to do.
//
// Thread-safety: every method takes one mutex (routes run on HTTP threads).

#include <mutex>
#include <string>
#include <vector>

#include "runner/node/node_control.h"

namespace runner::testing {

class FakeNodeControl : public NodeControl {
 public:
  // One pool command as the node received it.
  struct Command {
    std::string what;  // "scale", "stop" or "start"
    int count = 0;     // scale
    StopOptions stop;  // stop
  };

  void SetStatus(NodeStatus status) {
    std::lock_guard lock(mu_);
    status_ = std::move(status);
  }
  std::vector<Command> Commands() const {
    std::lock_guard lock(mu_);
    return commands_;
  }

  NodeStatus Status() override {
    std::lock_guard lock(mu_);
    return status_;
  }
  runner::Status Scale(int count) override {
    std::lock_guard lock(mu_);
    commands_.push_back({"scale", count, {}});
    status_.pool.target = count;
    return {};
  }
  void StopPool(const StopOptions& options) override {
    std::lock_guard lock(mu_);
    commands_.push_back({"stop", 0, options});
    status_.pool.state = options.force ? PoolState::kStopped : PoolState::kDraining;
  }
  void StartPool() override {
    std::lock_guard lock(mu_);
    commands_.push_back({"start", 0, {}});
    status_.pool.state = PoolState::kRunning;
  }
  bool Running() override {
    std::lock_guard lock(mu_);
    return status_.pool.state == PoolState::kRunning;
  }

 private:
  mutable std::mutex mu_;
  NodeStatus status_;
  std::vector<Command> commands_;
};

}  // namespace runner::testing
