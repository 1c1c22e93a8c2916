#include <catch2/catch.hpp>
#include <mutex>

#include "api/event_hub.h"
#include "tests/support/fakes/manual_clock.h"
#include "tests/support/services.h"

using namespace std::chrono_literals;
using runner::Error;
using runner::MakeError;
using runner::Result;
using runner::api::EventHub;
using runner::api::EventSubscription;
namespace q = runner::queue;

namespace {

// The hub reads only the events table: its role, EventLog, is all a fake needs.
class EventsOnlyStore : public q::EventLog {
 public:
  void Add(int64_t id) {
    std::lock_guard lock(mu_);
    q::Event e;
    e.id = id;
    e.kind = "task.queued";
    events_.push_back(e);
    std::sort(events_.begin(), events_.end(),
              [](const q::Event& a, const q::Event& b) { return a.id < b.id; });
  }
  Result<std::vector<q::Event>> EventsAfter(int64_t after, std::size_t limit) override {
    std::lock_guard lock(mu_);
    std::vector<q::Event> out;
    for (const auto& e : events_) {
      if (e.id > after && out.size() < limit) out.push_back(e);
    }
    return out;
  }

  runner::Status Emit(const q::NewEvent&) override { return {}; }

 private:
  std::mutex mu_;
  std::vector<q::Event> events_;
};

std::vector<int64_t> Drain(EventSubscription& sub, std::size_t want) {
  std::vector<int64_t> ids;
  runner::testing::WaitFor(
      [&] {
        std::vector<q::Event> batch;
        sub.Next(batch, 20ms);
        for (const auto& e : batch) ids.push_back(e.id);
        return ids.size() >= want;
      },
      5s, 1ms);
  return ids;
}

}  // namespace

TEST_CASE("an event committed late (a hole in the ids) still reaches subscribers once",
          "[api][sse]") {
  EventsOnlyStore store;
  store.Add(1);  // history before the hub starts is not replayed to live subscribers
  runner::api::EventHubOptions options;
  options.poll_interval = 10ms;
  options.hole_wait = 5s;
  EventHub hub(store, options);
  hub.Start();
  auto sub = hub.Subscribe();
  REQUIRE(sub.ok());
  std::this_thread::sleep_for(50ms);
  store.Add(2);
  store.Add(4);  // 3 is still in flight in another transaction
  CHECK(Drain(**sub, 2) == std::vector<int64_t>{2, 4});
  store.Add(3);
  store.Add(5);
  auto later = Drain(**sub, 2);
  std::sort(later.begin(), later.end());
  CHECK(later == std::vector<int64_t>{3, 5});
  std::vector<q::Event> extra;
  CHECK((*sub)->Next(extra, 100ms) == EventSubscription::Wake::kTimeout);
  hub.Stop();
  CHECK((*sub)->Next(extra, 1s) == EventSubscription::Wake::kClosed);
}

TEST_CASE("a hole in the ids is waited for hole_wait on the hub's clock, then given up",
          "[api][sse]") {
  EventsOnlyStore store;
  runner::api::EventHubOptions options;
  options.poll_interval = 10ms;
  options.hole_wait = 5s;
  runner::testing::ManualClock clock(std::chrono::system_clock::now());
  EventHub hub(store, options, clock);
  hub.Start();
  auto sub = hub.Subscribe();
  REQUIRE(sub.ok());
  // Polls come only when the hub's clock passes a poll interval: each wait
  // of Drain moves it one.
  auto drain = [&](std::size_t want) {
    std::vector<int64_t> ids;
    runner::testing::WaitFor(
        [&] {
          clock.Advance(options.poll_interval);
          std::vector<q::Event> batch;
          (*sub)->Next(batch, 5ms);
          for (const auto& e : batch) ids.push_back(e.id);
          return ids.size() >= want;
        },
        5s, 1ms);
    return ids;
  };
  store.Add(1);
  store.Add(3);  // 2 is still in flight in another transaction
  CHECK(drain(2) == std::vector<int64_t>{1, 3});
  clock.Advance(3s);  // under hole_wait: 2 is still awaited
  store.Add(2);
  CHECK(drain(1) == std::vector<int64_t>{2});

  store.Add(5);  // 4 in flight
  CHECK(drain(1) == std::vector<int64_t>{5});
  clock.Advance(5s);  // hole_wait has passed on the hub's clock
  store.Add(6);
  // The poll that brings 6 gives up on 4 (it reads first, then settles).
  CHECK(drain(1) == std::vector<int64_t>{6});
  store.Add(4);
  store.Add(7);
  // 7 arrives, 4 never does: the poller reads after the hole it gave up on.
  CHECK(drain(1) == std::vector<int64_t>{7});
  hub.Stop();
}

TEST_CASE("a slow subscriber is dropped while a fast one keeps receiving", "[api][sse]") {
  EventsOnlyStore store;
  runner::api::EventHubOptions options;
  options.buffer_events = 4;
  options.max_subscribers = 2;
  EventHub hub(store, options);
  auto slow = hub.Subscribe();
  auto fast = hub.Subscribe();
  REQUIRE(slow.ok());
  REQUIRE(fast.ok());
  CHECK_FALSE(hub.Subscribe().ok());  // bounded number of subscribers
  for (int64_t i = 1; i <= 12; ++i) {
    hub.Publish({[&] {
      q::Event e;
      e.id = i;
      return e;
    }()});
    if (i % 3 == 0) CHECK(Drain(**fast, 3).size() == 3);
  }
  std::vector<q::Event> got;
  CHECK((*slow)->Next(got, 0ms) == EventSubscription::Wake::kOverflow);
}
