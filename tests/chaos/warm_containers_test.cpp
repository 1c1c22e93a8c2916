// Warm containers (issue #21) under faults: a node SIGKILLed while it holds
// warm containers leaves them to the next node's orphan reaper; Docker going
// away drops the warm pool and it is rebuilt once Docker answers. As in the
// outage scenario, we never stop the shared dockerd: the node talks to it
// through a unix-socket proxy we cut and restore.
#include <signal.h>

#include <catch2/catch.hpp>

#include "tests/chaos/scenario.h"

namespace runner::chaos {

namespace {

std::string Status(const RunnerProcess& node) {
  return HttpGet(node.port(), "/api/v1/status").body;
}

bool WaitWarmReady(const RunnerProcess& node, const std::string& ready,
                   std::chrono::milliseconds within) {
  return testing::WaitFor([&] { return JsonField(Status(node), "docker.warm.ready") == ready; },
                          within, 100ms);
}

}  // namespace

TEST_CASE("a node SIGKILLed with warm containers has them reaped by the next node",
          "[chaos][docker][warm]") {
  Scenario s;
  RunnerArgs a = s.Args("victim");
  a.workers = 2;
  a.mode = "docker";
  a.extra = {"--warm-containers", "2"};
  RunnerProcess& victim = s.Add(a, "victim");
  REQUIRE(victim.Start());
  REQUIRE(WaitWarmReady(victim, "2", 60s));
  CHECK(JsonField(Status(victim), "docker.warm.target") == "2");
  const std::string victim_id = JsonField(Status(victim), "node_id");
  REQUIRE(!victim_id.empty());
  REQUIRE(ContainersOfNodes(s.docker, {victim_id}, true) == 2);

  victim.Signal(SIGKILL);
  REQUIRE(victim.Wait(10s) == 128 + SIGKILL);
  CHECK(ContainersOfNodes(s.docker, {victim_id}) == 2);  // left running by the dead node

  RunnerArgs b = s.Args("heir");
  b.workers = 1;
  b.mode = "docker";
  b.extra = {"--warm-containers", "1"};
  RunnerProcess& heir = s.Add(b, "heir");
  REQUIRE(heir.Start());
  const std::string heir_id = JsonField(Status(heir), "node_id");
  CHECK(
      testing::WaitFor([&] { return ContainersOfNodes(s.docker, {victim_id}) == 0; }, 30s, 200ms));
  // The heir's own warm container is not an orphan.
  REQUIRE(WaitWarmReady(heir, "1", 60s));
  std::this_thread::sleep_for(3s);  // a few reaper passes
  CHECK(JsonField(Status(heir), "docker.warm.ready") == "1");
  CHECK(ContainersOfNodes(s.docker, {heir_id}, true) == 1);

  // A graceful stop leaves no warm container.
  heir.Signal(SIGTERM);
  CHECK(heir.Wait(60s) == 0);
  CHECK(ContainersOfNodes(s.docker, {heir_id}) == 0);
}

TEST_CASE("docker going away drops the warm pool and it is rebuilt when docker answers",
          "[chaos][docker][warm]") {
  Scenario s;
  std::string daemon = s.docker.substr(std::string("unix://").size());
  DockerProxy proxy(s.dir.path() / "docker.sock", daemon);
  proxy.Open();

  RunnerArgs a = s.Args("node");
  a.workers = 2;
  a.mode = "docker";
  a.docker_host = proxy.host();
  a.extra = {"--warm-containers", "2"};
  RunnerProcess& node = s.Add(a, "node");
  REQUIRE(node.Start());
  REQUIRE(WaitWarmReady(node, "2", 60s));
  const std::string node_id = JsonField(Status(node), "node_id");

  proxy.Close();
  CHECK(WaitWarmReady(node, "0", 20s));
  CHECK(JsonField(Status(node), "docker.warm.target") == "2");

  proxy.Open();
  CHECK(WaitWarmReady(node, "2", 60s));
  // The dropped containers are removed: only the rebuilt ones remain.
  CHECK(testing::WaitFor([&] { return ContainersOfNodes(s.docker, {node_id}) == 2; }, 30s, 200ms));

  // And a task takes one.
  TaskOpts o;
  o.isolation = "docker";
  o.command = {"sh", "-c", "echo warm"};
  std::string id = Submit(node.port(), TaskJson(o));
  REQUIRE(!id.empty());
  REQUIRE(s.WaitAllFinal(30s));
  CHECK(GetTask(s.db.conninfo(), id).state == "succeeded");
  std::string metrics = HttpGet(node.port(), "/metrics").body;
  CHECK(metrics.find("runner_docker_warm_hits_total 1") != std::string::npos);

  node.Signal(SIGTERM);
  CHECK(node.Wait(60s) == 0);
  CHECK(ContainersOfNodes(s.docker, {node_id}) == 0);
}

}  // namespace runner::chaos
