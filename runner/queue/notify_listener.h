#pragma once

// Wakes claimers without polling: a thread with its own connection LISTENs on
// `runner_tasks` (payload: the queue of a new task) and `runner_cancel`
// (payload: the id of a running task whose cancel was requested) and calls the
// callback for each notification. When the connection breaks (database
// restart, terminated backend) it reconnects with exponential backoff
// (100 ms .. 5 s); after each (re)connect it calls the callback once with
// channel `runner_tasks` and an empty payload, meaning "notifications may have
// been missed: poll now". Polling stays the fallback: notifications are
// best-effort.
//
// Thread-safety: the callback runs on the listener's thread, one call at a
// time; keep it short (signal a condition variable). Connected() and Stop()
// may be called from any thread. The destructor stops and joins.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>

namespace runner::queue {

inline constexpr std::string_view kTasksChannel = "runner_tasks";
inline constexpr std::string_view kCancelChannel = "runner_cancel";

class NotifyListener {
 public:
  using Callback = std::function<void(std::string_view channel, std::string_view payload)>;

  struct Options {
    std::chrono::milliseconds wait_slice{200};       // longest blocking wait
    std::chrono::milliseconds liveness_check{5000};  // SELECT 1 when idle this long
    std::chrono::milliseconds backoff_min{100};
    std::chrono::milliseconds backoff_max{5000};
  };

  // Starts the thread at once; it connects in the background.
  NotifyListener(std::string conninfo, Callback callback);
  NotifyListener(std::string conninfo, Callback callback, Options options);
  ~NotifyListener();
  NotifyListener(const NotifyListener&) = delete;
  NotifyListener& operator=(const NotifyListener&) = delete;

  // True while LISTENing on a live connection.
  bool Connected() const { return connected_.load(); }
  // How many times it has connected (1 after the first connect).
  int Connects() const { return connects_.load(); }
  // Stops the thread and joins it (bounded by wait_slice plus a connect timeout).
  void Stop();

 private:
  void Run(std::stop_token stop);
  void Sleep(std::stop_token stop, std::chrono::milliseconds d);

  const std::string conninfo_;
  const Callback callback_;
  const Options options_;
  std::atomic<bool> connected_{false};
  std::atomic<int> connects_{0};
  std::mutex mu_;  // with cv_, only for interruptible sleeps
  std::condition_variable_any cv_;
  std::jthread thread_;  // last: started after the members it uses
};

}  // namespace runner::queue
