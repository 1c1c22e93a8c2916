#pragma once

// A Clock the test moves by hand: Now() and SystemNow() stand still until
// Advance(). WaitUntil returns once `ready`, the deadline on this clock, or a
// stop; it re-checks every few real milliseconds, so Advance() needs no hook.

#include <atomic>

#include "base/clock.h"

namespace runner::testing {

class ManualClock final : public Clock {
 public:
  explicit ManualClock(std::chrono::system_clock::time_point wall) : wall_(wall) {}
  TimePoint Now() const override {
    std::lock_guard lock(mu_);
    return steady_;
  }
  std::chrono::system_clock::time_point SystemNow() const override {
    std::lock_guard lock(mu_);
    return wall_;
  }
  void Advance(std::chrono::microseconds by) {
    std::lock_guard lock(mu_);
    steady_ += by;
    wall_ += by;
  }
  bool WaitUntil(std::condition_variable_any& cv, std::unique_lock<std::mutex>& lock,
                 std::stop_token stop, TimePoint deadline,
                 const std::function<bool()>& ready) override {
    while (!ready() && !stop.stop_requested() && Now() < deadline) {
      cv.wait_for(lock, stop, std::chrono::milliseconds(5), ready);
    }
    return ready();
  }

 private:
  mutable std::mutex mu_;
  TimePoint steady_{};                          // guarded by mu_
  std::chrono::system_clock::time_point wall_;  // guarded by mu_
};

}  // namespace runner::testing
