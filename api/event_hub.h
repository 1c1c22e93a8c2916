#pragma once

// One shared poller of the events table fanning out to SSE subscribers
// (GET /api/v1/events). Each subscriber has a BOUNDED buffer: when a client
// reads too slowly and its buffer fills, the subscription is marked overflowed
// and its stream ends (the browser's EventSource reconnects with
// Last-Event-ID and resumes from the table). Publishing never blocks on a
// client, so a slow client can never slow the poller, other clients or the
// workers that write events.
//
// Thread-safety: every method may be called from any thread. The poller runs
// on its own thread between Start() and Stop().

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "base/result.h"
#include "runner/queue/queue_store.h"

namespace runner::api {

struct EventHubOptions {
  std::chrono::milliseconds poll_interval{250};
  std::size_t buffer_events = 1024;  // per subscriber
  std::size_t max_subscribers = 1024;
  std::size_t batch = 500;  // events per EventsAfter() call
  // Event ids come from a sequence, so a transaction that took id N may commit
  // after one that took N+1. The poller waits this long for such a hole to
  // fill before giving up on it (a rolled-back insert leaves one for good).
  std::chrono::milliseconds hole_wait{2000};
};

class EventSubscription {
 public:
  enum class Wake { kEvents, kTimeout, kClosed, kOverflow };

  explicit EventSubscription(std::size_t capacity) : capacity_(capacity) {}

  // Moves buffered events into `out` (waiting up to `wait` for some).
  Wake Next(std::vector<queue::Event>& out, std::chrono::milliseconds wait);
  // Waits up to `wait` or until closed; true when closed. For streams that
  // poll something else (log follow) but must end promptly on Stop().
  bool WaitClosed(std::chrono::milliseconds wait);

  // Called by the hub.
  void Push(const queue::Event& event);
  void Close();

 private:
  const std::size_t capacity_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<queue::Event> buffer_;  // guarded by mu_
  bool overflow_ = false;            // guarded by mu_
  bool closed_ = false;              // guarded by mu_
};

class EventHub {
 public:
  EventHub(queue::EventLog& store, EventHubOptions options, Clock& clock = SystemClock());
  ~EventHub();
  EventHub(const EventHub&) = delete;
  EventHub& operator=(const EventHub&) = delete;

  // Starts the poller at the current end of the events table.
  void Start();
  // Stops the poller and closes every subscription (streams end).
  void Stop();

  // `unavailable` when max_subscribers are connected or the hub is stopped.
  Result<std::shared_ptr<EventSubscription>> Subscribe();
  void Unsubscribe(const std::shared_ptr<EventSubscription>& subscription);
  std::size_t subscribers();

  // Fans events out to every subscriber (the poller calls this; tests too).
  void Publish(const std::vector<queue::Event>& events);

 private:
  void PollLoop(std::stop_token stop, bool at_end);
  bool SkipToEnd();
  void PollOnce();

  queue::EventLog& store_;
  const EventHubOptions options_;
  Clock& clock_;  // paces the poller and times holes
  std::mutex mu_;
  std::condition_variable_any cv_;
  std::vector<std::shared_ptr<EventSubscription>> subscribers_;  // guarded by mu_
  bool stopped_ = false;                                         // guarded by mu_
  // Poller thread only: every id <= low_ is settled (published, or a hole we
  // gave up on); published_ holds the ids above low_ already published.
  int64_t low_ = 0;
  std::set<int64_t> published_;
  std::optional<Clock::TimePoint> hole_since_;
  std::jthread poller_;
};

}  // namespace runner::api
