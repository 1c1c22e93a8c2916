#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <memory>

#include "runner/metrics/registry.h"
#include "runner/node/node.h"
#include "runner/secrets/secret_box.h"
#include "tests/integration/node/node_fixture.h"
#include "tests/support/log_capture.h"
#include "tests/support/services.h"

using namespace std::chrono_literals;
using runner::node::Node;
using runner::pool::testing::Command;
using runner::pool::testing::Count;
using runner::pool::testing::NodeConfig;
using runner::queue::TaskState;
using runner::testing::LogCapture;
using runner::testing::TempDir;
using runner::testing::TestDatabase;
using runner::testing::WaitFor;

namespace {

std::unique_ptr<Node> AutoNode(const runner::Config& config, const TestDatabase& db,
                               runner::metrics::Registry& registry) {
  auto node = Node::Create(config, db.conninfo(), registry);
  if (!node.ok()) throw std::runtime_error("cannot create the node: " + node.error().message);
  return std::move(node.value());
}

runner::queue::Task RunToEnd(Node& node, runner::queue::NewTask task) {
  auto sub = node.store().Submit(task);
  if (!sub.ok()) throw std::runtime_error("submit: " + sub.error().message);
  std::optional<runner::queue::Task> done;
  WaitFor(
      [&] {
        auto t = node.store().Get(sub->task.id);
        if (t.ok() && runner::queue::IsFinal(t->state)) done = *t;
        return done.has_value();
      },
      90s);
  if (!done) throw std::runtime_error("the task did not end in 90 s");
  return *done;
}

// Two workers in auto mode, Docker at hand, --kill-grace 1.
std::unique_ptr<Node> KillGraceNode(const TempDir& dir, const TestDatabase& db,
                                    runner::metrics::Registry& registry) {
  auto config = NodeConfig(dir, 2);
  config.mode = runner::isolation::IsolationMode::kAuto;
  config.docker_host = runner::testing::DockerHost();
  config.kill_grace = 1;
  return AutoNode(config, db, registry);
}

}  // namespace

TEST_CASE("a task that ignores SIGTERM is killed after --kill-grace, in both isolations",
          "[node][kill_grace][docker]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto node = KillGraceNode(dir, db, registry);
  REQUIRE(node->Start().ok());
  for (auto mode :
       {runner::isolation::IsolationMode::kProcess, runner::isolation::IsolationMode::kDocker}) {
    INFO(runner::isolation::ToString(mode));
    auto t = Command({"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"});
    t.isolation = mode;
    t.timeout = 1;
    auto done = RunToEnd(*node, t);
    CHECK(done.state == TaskState::kTimedOut);
    REQUIRE(done.usage.has_value());
    // 1 s of timeout, then 1 s of grace (the task ignores SIGTERM), then SIGKILL.
    // Docker's default grace was 10 s, the old process default 5 s.
    CHECK(done.usage->duration >= 1.8);
    CHECK(done.usage->duration < 4.5);
  }
  node->Shutdown(runner::StopOptions{true, 0s});
}

TEST_CASE("a fractional --kill-grace is kept in Docker, not rounded up to whole seconds",
          "[node][kill_grace][docker]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto config = NodeConfig(dir, 1);
  config.mode = runner::isolation::IsolationMode::kAuto;
  config.docker_host = runner::testing::DockerHost();
  config.warm_containers = 0;
  config.kill_grace = 0.2;
  auto node = AutoNode(config, db, registry);
  REQUIRE(node->Start().ok());
  auto t = Command({"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"});
  t.isolation = runner::isolation::IsolationMode::kDocker;
  t.timeout = 1;
  auto done = RunToEnd(*node, t);
  node->Shutdown(runner::StopOptions{true, 0s});
  CHECK(done.state == TaskState::kTimedOut);
  CHECK(done.isolation_used == std::string("docker"));
  REQUIRE(done.usage.has_value());
  // 1 s, then 0.2 s of grace. Docker's own stop takes whole seconds: 0.2
  // became 1, and the task lived 2 s.
  CHECK(done.usage->duration >= 1.15);
  CHECK(done.usage->duration < 1.9);
}

TEST_CASE("a cancelled task that ignores SIGTERM is killed after --kill-grace, in both isolations",
          "[node][kill_grace][docker]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto node = KillGraceNode(dir, db, registry);
  REQUIRE(node->Start().ok());
  for (auto mode :
       {runner::isolation::IsolationMode::kProcess, runner::isolation::IsolationMode::kDocker}) {
    INFO(runner::isolation::ToString(mode));
    auto t = Command({"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"});
    t.isolation = mode;
    auto sub = node->store().Submit(t);
    REQUIRE(sub.ok());
    const std::string id = sub->task.id;
    // Running, and the shell has set its trap (it prints after the trap).
    REQUIRE(WaitFor(
        [&] {
          auto got = node->store().Get(id);
          return got.ok() && got->state == TaskState::kRunning &&
                 got->stdout_tail.find("ready") != std::string::npos;
        },
        60s));
    const auto cancelled_at = std::chrono::steady_clock::now();
    REQUIRE(node->store().Cancel(id).ok());
    std::optional<runner::queue::Task> done;
    REQUIRE(WaitFor(
        [&] {
          auto got = node->store().Get(id);
          if (got.ok() && runner::queue::IsFinal(got->state)) done = *got;
          return done.has_value();
        },
        30s, 50ms));
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - cancelled_at).count();
    CHECK(done->state == TaskState::kCancelled);
    // SIGTERM is ignored, so the task lives through the 1 s grace, then
    // SIGKILL ends it (not 5 s, the default, nor Docker's 10 s).
    CHECK(took >= 0.9);
    CHECK(took < 4.5);
  }
  node->Shutdown(runner::StopOptions{true, 0s});
}

TEST_CASE("a docker task gets its secrets as env and its output is masked, warm and cold",
          "[node][secrets][docker]") {
  LogCapture log;
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto config = NodeConfig(dir, 1);
  config.mode = runner::isolation::IsolationMode::kAuto;
  config.docker_host = runner::testing::DockerHost();
  config.warm_containers = 1;
  auto node = AutoNode(config, db, registry);
  REQUIRE(node->Start().ok());
  auto& hits = registry.GetCounter("runner_docker_warm_hits_total",
                                   "Docker tasks that took a warm container");
  auto& misses =
      registry.GetCounter("runner_docker_warm_misses_total",
                          "Docker tasks that found no matching warm container and started cold");
  // The warm container is up before the task comes, so the task takes it.
  REQUIRE(WaitFor([&] { return node->Status().docker_warm.ready >= 1; }, 60s));
  auto t = Command({"sh", "-c", "echo \"a:$TOKEN\"; test \"$TOKEN\" = hunter2-docker-value"});
  t.isolation = runner::isolation::IsolationMode::kDocker;
  t.secrets = {{"TOKEN", "hunter2-docker-value"}};
  auto warm = RunToEnd(*node, t);
  CHECK(hits.Value() == 1);
  // A disk limit no warm container has (theirs is the default, 64 MiB): the
  // cold path, the same answer.
  t.limits.disk = 48LL << 20;
  auto cold = RunToEnd(*node, t);
  CHECK(misses.Value() == 1);
  node->Shutdown(runner::StopOptions{true, 0s});
  for (const auto* done : {&warm, &cold}) {
    CHECK(done->state == TaskState::kSucceeded);
    CHECK(done->isolation_used == std::string("docker"));
    CHECK(done->stdout_tail == "a:***\n");
    CHECK(done->secret_names == std::vector<std::string>{"TOKEN"});
  }
  // The runner never logs a value with Docker isolation either: the secrets
  // travel in the container's create request (cold) or the launcher's
  // message (warm), and the capture sees all levels.
  const std::string logged = log.Text();
  CHECK(logged.find(warm.id) != std::string::npos);  // the capture saw this task's lines
  CHECK(logged.find(cold.id) != std::string::npos);
  CHECK(logged.find("hunter2-docker-value") == std::string::npos);
  CHECK(logged.find("hunter2") == std::string::npos);
}

TEST_CASE("a task sealed under one key fails on a node with another key, and never runs",
          "[node][secrets]") {
  TestDatabase db;
  TempDir sealer_dir;
  TempDir claimer_dir;
  TempDir marker_dir;
  runner::metrics::Registry sealer_registry;
  runner::metrics::Registry claimer_registry;
  // Each node creates its own key under its data dir: two keys, one database.
  auto sealer = AutoNode(NodeConfig(sealer_dir, 1), db, sealer_registry);
  const auto marker = marker_dir.path() / "ran";
  auto t = Command({"sh", "-c", "touch '" + marker.string() + "'; echo ran; echo \"s:$TOKEN\""});
  t.secrets = {{"TOKEN", "hunter2-wrong-key-value"}};
  auto sub = sealer->store().Submit(t);
  REQUIRE(sub.ok());
  const std::string id = sub->task.id;
  sealer.reset();  // never started: only the node with the other key runs

  auto claimer = AutoNode(NodeConfig(claimer_dir, 1), db, claimer_registry);
  REQUIRE(claimer->Start().ok());
  std::optional<runner::queue::Task> done;
  WaitFor(
      [&] {
        auto got = claimer->store().Get(id);
        if (got.ok() && runner::queue::IsFinal(got->state)) done = *got;
        return done.has_value();
      },
      60s);
  claimer->Shutdown(runner::StopOptions{true, 0s});
  REQUIRE(done.has_value());
  // It never ran: no marker, no output, no exit code.
  CHECK_FALSE(std::filesystem::exists(marker));
  CHECK(done->stdout_tail.empty());
  CHECK(done->stderr_tail.empty());
  CHECK_FALSE(done->exit_code.has_value());
  CHECK(Count(db, "SELECT count(*) FROM task_logs WHERE task_id = '" + id + "'") == 0);

  auto sealer_key = runner::secrets::SecretKey::Load(sealer_dir.path() / "secret.key");
  auto claimer_key = runner::secrets::SecretKey::Load(claimer_dir.path() / "secret.key");
  REQUIRE(sealer_key.ok());
  REQUIRE(claimer_key.ok());
  REQUIRE(sealer_key->id() != claimer_key->id());

  CHECK(done->state == TaskState::kFailed);
  REQUIRE(done->error.has_value());
  CHECK(done->error->code == "secrets_unavailable");
  CHECK(done->error->message.find(sealer_key->id()) != std::string::npos);
  CHECK(done->error->message.find(claimer_key->id()) != std::string::npos);
  CHECK(done->error->message.find("hunter2") == std::string::npos);
  CHECK(done->secret_names == std::vector<std::string>{"TOKEN"});
}
