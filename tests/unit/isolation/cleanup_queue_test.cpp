#include "isolation/cleanup_queue.h"

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

using runner::isolation::CleanupQueue;
using namespace std::chrono_literals;

namespace {

// Records which thread destroyed it; optionally holds its destructor until
// the gate opens, to play a slow cleanup.
struct Log {
  std::mutex mu;
  std::vector<std::thread::id> cleaned_on;  // guarded by mu
  std::atomic<bool> gate_open{true};
  std::atomic<int> entered{0};  // destructors begun
};

class Job {
 public:
  explicit Job(Log& log) : log_(&log) {}
  Job(Job&& other) noexcept : log_(other.log_) { other.log_ = nullptr; }
  Job& operator=(Job&&) = delete;
  ~Job() {
    if (log_ == nullptr) return;
    ++log_->entered;
    while (!log_->gate_open.load()) std::this_thread::sleep_for(1ms);
    std::lock_guard lock(log_->mu);
    log_->cleaned_on.push_back(std::this_thread::get_id());
  }

 private:
  Log* log_;
};

size_t Cleaned(Log& log) {
  std::lock_guard lock(log.mu);
  return log.cleaned_on.size();
}

}  // namespace

TEST_CASE("jobs are cleaned up on the queue's thread, and Wait sees them done", "[cleanup]") {
  Log log;
  CleanupQueue<Job> queue(8);
  for (int i = 0; i < 5; ++i) queue.Take(Job(log));
  queue.Wait();
  REQUIRE(Cleaned(log) == 5);
  std::lock_guard lock(log.mu);
  for (auto id : log.cleaned_on) CHECK(id != std::this_thread::get_id());
}

TEST_CASE("past max_pending the caller cleans up itself", "[cleanup]") {
  Log log;
  log.gate_open = false;  // the queue's thread stalls on its first job
  CleanupQueue<Job> queue(2);
  queue.Take(Job(log));  // taken by the thread, which stalls in it
  // Once the thread holds it, exactly two more fit in the queue.
  while (log.entered.load() == 0) std::this_thread::sleep_for(1ms);
  queue.Take(Job(log));
  queue.Take(Job(log));
  std::thread::id me = std::this_thread::get_id();
  {
    // The fourth cannot wait: cleaned up right here, once the gate opens.
    std::thread opener([&] {
      std::this_thread::sleep_for(50ms);
      log.gate_open = true;
    });
    queue.Take(Job(log));
    opener.join();
  }
  queue.Wait();
  std::lock_guard lock(log.mu);
  REQUIRE(log.cleaned_on.size() == 4);
  CHECK(std::count(log.cleaned_on.begin(), log.cleaned_on.end(), me) == 1);
}

TEST_CASE("destroying the queue cleans up every job still waiting", "[cleanup]") {
  Log log;
  log.gate_open = false;
  {
    CleanupQueue<Job> queue(64);
    for (int i = 0; i < 10; ++i) queue.Take(Job(log));
    log.gate_open = true;
  }
  CHECK(Cleaned(log) == 10);
}
