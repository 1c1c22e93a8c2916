#include "runner/node/node.h"

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <fstream>
#include <memory>
#include <pqxx/pqxx>
#include <thread>

#include "base/ulid.h"
#include "runner/metrics/registry.h"
#include "runner/pool/pool.h"
#include "runner/queue/postgres_store.h"
#include "tests/integration/node/node_fixture.h"
#include "tests/support/services.h"
#include "tests/support/socket_proxy.h"

using namespace std::chrono_literals;
using runner::node::Node;
using runner::node::NodeHooks;
using runner::pool::testing::Command;
using runner::pool::testing::Count;
using runner::pool::testing::NodeConfig;
using runner::pool::testing::NoopIsolator;
using runner::queue::TaskState;
using runner::testing::TempDir;
using runner::testing::TestDatabase;
using runner::testing::WaitFor;

namespace {

std::unique_ptr<Node> MakeNode(const runner::Config& config, const TestDatabase& db,
                               runner::metrics::Registry& registry, NodeHooks hooks = {}) {
  auto node = Node::Create(config, db.conninfo(), registry, std::move(hooks));
  if (!node.ok()) throw std::runtime_error("cannot create the node: " + node.error().message);
  return std::move(node.value());
}

std::optional<runner::queue::Task> Final(Node& node, const std::string& id) {
  auto t = node.store().Get(id);
  if (t.ok() && runner::queue::IsFinal(t->state)) return *t;
  return std::nullopt;
}

// A node in auto mode whose Docker Engine is at `docker_host`.
runner::Config AutoConfig(const TempDir& dir, int workers, const std::string& docker_host) {
  auto config = NodeConfig(dir, workers);
  config.mode = runner::isolation::IsolationMode::kAuto;
  config.docker_host = docker_host;
  return config;
}

TaskState StateOf(Node& node, const std::string& id) {
  auto t = node.store().Get(id);
  return t.ok() ? t->state : TaskState::kQueued;
}

}  // namespace

TEST_CASE("a task submitted to a node runs as a process and its result and output are stored",
          "[pool][node]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto node = MakeNode(NodeConfig(dir, 2), db, registry);
  REQUIRE(node->Start().ok());

  auto ok = node->store().Submit(Command({"sh", "-c", "echo hello; echo oops >&2"}));
  auto bad = node->store().Submit(Command({"sh", "-c", "exit 3"}));
  REQUIRE(ok.ok());
  REQUIRE(bad.ok());
  std::optional<runner::queue::Task> a, b;
  REQUIRE(WaitFor(
      [&] { return (a = Final(*node, ok->task.id)) && (b = Final(*node, bad->task.id)); }, 30s));
  CHECK(a->state == TaskState::kSucceeded);
  CHECK(a->exit_code == 0);
  CHECK(a->isolation_used == std::string("process"));
  CHECK(a->stdout_tail.find("hello") != std::string::npos);
  CHECK(a->stderr_tail.find("oops") != std::string::npos);
  CHECK(a->node_id == node->node_id());
  CHECK(b->state == TaskState::kFailed);
  CHECK(b->exit_code == 3);
  CHECK(b->error->code == "nonzero_exit");
  auto logs = node->store().Logs(ok->task.id, runner::queue::LogStream::kStdout, 0, 1 << 20);
  REQUIRE(logs.ok());
  std::string out;
  for (const auto& c : logs->chunks) out += c.data;
  CHECK(out == "hello\n");

  // What status, workers and nodes show.
  auto status = node->Status();
  CHECK(status.node_id == node->node_id());
  CHECK(status.mode == "process");
  CHECK(status.pool.state == runner::PoolState::kRunning);
  CHECK(status.pool.active == 2);
  CHECK(status.pool.max == 200);
  auto workers = node->store().ListWorkers();
  REQUIRE(workers.ok());
  CHECK(workers->size() == 2);
  auto nodes = node->store().ListNodes();
  REQUIRE(nodes.ok());
  REQUIRE(nodes->size() == 1);
  CHECK(nodes->front().id == node->node_id());
  CHECK(nodes->front().pid == static_cast<int64_t>(::getpid()));
  CHECK(Count(db, "SELECT count(*) FROM events WHERE kind = 'worker.started'") == 2);

  CHECK(node->Scale(0).error().code == "validation_failed");
  REQUIRE(node->Scale(3).ok());
  REQUIRE(WaitFor([&] { return node->store().ListWorkers()->size() == 3; }, 10s));

  node->Shutdown(runner::StopOptions{false, 10s});
  CHECK_FALSE(node->Running());
  CHECK(node->store().ListWorkers()->empty());
  CHECK(node->store().ListNodes()->empty());
  node->Shutdown(runner::StopOptions{false, 10s});  // idempotent
}

TEST_CASE("a docker task runs in a container on a node in auto mode", "[pool][node][docker]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto node = MakeNode(AutoConfig(dir, 1, runner::testing::DockerHost()), db, registry);
  REQUIRE(node->Start().ok());
  auto status = node->Status();
  CHECK(status.docker_available);
  CHECK_FALSE(status.docker_version.empty());
  CHECK(status.mode == "docker");

  auto t = Command({"sh", "-c", "echo from-container"});
  t.isolation = runner::isolation::IsolationMode::kDocker;
  auto sub = node->store().Submit(t);
  REQUIRE(sub.ok());
  std::optional<runner::queue::Task> done;
  REQUIRE(WaitFor([&] { return (done = Final(*node, sub->task.id)).has_value(); }, 60s));
  CHECK(done->state == TaskState::kSucceeded);
  CHECK(done->isolation_used == std::string("docker"));
  CHECK(done->stdout_tail.find("from-container") != std::string::npos);
  CHECK(registry.Render().find("runner_docker_available 1") != std::string::npos);
  node->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("a node running a container and a process at once says its mode is mixed",
          "[pool][node][docker]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto node = MakeNode(AutoConfig(dir, 2, runner::testing::DockerHost()), db, registry);
  REQUIRE(node->Start().ok());
  REQUIRE(node->Status().mode == "docker");

  auto in_docker = Command({"sleep", "3"});
  in_docker.isolation = runner::isolation::IsolationMode::kDocker;
  auto as_process = Command({"sleep", "3"});
  as_process.isolation = runner::isolation::IsolationMode::kProcess;
  auto a = node->store().Submit(in_docker);
  auto b = node->store().Submit(as_process);
  REQUIRE((a.ok() && b.ok()));
  CHECK(WaitFor([&] { return node->Status().mode == "mixed"; }, 20s));
  const auto running = node->Status().pool;
  CHECK(running.running_docker == 1);
  CHECK(running.running_process == 1);
  REQUIRE(WaitFor(
      [&] { return Final(*node, a->task.id).has_value() && Final(*node, b->task.id).has_value(); },
      60s));
  CHECK(node->Status().mode == "docker");  // what an auto task gets when nothing runs
  node->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("when Docker goes away an auto node runs new tasks as processes and says so in events",
          "[pool][node][docker]") {
  TestDatabase db;
  TempDir dir;
  runner::testing::SocketProxy proxy(dir.path() / "docker.sock",
                                     runner::testing::DockerSocketPath());
  proxy.Open();
  runner::metrics::Registry registry;
  auto node = MakeNode(AutoConfig(dir, 1, proxy.host()), db, registry);
  REQUIRE(node->Start().ok());
  REQUIRE(node->Status().docker_available);

  auto event_kinds = [&] {
    std::vector<std::string> kinds;
    auto events = node->store().EventsAfter(0, 1000);
    if (events.ok()) {
      for (const auto& e : *events) {
        if (e.kind.rfind("docker.", 0) == 0) kinds.push_back(e.kind);
      }
    }
    return kinds;
  };
  auto run = [&] {
    auto sub = node->store().Submit(Command({"sh", "-c", "echo hi"}));
    REQUIRE(sub.ok());
    std::optional<runner::queue::Task> done;
    REQUIRE(WaitFor([&] { return (done = Final(*node, sub->task.id)).has_value(); }, 60s));
    CHECK(done->state == TaskState::kSucceeded);
    return done->isolation_used.value_or("");
  };

  proxy.Close();
  // The monitor re-checks Docker every second, with no task needed to notice.
  REQUIRE(WaitFor([&] { return !node->Status().docker_available; }, 15s));
  // The event is written by the change callback, just after the status flips.
  CHECK(
      WaitFor([&] { return event_kinds() == std::vector<std::string>{"docker.unavailable"}; }, 5s));
  CHECK(registry.Render().find("runner_docker_available 0") != std::string::npos);
  CHECK(run() == "process");

  proxy.Open();
  REQUIRE(WaitFor([&] { return node->Status().docker_available; }, 15s));
  CHECK(WaitFor(
      [&] {
        return event_kinds() == std::vector<std::string>{"docker.unavailable", "docker.available"};
      },
      5s));
  CHECK(run() == "docker");
  node->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("a docker-mode node holds its tasks while Docker is down and runs them when it is back",
          "[pool][node][docker][defer]") {
  TestDatabase db;
  TempDir dir;
  runner::testing::SocketProxy proxy(dir.path() / "docker.sock",
                                     runner::testing::DockerSocketPath());
  runner::metrics::Registry registry;
  auto config = NodeConfig(dir, 2);
  config.mode = runner::isolation::IsolationMode::kDocker;
  config.docker_host = proxy.host();  // nothing listens there yet
  auto node = MakeNode(config, db, registry);
  REQUIRE(node->Start().ok());
  REQUIRE_FALSE(node->Status().docker_available);

  // Queued while Docker is down: no attempt spent, nothing failed, however
  // long the outage (max_attempts 1 would fail it on its first attempt).
  auto expect_waiting = [&](const std::string& id) {
    std::this_thread::sleep_for(3s);  // fifteen polls of the node
    auto t = node->store().Get(id);
    REQUIRE(t.ok());
    CHECK(t->state == TaskState::kQueued);
    CHECK(t->attempt == 0);
  };
  auto submit = [&] {
    auto t = Command({"sh", "-c", "echo in-docker"});
    t.max_attempts = 1;
    auto sub = node->store().Submit(t);
    REQUIRE(sub.ok());
    return sub->task.id;
  };
  auto expect_ran_in_docker = [&](const std::string& id) {
    std::optional<runner::queue::Task> done;
    REQUIRE(WaitFor([&] { return (done = Final(*node, id)).has_value(); }, 60s));
    CHECK(done->state == TaskState::kSucceeded);
    CHECK(done->attempt == 1);
    CHECK(done->isolation_used == std::string("docker"));
    CHECK(done->stdout_tail.find("in-docker") != std::string::npos);
  };

  const std::string first = submit();
  expect_waiting(first);
  proxy.Open();
  expect_ran_in_docker(first);

  // Docker goes away while the node runs: the same again.
  proxy.Close();
  REQUIRE(WaitFor([&] { return !node->Status().docker_available; }, 15s));
  const std::string second = submit();
  expect_waiting(second);
  proxy.Open();
  expect_ran_in_docker(second);

  auto failed = node->store().EventsAfter(0, 1000);
  REQUIRE(failed.ok());
  for (const auto& e : *failed) CHECK(e.kind != "task.failed");
  node->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("ten thousand queued no-op tasks with a hundred workers all finish exactly once",
          "[pool][node][load]") {
  // Busy workers claim their next task as they report it, or (off) every
  // claim goes through the node's claimer: the same guarantees either way.
  const bool claim_on_finish = GENERATE(true, false);
  INFO("claim_on_finish=" << claim_on_finish);
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  NoopIsolator noop;
  NodeHooks hooks;
  hooks.isolator_override = &noop;
  runner::Config config = NodeConfig(dir, 100);
  config.claim_on_finish = claim_on_finish;
  auto node = MakeNode(config, db, registry, std::move(hooks));
  constexpr int kTasks = 10000;
  std::vector<runner::queue::NewTask> batch(1000, Command({"true"}));
  for (int i = 0; i < kTasks / 1000; ++i) REQUIRE(node->postgres().SubmitBatch(batch).ok());
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(node->Start().ok());
  REQUIRE(WaitFor(
      [&] { return Count(db, "SELECT count(*) FROM tasks WHERE state = 'succeeded'") == kTasks; },
      180s, 250ms));
  auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("10000 no-op tasks with 100 workers took " << seconds << " s");
  auto runs = noop.Runs();
  CHECK(runs.size() == kTasks);
  int twice = 0;
  for (const auto& [id, n] : runs) twice += n != 1 ? 1 : 0;
  CHECK(twice == 0);
  CHECK(noop.Overlaps() == 0);
  CHECK(Count(db, "SELECT count(*) FROM tasks WHERE attempt = 1 AND state = 'succeeded'") ==
        kTasks);
  const std::string metrics = registry.Render();
  const bool chained =
      metrics.find("runner_finish_and_claim_duration_seconds_count 0\n") == std::string::npos &&
      metrics.find("runner_finish_and_claim_duration_seconds_count") != std::string::npos;
  CHECK(chained == claim_on_finish);
  node->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("a NOTIFY wakes an idle node at once despite a long poll interval",
          "[pool][node][notify]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto config = NodeConfig(dir, 1);
  config.poll_interval = 30;
  config.idle_backoff_max = 30;
  auto node = MakeNode(config, db, registry);
  REQUIRE(node->Start().ok());
  auto& claims = registry.GetCounter("runner_claims_total", "");
  // LISTEN is in place and the start-up claim is done: from here on only a
  // notification (or a 30 s poll) can make the node claim.
  REQUIRE(WaitFor([&] { return node->Listening() && claims.Value() >= 1; }, 10s));
  const double before = claims.Value();
  auto sub = node->store().Submit(Command({"true"}));
  REQUIRE(sub.ok());
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(WaitFor([&] { return StateOf(*node, sub->task.id) != TaskState::kQueued; }, 5s, 5ms));
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  // Claimed by a claim after the start-up one (the counter moves just after).
  CHECK(WaitFor([&] { return claims.Value() > before; }, 2s));
  node->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("a pool without notifications still finds work by polling", "[pool][notify]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  runner::queue::StoreOptions so;
  so.conninfo = db.conninfo();
  auto store = runner::queue::PostgresStore::Open(so);
  REQUIRE(store.ok());
  NoopIsolator noop;
  runner::pool::PoolOptions po;
  po.node_id = runner::NewUlid();
  po.workers = 2;
  po.poll_interval = 200ms;
  po.idle_backoff_max = 400ms;
  runner::pool::Pool pool(
      **store,
      [&](runner::isolation::IsolationMode) -> runner::Result<runner::isolation::Isolator*> {
        return &noop;
      },
      po, registry);
  REQUIRE(pool.Start().ok());
  auto sub = (*store)->Submit(Command({"true"}));
  REQUIRE(sub.ok());
  REQUIRE(WaitFor([&] { return (*store)->Get(sub->task.id)->state == TaskState::kSucceeded; }, 5s));
  pool.Stop(false);
}

TEST_CASE("tasks still run when the listener's connection is cut", "[pool][node][notify]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto config = NodeConfig(dir, 1);
  config.poll_interval = 0.2;
  config.idle_backoff_max = 0.4;
  auto node = MakeNode(config, db, registry);
  REQUIRE(node->Start().ok());
  REQUIRE(WaitFor([&] { return node->Listening(); }, 10s));
  {
    pqxx::connection admin(db.conninfo());
    pqxx::nontransaction tx(admin);
    auto r = tx.exec(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'runner-listener'");
    REQUIRE(r[0][0].as<int>() == 1);
  }
  auto sub = node->store().Submit(Command({"true"}));
  REQUIRE(sub.ok());
  REQUIRE(WaitFor([&] { return StateOf(*node, sub->task.id) == TaskState::kSucceeded; }, 10s));
  // And the listener comes back on its own.
  REQUIRE(WaitFor([&] { return node->Listening(); }, 10s));
  node->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("two nodes on one database share the work and never run a task twice at once",
          "[pool][node][multi]") {
  TestDatabase db;
  TempDir dir_a, dir_b;
  runner::metrics::Registry reg_a, reg_b;
  NoopIsolator noop(10ms);
  NodeHooks ha, hb;
  ha.isolator_override = &noop;
  hb.isolator_override = &noop;
  auto a = MakeNode(NodeConfig(dir_a, 4), db, reg_a, std::move(ha));
  auto b = MakeNode(NodeConfig(dir_b, 4), db, reg_b, std::move(hb));
  REQUIRE(a->Start().ok());
  REQUIRE(b->Start().ok());
  REQUIRE(WaitFor([&] { return a->store().ListNodes()->size() == 2; }, 10s));
  // Workers register from their own threads, just after the node.
  CHECK(WaitFor([&] { return a->store().ListWorkers()->size() == 8; }, 10s));
  std::vector<runner::queue::NewTask> batch(400, Command({"true"}));
  REQUIRE(a->postgres().SubmitBatch(batch).ok());
  REQUIRE(WaitFor(
      [&] { return Count(db, "SELECT count(*) FROM tasks WHERE state = 'succeeded'") == 400; }, 60s,
      100ms));
  CHECK(noop.Overlaps() == 0);
  for (const auto& [id, n] : noop.Runs()) CHECK(n == 1);
  auto by_node = noop.RunsByNode();
  CHECK(by_node[a->node_id()] > 0);
  CHECK(by_node[b->node_id()] > 0);
  CHECK(by_node[a->node_id()] + by_node[b->node_id()] == 400);
  a->Shutdown(runner::StopOptions{false, 10s});
  b->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("a drained node returns its unfinished task to the queue and another node runs it",
          "[pool][node][multi]") {
  TestDatabase db;
  TempDir dir_a, dir_b;
  runner::metrics::Registry reg_a, reg_b;
  auto a = MakeNode(NodeConfig(dir_a, 1), db, reg_a);
  REQUIRE(a->Start().ok());
  auto sub = a->store().Submit(Command({"sleep", "30"}));
  REQUIRE(sub.ok());
  REQUIRE(WaitFor([&] { return StateOf(*a, sub->task.id) == TaskState::kRunning; }, 10s));
  auto t0 = std::chrono::steady_clock::now();
  a->Shutdown(runner::StopOptions{false, 1s});
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  auto t = a->store().Get(sub->task.id);
  REQUIRE(t.ok());
  CHECK(t->state == TaskState::kQueued);
  CHECK(t->attempt == 0);  // a release does not use up an attempt

  auto cfg = NodeConfig(dir_b, 1);
  auto b = MakeNode(cfg, db, reg_b);
  REQUIRE(b->Start().ok());
  REQUIRE(WaitFor(
      [&] {
        auto x = b->store().Get(sub->task.id);
        return x.ok() && x->state == TaskState::kRunning && x->node_id == b->node_id();
      },
      10s));
  REQUIRE(b->store().Cancel(sub->task.id).ok());
  REQUIRE(WaitFor([&] { return StateOf(*b, sub->task.id) == TaskState::kCancelled; }, 5s));
  b->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("a node killed mid-task has the task re-run on another node as attempt 2",
          "[pool][node][multi][crash]") {
  TestDatabase db;
  TempDir dir_a, dir_b;
  const std::string bin = runner::testing::RunnerBinary();
  const std::string config_path = (dir_a.path() / "runner.yaml").string();
  {
    std::ofstream yaml(config_path);
    yaml << "pressure:\n  cpuHigh: 100\n  memoryHigh: 100\n  diskHigh: 100\n";
  }
  const std::string data_dir = dir_a.path().string();
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    const std::string url = db.url();
    ::execl(bin.c_str(), bin.c_str(), "serve", "--config", config_path.c_str(), "--database-url",
            url.c_str(), "--data-dir", data_dir.c_str(), "--listen", "127.0.0.1:0", "--workers",
            "1", "--mode", "process", "--lease", "3", "--poll-interval", "0.2",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  struct Reap {
    pid_t pid;
    ~Reap() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{child};

  runner::queue::StoreOptions so;
  so.conninfo = db.conninfo();
  std::unique_ptr<runner::queue::PostgresStore> store;
  REQUIRE(WaitFor(
      [&] {
        auto s = runner::queue::PostgresStore::Open(so);
        if (!s.ok()) return false;
        store = std::move(*s);
        return true;
      },
      30s, 200ms));
  REQUIRE(WaitFor([&] { return store->ListNodes().ok() && store->ListNodes()->size() == 1; }, 30s,
                  100ms));
  const std::string dead_node = store->ListNodes()->front().id;
  auto task = Command({"sleep", "2"});
  task.max_attempts = 3;
  auto sub = store->Submit(task);
  REQUIRE(sub.ok());
  REQUIRE(WaitFor([&] { return store->Get(sub->task.id)->state == TaskState::kRunning; }, 30s));
  CHECK(store->Get(sub->task.id)->node_id == dead_node);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);

  runner::metrics::Registry registry;
  NodeHooks hooks;
  hooks.tune = [](runner::pool::PoolOptions& o) { o.reap_interval = 300ms; };
  auto config = NodeConfig(dir_b, 1);
  config.lease = 3;
  auto b = MakeNode(config, db, registry, std::move(hooks));
  REQUIRE(b->Start().ok());
  std::optional<runner::queue::Task> done;
  REQUIRE(WaitFor([&] { return (done = Final(*b, sub->task.id)).has_value(); }, 60s));
  CHECK(done->state == TaskState::kSucceeded);
  CHECK(done->attempt == 2);
  CHECK(done->node_id == b->node_id());
  b->Shutdown(runner::StopOptions{false, 10s});
}

TEST_CASE("a data dir the node cannot create its work root in is a clear error at create",
          "[node][config]") {
  TestDatabase db;
  TempDir dir;
  runner::metrics::Registry registry;
  auto config = NodeConfig(dir, 1);
  // A file where the data dir should be: nothing can be created under it.
  const auto blocker = dir.path() / "not-a-dir";
  std::ofstream(blocker) << "x";
  config.data_dir = blocker.string();
  config.secret_key_file = (dir.path() / "secret.key").string();
  auto node = Node::Create(config, db.conninfo(), registry);
  REQUIRE_FALSE(node.ok());
  CHECK(node.error().message.find(blocker.string() + "/work") != std::string::npos);
  CHECK(node.error().message.find("--data-dir") != std::string::npos);
}
