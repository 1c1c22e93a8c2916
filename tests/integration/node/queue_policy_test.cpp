// Queue policies (issue #18) as nodes live them: a slot freed by a finish is
// taken at once and a task held back by the rate limit starts when its window
// opens, both without waiting for the poll. The nodes poll every 60 s, so a
// start that waited for a poll comes a minute late; the bounds below are
// seconds.

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runner/metrics/registry.h"
#include "runner/node/node.h"
#include "runner/queue/postgres_store.h"
#include "tests/integration/node/node_fixture.h"
#include "tests/support/services.h"

using namespace std::chrono_literals;
using runner::node::Node;
using runner::node::NodeHooks;
using runner::pool::testing::Command;
using runner::pool::testing::Count;
using runner::pool::testing::NodeConfig;
using runner::pool::testing::NoopIsolator;
using runner::pool::testing::Scalar;
using runner::queue::QueuePolicy;
using runner::queue::RateLimit;
using runner::testing::TempDir;
using runner::testing::TestDatabase;
using runner::testing::WaitFor;

namespace {

// A node that polls once a minute: only a notification or a finish that
// claims can start a task sooner.
std::unique_ptr<Node> SlowPollNode(const TestDatabase& db, const TempDir& dir,
                                   runner::metrics::Registry& registry,
                                   runner::isolation::Isolator& isolator, int workers,
                                   bool claim_on_finish) {
  auto config = NodeConfig(dir, workers);
  config.poll_interval = 60;
  config.idle_backoff_max = 60;
  config.claim_on_finish = claim_on_finish;
  NodeHooks hooks;
  hooks.isolator_override = &isolator;
  auto node = Node::Create(config, db.conninfo(), registry, std::move(hooks));
  if (!node.ok()) throw std::runtime_error("cannot create the node: " + node.error().message);
  return std::move(node.value());
}

// The start times of the queue's tasks, in seconds after the first start, in
// start order.
std::vector<double> StartOffsets(const TestDatabase& db, const std::string& queue) {
  std::vector<double> out;
  const std::string list = Scalar(
      db,
      "SELECT string_agg(extract(epoch FROM started_at - (SELECT min(started_at) FROM tasks "
      "WHERE queue = '" +
          queue + "'))::text, ',' ORDER BY started_at) FROM tasks WHERE queue = '" + queue + "'");
  std::size_t pos = 0;
  while (pos < list.size()) {
    auto comma = list.find(',', pos);
    if (comma == std::string::npos) comma = list.size();
    out.push_back(std::stod(list.substr(pos, comma - pos)));
    pos = comma + 1;
  }
  return out;
}

}  // namespace

TEST_CASE("a slot freed by a finish is taken at once, on either node, not at the next poll",
          "[pool][node][policy]") {
  // On: the finishing worker claims the next task in its finish statement.
  // Off: the finish notifies, and a claimer (of either node) takes the slot.
  const bool claim_on_finish = GENERATE(true, false);
  // The slot: of the queue (max_running 1), or of the tasks' one group
  // (max_running_per_group 1).
  const bool by_group = GENERATE(false, true);
  INFO("claim_on_finish=" << claim_on_finish << " by_group=" << by_group);
  TestDatabase db;
  TempDir dir_a, dir_b;
  runner::metrics::Registry reg_a, reg_b;
  NoopIsolator work(300ms);
  auto a = SlowPollNode(db, dir_a, reg_a, work, 1, claim_on_finish);
  auto b = SlowPollNode(db, dir_b, reg_b, work, 1, claim_on_finish);
  QueuePolicy one;
  if (by_group) {
    one.max_running_per_group = 1;
  } else {
    one.max_running = 1;
  }
  REQUIRE(a->postgres().SetQueuePolicy("one", one).ok());
  REQUIRE(a->Start().ok());
  REQUIRE(b->Start().ok());
  auto& claims_a = reg_a.GetCounter("runner_claims_total", "");
  auto& claims_b = reg_b.GetCounter("runner_claims_total", "");
  // Both listen and have made their start-up claim: from here on only a
  // notification, a finish that claims or a 60 s poll starts anything.
  REQUIRE(WaitFor(
      [&] {
        return a->Listening() && b->Listening() && claims_a.Value() >= 1 && claims_b.Value() >= 1;
      },
      10s));
  constexpr int kTasks = 4;
  auto task = Command({"true"});
  task.queue = "one";
  if (by_group) task.group = "g";
  REQUIRE(a->postgres().SubmitBatch(std::vector<runner::queue::NewTask>(kTasks, task)).ok());
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(WaitFor(
      [&] { return Count(db, "SELECT count(*) FROM tasks WHERE state = 'succeeded'") == kTasks; },
      30s, 20ms));
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Each start after the previous task's finish, and soon after it.
  const std::string gaps = Scalar(
      db,
      "SELECT string_agg(extract(epoch FROM started_at - prev)::text, ',') FROM (SELECT "
      "started_at, lag(finished_at) OVER (ORDER BY started_at) AS prev FROM tasks) x WHERE prev "
      "IS NOT NULL");
  INFO("gaps between a finish and the next start (s): " << gaps << "; all took " << took << " s");
  CHECK(Count(db,
              "SELECT count(*) FROM (SELECT started_at, lag(finished_at) OVER (ORDER BY "
              "started_at) AS prev FROM tasks) x WHERE started_at < prev") == 0);
  CHECK(Count(db,
              "SELECT count(*) FROM (SELECT started_at, lag(finished_at) OVER (ORDER BY "
              "started_at) AS prev FROM tasks) x WHERE started_at > prev + interval '1 "
              "second'") == 0);
  CHECK(took < 10.0);  // 4 x 0.3 s of work; a poll would add a minute per task
  CHECK(work.Overlaps() == 0);
  a->Shutdown(runner::StopOptions{false, 10s});
  b->Shutdown(runner::StopOptions{false, 10s});
}

// Runs each task until Release(): what node a holds while node b waits.
class GateIsolator : public runner::isolation::Isolator {
 public:
  std::string_view Name() const override { return "process"; }
  bool Available() override { return true; }
  runner::isolation::RunResult Run(const runner::isolation::TaskSpec&, runner::isolation::Observer&,
                                   std::stop_token stop) override {
    std::unique_lock lock(mu_);
    ++started_;
    cv_.notify_all();
    cv_.wait(lock, stop, [&] { return released_; });
    runner::isolation::RunResult r;
    r.isolation = "process";
    r.kind = stop.stop_requested() ? runner::isolation::RunResult::Kind::kStopped
                                   : runner::isolation::RunResult::Kind::kExited;
    r.exit_code = 0;
    return r;
  }
  int Started() {
    std::lock_guard lock(mu_);
    return started_;
  }
  void Release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable_any cv_;
  int started_ = 0;
  bool released_ = false;
};

TEST_CASE("a finish on one node wakes the other node's claimer that the cap held back",
          "[pool][node][policy]") {
  // Node a holds the queue's only slot, then drains (it claims nothing
  // more). Node b's claim was held back by the cap and b polls once a
  // minute: only the finish's notification can start the next task, on b.
  TestDatabase db;
  TempDir dir_a, dir_b;
  runner::metrics::Registry reg_a, reg_b;
  GateIsolator gate;
  NoopIsolator quick;
  auto a = SlowPollNode(db, dir_a, reg_a, gate, 1, false);
  auto b = SlowPollNode(db, dir_b, reg_b, quick, 1, false);
  QueuePolicy one;
  one.max_running = 1;
  REQUIRE(a->postgres().SetQueuePolicy("one", one).ok());
  auto task = Command({"true"});
  task.queue = "one";
  REQUIRE(a->postgres().SubmitBatch(std::vector<runner::queue::NewTask>(2, task)).ok());
  REQUIRE(a->Start().ok());
  REQUIRE(WaitFor([&] { return gate.Started() == 1; }, 10s, 10ms));
  REQUIRE(b->Start().ok());
  auto& claims_b = reg_b.GetCounter("runner_claims_total", "");
  REQUIRE(WaitFor([&] { return b->Listening() && claims_b.Value() >= 1; }, 10s, 10ms));
  CHECK(Count(db, "SELECT count(*) FROM tasks WHERE state = 'queued'") == 1);  // held back

  a->StopPool(runner::StopOptions{false, 30s});  // drains: finishes its task, claims nothing
  gate.Release();
  REQUIRE(WaitFor(
      [&] { return Count(db, "SELECT count(*) FROM tasks WHERE state = 'succeeded'") == 2; }, 20s,
      20ms));
  CHECK(Scalar(db, "SELECT node_id FROM tasks ORDER BY started_at DESC LIMIT 1") == b->node_id());
  const std::string gap =
      Scalar(db, "SELECT extract(epoch FROM max(started_at) - min(finished_at))::text FROM tasks");
  INFO("from a's finish to b's start: " << gap << " s (b polls every 60 s)");
  CHECK(std::stod(gap) < 2.0);
  CHECK(quick.Runs().size() == 1);
  a->Shutdown(runner::StopOptions{false, 10s});
  b->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("a task held back by the rate limit starts when its window opens, not at the next poll",
          "[pool][node][policy][rate]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  NoopIsolator work;
  auto node = SlowPollNode(db, dir, registry, work, 2, true);
  QueuePolicy rated;
  rated.rate_limit = RateLimit{2, 1.0};
  REQUIRE(node->postgres().SetQueuePolicy("rated", rated).ok());
  REQUIRE(node->Start().ok());
  auto& claims = registry.GetCounter("runner_claims_total", "");
  REQUIRE(WaitFor([&] { return node->Listening() && claims.Value() >= 1; }, 10s));
  constexpr int kTasks = 6;
  auto task = Command({"true"});
  task.queue = "rated";
  REQUIRE(node->postgres().SubmitBatch(std::vector<runner::queue::NewTask>(kTasks, task)).ok());
  REQUIRE(WaitFor(
      [&] { return Count(db, "SELECT count(*) FROM tasks WHERE state = 'succeeded'") == kTasks; },
      20s, 20ms));
  // Two starts a window: 0, 0, 1, 1, 2, 2 s. Start k comes a window after
  // start k-2 (never sooner: the sliding window) and promptly then (a poll
  // would make it a minute).
  const auto at = StartOffsets(db, "rated");
  REQUIRE(at.size() == kTasks);
  std::string shown;
  for (double s : at) shown += std::to_string(s) + " ";
  INFO("starts (s after the first): " << shown);
  for (std::size_t k = 2; k < at.size(); ++k) {
    CHECK(at[k] - at[k - 2] >= 1.0);
    CHECK(at[k] - at[k - 2] < 1.5);
  }
  CHECK(at.back() < 3.0);
  node->Shutdown(runner::StopOptions{false, 10s});
}
