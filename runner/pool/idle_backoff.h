#pragma once

// The claimer's idle poll interval: starts at the configured poll interval,
// doubles after every claim that found nothing, is capped (30 s by default) and
// goes back to the start as soon as a claim returns a task. NOTIFY wake-ups
// come on top of this; the poll is only the fallback for a missed
// notification.
//
// Thread-safety: none; owned by the claimer thread.

#include <algorithm>
#include <chrono>

namespace runner::pool {

class IdleBackoff {
 public:
  IdleBackoff(std::chrono::milliseconds initial, std::chrono::milliseconds max)
      : initial_(std::max(initial, std::chrono::milliseconds(1))),
        max_(std::max(max, initial_)),
        current_(initial_) {}

  // The wait before the next poll after an empty claim; doubles the one after.
  std::chrono::milliseconds Next() {
    std::chrono::milliseconds now = current_;
    current_ = std::min(current_ * 2, max_);
    return now;
  }
  // A claim returned work: poll at the base interval again.
  void Reset() { current_ = initial_; }
  std::chrono::milliseconds Peek() const { return current_; }

 private:
  std::chrono::milliseconds initial_;
  std::chrono::milliseconds max_;
  std::chrono::milliseconds current_;
};

}  // namespace runner::pool
