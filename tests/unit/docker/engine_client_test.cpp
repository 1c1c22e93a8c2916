#include "isolation/docker/engine_client.h"

#include <catch2/catch.hpp>
#include <stdexcept>

#include "isolation/docker/docker_isolator.h"

using namespace runner::isolation::docker;

TEST_CASE("the API version is the daemon's newest, capped at 1.45", "[docker][version]") {
  CHECK(*NegotiateApiVersion("1.41", "1.12") == "1.41");
  CHECK(*NegotiateApiVersion("1.43", "1.12") == "1.43");
  CHECK(*NegotiateApiVersion("1.47", "1.24") == "1.45");
}

TEST_CASE("a daemon older than Engine 20.10 is refused with a clear error", "[docker][version]") {
  auto v = NegotiateApiVersion("1.40", "1.12");
  REQUIRE_FALSE(v.ok());
  CHECK(v.error().code == "isolation_unavailable");
  CHECK(v.error().message.find("1.41") != std::string::npos);
}

TEST_CASE("a daemon whose minimum API is above ours is refused", "[docker][version]") {
  // Docker 29 raised its minimum; a hard-coded old version broke clients.
  auto v = NegotiateApiVersion("1.52", "1.46");
  REQUIRE_FALSE(v.ok());
  CHECK(v.error().message.find("1.46") != std::string::npos);
  CHECK(*NegotiateApiVersion("1.52", "1.44") == "1.45");
}

TEST_CASE("an unreadable API version is an internal error", "[docker][version]") {
  CHECK(NegotiateApiVersion("banana", "1.12").error().code == "internal");
}

TEST_CASE("docker hosts other than unix sockets are a configuration error", "[docker][config]") {
  CHECK(SocketPathFromHost("unix:///var/run/docker.sock") == "/var/run/docker.sock");
  CHECK_THROWS_AS(SocketPathFromHost("tcp://1.2.3.4:2375"), std::invalid_argument);
  CHECK_THROWS_AS(SocketPathFromHost("unix://"), std::invalid_argument);
}

TEST_CASE("the container config carries the task's limits and hardening", "[docker][config]") {
  runner::isolation::TaskSpec spec;
  spec.task_id = "t1";
  spec.worker_id = "w1";
  spec.node_id = "n1";
  spec.image = "runner-task:latest";
  spec.command = {"echo", "hi"};
  spec.env = {{"A", "1"}};
  spec.labels = {{"team", "x"}};
  spec.limits = {0.5, 64 << 20, 8 << 20, 32};
  DockerIsolatorOptions options;
  auto c = BuildCreateConfig(spec, options, false);
  const auto& h = c.at("HostConfig").as_object();
  CHECK(h.at("NanoCpus").to_number<int64_t>() == 500'000'000);
  CHECK(h.at("Memory").to_number<int64_t>() == 64 << 20);
  CHECK(h.at("MemorySwap").to_number<int64_t>() == 64 << 20);
  CHECK(h.at("PidsLimit").to_number<int64_t>() == 32);
  CHECK(h.at("NetworkMode").as_string() == "none");
  CHECK(h.at("ReadonlyRootfs").as_bool());
  CHECK(h.at("Init").as_bool());
  CHECK(h.at("CapDrop").as_array().at(0).as_string() == "ALL");
  CHECK(h.at("SecurityOpt").as_array().at(0).as_string() == "no-new-privileges");
  CHECK(h.at("Tmpfs").as_object().at("/work").as_string().find("size=8388608") !=
        std::string::npos);
  CHECK_FALSE(h.contains("CpuQuota"));  // NanoCpus and CpuQuota together are rejected
  const auto& labels = c.at("Labels").as_object();
  CHECK(labels.at("io.runner.task").as_string() == "t1");
  CHECK(labels.at("io.runner.node").as_string() == "n1");
  CHECK(labels.at("io.runner.label.team").as_string() == "x");
  CHECK(c.at("User").as_string() == "65534:65534");
  CHECK(c.at("WorkingDir").as_string() == "/work");

  auto with_quota = BuildCreateConfig(spec, options, true);
  const auto& hq = with_quota.at("HostConfig").as_object();
  CHECK(hq.at("StorageOpt").as_object().at("size").as_string() == "8388608");
  CHECK_FALSE(hq.contains("Tmpfs"));
}
