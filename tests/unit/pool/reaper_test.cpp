// The reaper's order and pace, on a fake store and a clock the test moves:
// orphaned containers of dead nodes go before the queue is reaped, this
// node's own only on the first pass (leftovers of a crashed run), and passes
// follow the interval on the node's clock.

#include "runner/pool/reaper.h"

#include <catch2/catch.hpp>
#include <mutex>
#include <vector>

#include "tests/support/fakes/manual_clock.h"
#include "tests/support/fakes/queue_store_fake.h"
#include "tests/support/services.h"

namespace runner::pool {
namespace {

using namespace std::chrono_literals;
using runner::testing::FakeQueueStore;
using runner::testing::ManualClock;
using runner::testing::WaitFor;

struct Hook {
  std::mutex mu;
  std::vector<std::vector<std::string>> calls;
  std::vector<int> reaps_before;  // Reap calls already made when the hook ran
  bool gone = true;               // what the hook answers: the containers are gone
  OrphanReaper Make(FakeQueueStore& store) {
    return [this, &store](const std::vector<std::string>& nodes) {
      std::lock_guard lock(mu);
      calls.push_back(nodes);
      reaps_before.push_back(store.Reaps());
      return gone;
    };
  }
  std::size_t Count() {
    std::lock_guard lock(mu);
    return calls.size();
  }
};

ReaperOptions Options() {
  ReaperOptions o;
  o.node_id = "self";
  o.lease = 30s;
  o.interval = 5s;
  o.policy.node_dead_after = 60s;
  return o;
}

TEST_CASE("a pass reaps dead nodes' containers, never this node's, before the queue",
          "[pool][reaper]") {
  FakeQueueStore store;
  store.SetDeadNodes({"dead-a", "self"});  // our heartbeat looks old during an outage
  Reaper reaper(store, store, Options());
  Hook hook;
  reaper.SetOrphanReaper(hook.Make(store));

  reaper.ReapOwnLeftovers();
  reaper.RunOnce();
  reaper.RunOnce();
  REQUIRE(hook.calls.size() == 3);
  CHECK(hook.calls[0] == std::vector<std::string>{"self"});
  CHECK(hook.calls[1] == std::vector<std::string>{"dead-a"});
  CHECK(hook.calls[2] == std::vector<std::string>{"dead-a"});
  // Containers first: the hook ran before the leases were requeued.
  CHECK(hook.reaps_before == std::vector<int>{0, 0, 1});
  CHECK(store.Reaps() == 2);
  // A node silent for 2/3 of the lease counts as dead, though the policy
  // waits 60 s to remove its row.
  CHECK(store.LastDeadAfter() == 20s);
}

TEST_CASE("a dead node's containers that may still run hold the requeue until they are gone",
          "[pool][reaper]") {
  FakeQueueStore store;
  store.SetDeadNodes({"dead-a"});
  Reaper reaper(store, store, Options());
  Hook hook;
  hook.gone = false;  // a removal failed on a daemon that answers
  reaper.SetOrphanReaper(hook.Make(store));
  reaper.RunOnce();
  reaper.RunOnce();
  CHECK(hook.Count() == 2);
  CHECK(store.Reaps() == 0);  // no lease requeued beside a running first attempt
  hook.gone = true;
  reaper.RunOnce();
  CHECK(store.Reaps() == 1);
}

TEST_CASE("no dead node: the hook is not called; reap off: the queue is left alone",
          "[pool][reaper]") {
  FakeQueueStore store;
  auto options = Options();
  options.reap = false;
  Reaper reaper(store, store, options);
  Hook hook;
  reaper.SetOrphanReaper(hook.Make(store));
  reaper.RunOnce();
  CHECK(hook.Count() == 0);
  CHECK(store.Reaps() == 0);
}

TEST_CASE("passes follow the interval on the node's clock", "[pool][reaper]") {
  FakeQueueStore store;
  ManualClock clock(std::chrono::system_clock::now());
  auto options = Options();
  options.interval = 1h;  // never passes in real time during the test
  Reaper reaper(store, store, options, clock);
  reaper.Start();
  REQUIRE(WaitFor([&] { return store.Reaps() == 1; }, 5s));  // the first at once
  clock.Advance(59min);
  CHECK_FALSE(WaitFor([&] { return store.Reaps() > 1; }, 100ms));
  // Only the clock can bring the next pass: real time never reaches an hour.
  clock.Advance(1min);
  CHECK(WaitFor([&] { return store.Reaps() == 2; }, 5s));
  clock.Advance(1h);
  CHECK(WaitFor([&] { return store.Reaps() == 3; }, 5s));
  reaper.Stop();
  const int after_stop = store.Reaps();
  clock.Advance(2h);
  CHECK_FALSE(WaitFor([&] { return store.Reaps() > after_stop; }, 50ms));
}

}  // namespace
}  // namespace runner::pool
