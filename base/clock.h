#pragma once

// The Clock seam (like Envoy's TimeSource): what reads the time or waits for
// it takes a Clock, so a test can drive time by hand (tests/support/fakes/
// manual_clock.h) instead of sleeping to prove that nothing happened.
//
//   Clock& clock = SystemClock();          // production
//   std::unique_lock lock(mu);
//   clock.WaitUntil(cv, lock, stop, clock.Now() + 1s, [&] { return wake; });
//
// Thread-safety: every method may be called from any thread at any time.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <stop_token>

namespace runner {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;
  // Monotonic time, for deadlines and intervals.
  virtual TimePoint Now() const = 0;
  // Wall-clock time, for timestamps people read.
  virtual std::chrono::system_clock::time_point SystemNow() const = 0;
  // With `lock` held on the mutex that guards what `ready` reads: waits on
  // `cv` until ready() is true, `deadline` has passed on this clock or `stop`
  // is requested. Returns ready().
  virtual bool WaitUntil(std::condition_variable_any& cv, std::unique_lock<std::mutex>& lock,
                         std::stop_token stop, TimePoint deadline,
                         const std::function<bool()>& ready) = 0;

  bool WaitFor(std::condition_variable_any& cv, std::unique_lock<std::mutex>& lock,
               std::stop_token stop, Duration wait, const std::function<bool()>& ready) {
    return WaitUntil(cv, lock, std::move(stop), Now() + wait, ready);
  }
  // Waits `wait` on this clock unless `stop` is requested first; false when stopped.
  bool SleepFor(std::stop_token stop, Duration wait) {
    std::mutex mu;
    std::condition_variable_any cv;
    std::unique_lock lock(mu);
    WaitFor(cv, lock, stop, wait, [] { return false; });
    return !stop.stop_requested();
  }
};

// The real clocks (steady_clock and system_clock); one instance for the process.
class RealClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  std::chrono::system_clock::time_point SystemNow() const override {
    return std::chrono::system_clock::now();
  }
  bool WaitUntil(std::condition_variable_any& cv, std::unique_lock<std::mutex>& lock,
                 std::stop_token stop, TimePoint deadline,
                 const std::function<bool()>& ready) override {
    return cv.wait_until(lock, stop, deadline, ready);
  }
};

inline Clock& SystemClock() {
  static RealClock clock;
  return clock;
}

}  // namespace runner
