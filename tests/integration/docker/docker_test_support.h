#pragma once

// What the Docker isolator's integration tests share (docker_isolator_test,
// warm_pool_test): random ids, a task spec on runner-task:latest, and an
// Observer that keeps everything a run reports.
//
// Thread-safety: Collector's callbacks may come from any thread (its mutex).

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "isolation/isolator.h"

namespace runner::testing::docker {

inline std::string RandomId() {
  static std::mt19937_64 rng{std::random_device{}()};
  static std::mutex mu;
  std::lock_guard lock(mu);
  const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 10; ++i) s += hex[rng() % 16];
  return s;
}

// A task on runner-task:latest, labelled with `node` (each suite's run id).
inline isolation::TaskSpec SpecOn(const std::string& node, std::vector<std::string> command) {
  isolation::TaskSpec s;
  s.task_id = "t-" + RandomId();
  s.worker_id = "w-test";
  s.node_id = node;
  s.image = "runner-task:latest";
  s.command = std::move(command);
  s.timeout = std::chrono::seconds(60);
  return s;
}

class Collector : public isolation::Observer {
 public:
  void OnStarted(std::string_view, std::string_view handle) override {
    std::lock_guard lock(mu);
    container = handle;
    started = true;
  }
  void OnOutput(isolation::OutputStream s, std::string_view data) override {
    std::lock_guard lock(mu);
    (s == isolation::OutputStream::kStdout ? out : err) += data;
  }
  void OnUsage(const isolation::UsageSample& sample) override {
    std::lock_guard lock(mu);
    samples.push_back(sample);
  }
  void OnOverLimit(std::string_view resource, isolation::OverLimitAction,
                   std::string_view) override {
    std::lock_guard lock(mu);
    over_limit.emplace_back(resource);
  }

  std::mutex mu;
  std::string container, out, err;
  std::vector<isolation::UsageSample> samples;
  std::vector<std::string> over_limit;
  std::atomic<bool> started{false};
};

}  // namespace runner::testing::docker
