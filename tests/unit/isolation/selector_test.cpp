// Choosing isolation: Docker when it answers, process otherwise, never a
// container-less run for a task that asked for Docker. The selector is driven
// with a Docker stand-in whose availability the test toggles
// (tests/integration/isolation/selector_test.cpp does it with the real daemon).

#include "isolation/selector.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <mutex>
#include <thread>
#include <vector>

#include "tests/support/fakes/isolator_fake.h"

namespace runner::isolation {
namespace {

using namespace std::chrono_literals;
using runner::testing::FakeIsolator;

std::string NameOf(const Result<Isolator*>& picked) {
  return picked.ok() ? std::string((*picked)->Name()) : "error:" + picked.error().code;
}

TEST_CASE("auto uses docker while it is up and falls back to process while it is down",
          "[isolation][selector]") {
  FakeIsolator docker("docker", true), process("process", true);
  IsolationSelector sel(&docker, &process, IsolationMode::kAuto);
  CHECK(NameOf(sel.Pick(IsolationMode::kAuto)) == "docker");
  CHECK(sel.Mode() == "docker");
  docker.set_available(false);
  CHECK(NameOf(sel.Pick(IsolationMode::kAuto)) == "process");
  CHECK(sel.Mode() == "process");
  docker.set_available(true);
  CHECK(NameOf(sel.Pick(IsolationMode::kAuto)) == "docker");
}

TEST_CASE("a task that asks for docker while it is down fails with isolation_unavailable",
          "[isolation][selector]") {
  FakeIsolator docker("docker", false), process("process", true);
  IsolationSelector sel(&docker, &process, IsolationMode::kAuto);
  auto picked = sel.Pick(IsolationMode::kDocker);
  REQUIRE_FALSE(picked.ok());
  CHECK(picked.error().code == "isolation_unavailable");
  CHECK_THAT(picked.error().message, Catch::Contains("Docker daemon does not answer"));
  docker.set_available(true);
  CHECK(NameOf(sel.Pick(IsolationMode::kDocker)) == "docker");
}

TEST_CASE("a task that asks for process runs in process even while docker is up",
          "[isolation][selector]") {
  FakeIsolator docker("docker", true), process("process", true);
  IsolationSelector sel(&docker, &process, IsolationMode::kAuto);
  CHECK(NameOf(sel.Pick(IsolationMode::kProcess)) == "process");
  CHECK(docker.checks() == 0);  // no need to ask Docker
}

TEST_CASE("the node's default mode decides what auto means", "[isolation][selector]") {
  FakeIsolator docker("docker", true), process("process", true);
  SECTION("default docker: auto tasks wait for docker rather than run without it") {
    IsolationSelector sel(&docker, &process, IsolationMode::kDocker);
    CHECK(NameOf(sel.Pick(IsolationMode::kAuto)) == "docker");
    CHECK(sel.Mode() == "docker");
    docker.set_available(false);
    CHECK(NameOf(sel.Pick(IsolationMode::kAuto)) == "error:isolation_unavailable");
    CHECK(sel.Mode() == "docker");
    CHECK(NameOf(sel.Pick(IsolationMode::kProcess)) == "process");
  }
  SECTION("default process: auto tasks run in process, docker tasks still get docker") {
    IsolationSelector sel(&docker, &process, IsolationMode::kProcess);
    CHECK(NameOf(sel.Pick(IsolationMode::kAuto)) == "process");
    CHECK(sel.Mode() == "process");
    CHECK(NameOf(sel.Pick(IsolationMode::kDocker)) == "docker");
  }
  SECTION("no docker support at all") {
    IsolationSelector sel(nullptr, &process, IsolationMode::kAuto);
    CHECK(NameOf(sel.Pick(IsolationMode::kAuto)) == "process");
    CHECK(sel.Mode() == "process");
    auto picked = sel.Pick(IsolationMode::kDocker);
    REQUIRE_FALSE(picked.ok());
    CHECK(picked.error().code == "isolation_unavailable");
    CHECK_THAT(picked.error().message, Catch::Contains("no Docker support"));
  }
  CHECK_THROWS_AS(IsolationSelector(&docker, nullptr, IsolationMode::kAuto), std::invalid_argument);
}

TEST_CASE("the change callback fires once per docker transition", "[isolation][selector]") {
  FakeIsolator docker("docker", true), process("process", true);
  IsolationSelector sel(&docker, &process, IsolationMode::kAuto);
  std::vector<bool> changes;
  sel.OnChange([&](bool up) { changes.push_back(up); });
  CHECK(sel.Refresh());
  CHECK(sel.Refresh());
  CHECK(changes.empty());  // the first look is not a change
  docker.set_available(false);
  (void)sel.Pick(IsolationMode::kAuto);
  (void)sel.Pick(IsolationMode::kAuto);
  CHECK_FALSE(sel.Refresh());
  CHECK(changes == std::vector<bool>{false});
  docker.set_available(true);
  CHECK(sel.Refresh());
  (void)sel.Pick(IsolationMode::kAuto);
  CHECK(changes == std::vector<bool>{false, true});
  CHECK(sel.docker_available());
}

TEST_CASE("concurrent picks during flapping report alternating transitions",
          "[isolation][selector][concurrency]") {
  FakeIsolator docker("docker", true), process("process", true);
  IsolationSelector sel(&docker, &process, IsolationMode::kAuto);
  std::mutex mu;
  std::vector<bool> changes;
  sel.OnChange([&](bool up) {
    std::lock_guard lock(mu);
    changes.push_back(up);
  });
  sel.Refresh();
  std::atomic<bool> done{false};
  std::atomic<int> failed_picks{0};
  std::vector<std::thread> pickers;
  for (int i = 0; i < 4; ++i) {
    pickers.emplace_back([&] {
      while (!done) {
        if (!sel.Pick(IsolationMode::kAuto).ok()) ++failed_picks;
      }
    });
  }
  for (int i = 0; i < 20; ++i) {
    docker.set_available(i % 2 == 0 ? false : true);
    std::this_thread::sleep_for(1ms);
  }
  done = true;
  for (auto& t : pickers) t.join();
  CHECK(failed_picks == 0);  // auto always has somewhere to run
  sel.Refresh();
  std::lock_guard lock(mu);
  REQUIRE_FALSE(changes.empty());
  for (size_t i = 1; i < changes.size(); ++i) {
    INFO("transition " << i);
    CHECK(changes[i] != changes[i - 1]);
  }
  CHECK(changes.back() == true);
}

}  // namespace
}  // namespace runner::isolation
