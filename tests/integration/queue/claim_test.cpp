#include <catch2/catch.hpp>
#include <mutex>
#include <set>
#include <thread>

#include "tests/integration/queue/queue_fixture.h"

using namespace runner::queue;
using namespace runner::queue::testing;
using runner::testing::TestDatabase;
using runner::testing::WaitFor;

TEST_CASE("eight claimers share ten thousand tasks, each claimed exactly once", "[queue][claim]") {
  TestDatabase db;
  StoreOptions options;
  options.pool_size = 9;
  auto store = OpenStore(db, options);
  constexpr int kTasks = 10000;
  std::vector<NewTask> batch(1000, Echo());
  for (int i = 0; i < kTasks / 1000; ++i) {
    auto r = store->SubmitBatch(batch);
    REQUIRE(r.ok());
  }
  std::mutex mu;
  std::vector<std::string> claimed;  // guarded by mu
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::string> workers;
      for (int w = 0; w < 16; ++w)
        workers.push_back("w" + std::to_string(t) + "-" + std::to_string(w));
      int empty = 0;
      while (empty < 2) {
        auto r = store->Claim(ClaimFor(workers, "node-" + std::to_string(t)));
        if (!r.ok()) continue;  // unavailable under load: try again
        if (r->empty()) {
          ++empty;
          continue;
        }
        std::lock_guard lock(mu);
        for (const auto& task : *r) claimed.push_back(task.id);
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> unique(claimed.begin(), claimed.end());
  CHECK(claimed.size() == kTasks);
  CHECK(unique.size() == kTasks);
  CHECK(Scalar(db, "SELECT count(*) FROM tasks WHERE state = 'running' AND attempt = 1") ==
        std::to_string(kTasks));
  CHECK(Scalar(db, "SELECT count(*) FROM events WHERE kind = 'task.started'") ==
        std::to_string(kTasks));
}

TEST_CASE("claims go by priority, then run_at, one task per idle worker", "[queue][claim]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask low = Echo("low");
  NewTask high = Echo("high");
  high.priority = 10;
  NewTask other_queue = Echo("other");
  other_queue.queue = "other";
  auto a = store->Submit(low);
  auto b = store->Submit(high);
  auto c = store->Submit(other_queue);
  REQUIRE((a.ok() && b.ok() && c.ok()));
  auto req = ClaimFor({"w1"});
  req.queues = {"default"};
  auto first = store->Claim(req);
  REQUIRE(first.ok());
  REQUIRE(first->size() == 1);
  CHECK(first->front().id == b->task.id);
  CHECK(first->front().state == TaskState::kRunning);
  CHECK(first->front().worker_id == "w1");
  CHECK(first->front().node_id == "node-a");
  CHECK(first->front().attempt == 1);
  CHECK(first->front().lease_expires_at.has_value());
  auto rest = store->Claim(ClaimFor({"w2", "w3", "w4"}));
  REQUIRE(rest.ok());
  CHECK(rest->size() == 2);
  std::set<std::string> owners;
  for (const auto& t : *rest) owners.insert(*t.worker_id);
  CHECK(owners.size() == 2);
}

TEST_CASE("a delayed task is not claimed before its time", "[queue][claim]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask t = Echo();
  t.delay = 0.4;
  REQUIRE(store->Submit(t).ok());
  auto now = store->Claim(ClaimFor({"w1"}));
  REQUIRE(now.ok());
  CHECK(now->empty());
  CHECK(WaitFor(
      [&] {
        auto r = store->Claim(ClaimFor({"w1"}));
        return r.ok() && r->size() == 1;
      },
      std::chrono::seconds(5)));
}
