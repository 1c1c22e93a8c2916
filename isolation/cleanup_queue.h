#pragma once

// Runs the cleanup of finished tasks off the task's path: a job is any
// movable object whose destructor does the cleanup (an RAII owner of a
// cgroup, a work dir, a container). Take() queues it and returns at once; a
// thread of the queue destroys it. When `max_pending` are already waiting,
// Take() destroys the job on the caller's thread instead, so cleanup can never
// fall behind without bound. The destructor destroys every job still queued
// before it returns.
//
//   CleanupQueue<ContainerRemoval> removals(64);
//   removals.Take(ContainerRemoval(client, state, id, task));  // removed shortly
//   removals.Wait();  // tests: every taken job is done
//
// Thread-safety: Take() and Wait() may be called from any thread at once.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <stop_token>
#include <thread>
#include <utility>

namespace runner::isolation {

template <class Job>
class CleanupQueue {
 public:
  explicit CleanupQueue(std::size_t max_pending = 64)
      : max_pending_(max_pending), thread_([this](std::stop_token stop) { Loop(stop); }) {}

  ~CleanupQueue() {
    {
      // Under the lock: Loop checks the stop between its predicate and its
      // wait, so a stop requested outside it could be missed for good.
      std::lock_guard lock(mu_);
      thread_.request_stop();
    }
    cv_.notify_all();
    thread_.join();  // Loop drains the queue before it returns
  }

  CleanupQueue(const CleanupQueue&) = delete;
  CleanupQueue& operator=(const CleanupQueue&) = delete;

  void Take(Job job) {
    {
      std::lock_guard lock(mu_);
      if (queue_.size() < max_pending_) {
        queue_.push_back(std::move(job));
        cv_.notify_all();
        return;
      }
    }
    Job inline_job = std::move(job);  // destroyed here, on the caller's thread
  }

  // Blocks until every job taken so far has been destroyed.
  void Wait() {
    std::unique_lock lock(mu_);
    idle_cv_.wait(lock, [&] { return queue_.empty() && busy_ == 0; });
  }

 private:
  void Loop(std::stop_token stop) {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return !queue_.empty() || stop.stop_requested(); });
      if (queue_.empty()) return;  // stopping, and nothing left
      {
        Job job = std::move(queue_.front());
        queue_.pop_front();
        ++busy_;
        lock.unlock();
      }  // the job's cleanup runs here, outside the lock
      lock.lock();
      --busy_;
      idle_cv_.notify_all();
    }
  }

  const std::size_t max_pending_;
  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<Job> queue_;  // guarded by mu_
  int busy_ = 0;           // guarded by mu_
  std::jthread thread_;    // last: started once the rest exists
};

}  // namespace runner::isolation
