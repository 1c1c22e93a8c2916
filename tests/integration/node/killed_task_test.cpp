// Regression: after a running process task that had a child was killed (by
// cancel, its timeout, a forced stop, or after ignoring SIGTERM), every later
// process task on the node died at once with exit 137 until a restart (a
// killed cgroup was reused; see isolation/process/cgroup.h). Each trigger is
// followed by 12 plain tasks on 4 workers that must all succeed.

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "runner/metrics/registry.h"
#include "runner/node/node.h"
#include "tests/integration/node/node_fixture.h"
#include "tests/support/services.h"

using namespace std::chrono_literals;
using runner::node::Node;
using runner::pool::testing::Command;
using runner::pool::testing::NodeConfig;
using runner::queue::TaskState;
using runner::testing::TempDir;
using runner::testing::TestDatabase;
using runner::testing::WaitFor;

namespace {

std::unique_ptr<Node> StartNode(const TempDir& dir, const TestDatabase& db,
                                runner::metrics::Registry& registry) {
  auto node = Node::Create(NodeConfig(dir, 4), db.conninfo(), registry);
  if (!node.ok()) throw std::runtime_error("cannot create the node: " + node.error().message);
  if (!(*node)->Start().ok()) throw std::runtime_error("cannot start the node");
  return std::move(node.value());
}

std::optional<runner::queue::Task> Final(Node& node, const std::string& id) {
  auto t = node.store().Get(id);
  if (t.ok() && runner::queue::IsFinal(t->state)) return *t;
  return std::nullopt;
}

std::string Submit(Node& node, runner::queue::NewTask task) {
  auto sub = node.store().Submit(task);
  if (!sub.ok()) throw std::runtime_error("submit: " + sub.error().message);
  return sub->task.id;
}

bool Running(Node& node, const std::string& id) {
  auto t = node.store().Get(id);
  return t.ok() && t->state == TaskState::kRunning;
}

// Submits 12 plain tasks and returns how many succeeded.
int PlainTasksThatSucceed(Node& node) {
  std::vector<std::string> ids;
  for (int i = 0; i < 12; ++i) ids.push_back(Submit(node, Command({"sh", "-c", "echo plain"})));
  int ok = 0;
  for (const std::string& id : ids) {
    std::optional<runner::queue::Task> t;
    if (!WaitFor([&] { return (t = Final(node, id)).has_value(); }, 30s)) continue;
    if (t->state == TaskState::kSucceeded && t->stdout_tail == "plain\n") {
      ++ok;
    } else {
      UNSCOPED_INFO("plain task " << id << ": exit " << t->exit_code.value_or(-1) << " "
                                  << (t->error ? t->error->message : ""));
    }
  }
  return ok;
}

}  // namespace

TEST_CASE("after a cancelled task with a child, a node's later process tasks all succeed",
          "[pool][killed]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto node = StartNode(dir, db, registry);
  // The child ignores SIGTERM, so the cancel ends with a SIGKILL of the tree.
  const std::string id = Submit(*node, Command({"sh", "-c", "trap '' TERM; sleep 30; echo x"}));
  REQUIRE(WaitFor([&] { return Running(*node, id); }, 10s));
  REQUIRE(node->store().Cancel(id).ok());
  std::optional<runner::queue::Task> t;
  REQUIRE(WaitFor([&] { return (t = Final(*node, id)).has_value(); }, 15s));
  CHECK(t->state == TaskState::kCancelled);
  CHECK(PlainTasksThatSucceed(*node) == 12);
  node->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("after a timed-out task with a child, a node's later process tasks all succeed",
          "[pool][killed]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto node = StartNode(dir, db, registry);
  auto task = Command({"sh", "-c", "sleep 3; echo x"});
  task.timeout = 1;
  const std::string id = Submit(*node, task);
  std::optional<runner::queue::Task> t;
  REQUIRE(WaitFor([&] { return (t = Final(*node, id)).has_value(); }, 15s));
  CHECK(t->state == TaskState::kTimedOut);
  CHECK(PlainTasksThatSucceed(*node) == 12);
  node->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("after a task that ignores SIGTERM is killed, a node's later process tasks all succeed",
          "[pool][killed]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto node = StartNode(dir, db, registry);
  auto task = Command({"sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"});
  task.timeout = 2;
  const std::string id = Submit(*node, task);
  std::optional<runner::queue::Task> t;
  REQUIRE(WaitFor([&] { return (t = Final(*node, id)).has_value(); }, 20s));
  CHECK(t->state == TaskState::kTimedOut);
  CHECK(PlainTasksThatSucceed(*node) == 12);
  node->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("after a forced stop of running tasks with children, a node's process tasks all succeed",
          "[pool][killed]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto node = StartNode(dir, db, registry);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    ids.push_back(Submit(*node, Command({"sh", "-c", "trap '' TERM; sleep 2; echo x"})));
  }
  REQUIRE(WaitFor(
      [&] {
        for (const auto& id : ids) {
          if (!Running(*node, id)) return false;
        }
        return true;
      },
      10s));
  node->StopPool(runner::StopOptions{true, 10s});
  REQUIRE(WaitFor([&] { return !node->Running(); }, 15s));
  node->StartPool();
  REQUIRE(WaitFor([&] { return node->Running(); }, 15s));
  // The stopped tasks went back to the queue; their rerun must work too.
  for (const auto& id : ids) {
    std::optional<runner::queue::Task> t;
    REQUIRE(WaitFor([&] { return (t = Final(*node, id)).has_value(); }, 30s));
    INFO(id << ": " << (t->error ? t->error->message : ""));
    CHECK(t->state == TaskState::kSucceeded);
  }
  CHECK(PlainTasksThatSucceed(*node) == 12);
  node->Shutdown(runner::StopOptions{false, 10s});
}
