#pragma once

// An Isolator the test drives: the task's command says what to do.
//   {"ok"}            exit 0 at once
//   {"exit", "N"}     exit N
//   {"sleep", "MS"}   run MS milliseconds, or until stopped
//   {"block"}         run until stopped or until Unblock()
//   {"throw"}         throw std::runtime_error (an isolator bug)
//   {"print", "TEXT"} write TEXT to stdout, exit 0
// It records how many tasks run at once and how often each task ran. Its
// name and whether it is available are the test's (the selector's tests flip
// availability and count how often it was asked).
//
// Thread-safety: Run() from many threads; the rest from the test thread.

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

#include "isolation/isolator.h"

namespace runner::testing {

class FakeIsolator : public isolation::Isolator {
 public:
  explicit FakeIsolator(std::string name = "process", bool available = true)
      : name_(std::move(name)), available_(available) {}
  std::string_view Name() const override { return name_; }
  bool Available() override {
    ++checks_;
    return available_.load();
  }
  isolation::RunResult Run(const isolation::TaskSpec& spec, isolation::Observer& observer,
                           std::stop_token stop) override;

  void Unblock();
  int Running() const { return running_.load(); }
  int MaxRunning() const { return max_running_.load(); }
  int Started() const { return started_.load(); }
  std::map<std::string, int> RunsByTask() const;
  void set_available(bool v) { available_ = v; }
  int checks() const { return checks_.load(); }

 private:
  const std::string name_;
  std::atomic<bool> available_;
  std::atomic<int> checks_{0};
  std::atomic<int> running_{0};
  std::atomic<int> max_running_{0};
  std::atomic<int> started_{0};
  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  bool unblocked_ = false;           // guarded by mu_
  std::map<std::string, int> runs_;  // guarded by mu_
};

}  // namespace runner::testing
