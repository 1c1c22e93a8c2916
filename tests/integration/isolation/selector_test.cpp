// Choosing isolation: Docker when it answers, process otherwise, never a
// container-less run for a task that asked for Docker. The first cases drive
// the selector with a Docker stand-in whose availability the test toggles; the
// last one uses the real DockerIsolator and the real daemon, seen through a
// unix-socket proxy the test opens and closes to play "Docker stopped".

#include "isolation/selector.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <list>
#include <mutex>
#include <random>
#include <thread>

#include "isolation/docker/docker_isolator.h"
#include "isolation/process/process_isolator.h"
#include "tests/support/services.h"
#include "tests/support/socket_proxy.h"

namespace runner::isolation {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class FakeIsolator : public Isolator {
 public:
  FakeIsolator(std::string name, bool available) : name_(std::move(name)), available_(available) {}
  std::string_view Name() const override { return name_; }
  bool Available() override {
    ++checks_;
    return available_.load();
  }
  RunResult Run(const TaskSpec&, Observer&, std::stop_token) override {
    RunResult r;
    r.kind = RunResult::Kind::kExited;
    r.exit_code = 0;
    r.isolation = name_;
    return r;
  }
  void set_available(bool v) { available_ = v; }
  int checks() const { return checks_.load(); }

 private:
  std::string name_;
  std::atomic<bool> available_;
  std::atomic<int> checks_{0};
};

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

using DockerProxy = runner::testing::SocketProxy;

class Collector : public Observer {
 public:
  void OnOutput(OutputStream stream, std::string_view data) override {
    std::lock_guard lock(mu_);
    if (stream == OutputStream::kStdout) out_ += data;
  }
  std::string out() {
    std::lock_guard lock(mu_);
    return out_;
  }

 private:
  std::mutex mu_;
  std::string out_;
};

std::string RandomId() {
  std::mt19937_64 rng{std::random_device{}()};
  const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 10; ++i) s += hex[rng() % 16];
  return s;
}

TEST_CASE("when docker stops auto falls back to process, and uses docker again when it is back",
          "[isolation][selector][docker]") {
  std::string daemon = testing::DockerHost();  // fails loudly when dockerd is down
  testing::TempDir dir;
  DockerProxy proxy(dir.path() / "docker.sock", daemon.substr(std::string("unix://").size()));
  proxy.Open();

  docker::DockerIsolatorOptions dopt;
  dopt.docker_host = proxy.host();
  dopt.available_cache = 100ms;
  dopt.connect_timeout = 1000ms;
  dopt.stop_grace = 2s;
  docker::DockerIsolator docker_iso(dopt);
  process::ProcessIsolatorOptions popt;
  popt.work_root = dir.path() / "work";
  popt.cgroup_parent = "runner-it-isolation";
  process::ProcessIsolator process_iso(popt);

  IsolationSelector sel(&docker_iso, &process_iso, IsolationMode::kAuto);
  std::mutex mu;
  std::vector<bool> changes;
  sel.OnChange([&](bool up) {
    std::lock_guard lock(mu);
    changes.push_back(up);
  });

  const std::string node = "it-isolation-" + RandomId();
  auto run = [&](const std::string& word) {
    auto picked = sel.Pick(IsolationMode::kAuto);
    REQUIRE(picked.ok());
    TaskSpec spec;
    spec.task_id = "t-" + RandomId();
    spec.worker_id = "w-test";
    spec.node_id = node;
    spec.image = "runner-task:latest";
    spec.command = {"echo", word};
    spec.timeout = 60s;
    Collector c;
    RunResult r = (*picked)->Run(spec, c, {});
    CHECK(r.kind == RunResult::Kind::kExited);
    CHECK(c.out() == word + "\n");
    return r.isolation;
  };

  REQUIRE(sel.Refresh());
  CHECK(sel.Mode() == "docker");
  CHECK(run("first") == "docker");

  proxy.Close();  // Docker "stops"
  CHECK(testing::WaitFor([&] { return !sel.Refresh(); }, 5s));
  CHECK(sel.Mode() == "process");
  CHECK(run("during") == "process");
  auto refused = sel.Pick(IsolationMode::kDocker);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == "isolation_unavailable");

  proxy.Open();  // and comes back
  CHECK(testing::WaitFor([&] { return sel.Refresh(); }, 5s));
  CHECK(sel.Mode() == "docker");
  CHECK(run("again") == "docker");

  {
    std::lock_guard lock(mu);
    CHECK(changes == std::vector<bool>{false, true});
  }
  // Nothing of this test is left on the daemon: the removal that found it
  // gone was retried once it answered again.
  docker_iso.WaitForCleanup();
  docker::DockerIsolatorOptions direct_opt;
  direct_opt.docker_host = daemon;
  docker::DockerIsolator direct(direct_opt);
  auto reaped = direct.ReapOrphans({node});
  REQUIRE(reaped.ok());
  CHECK(*reaped == 0);
}

TEST_CASE("a removal that failed while Docker was away is tried again when the isolator stops",
          "[isolation][docker][cleanup]") {
  std::string daemon = testing::DockerHost();
  testing::TempDir dir;
  DockerProxy proxy(dir.path() / "docker.sock", daemon.substr(std::string("unix://").size()));
  proxy.Open();
  docker::DockerIsolatorOptions direct_opt;
  direct_opt.docker_host = daemon;
  docker::DockerIsolator direct(direct_opt);
  const std::string node = "it-isolation-" + RandomId();
  auto containers = [&] {
    auto list = direct.client().ContainerList({"io.runner.node=" + node});
    REQUIRE(list.ok());
    return list->size();
  };
  auto running = [&] {
    auto list = direct.client().ContainerList({"io.runner.node=" + node});
    return list.ok() && list->size() == 1 && list->front().state == "running";
  };
  {
    docker::DockerIsolatorOptions dopt;
    dopt.docker_host = proxy.host();
    dopt.connect_timeout = 1000ms;
    docker::DockerIsolator iso(dopt);
    TaskSpec spec;
    spec.task_id = "t-" + RandomId();
    spec.worker_id = "w-test";
    spec.node_id = node;
    spec.image = "runner-task:latest";
    spec.command = {"sleep", "60"};
    spec.timeout = 120s;
    Collector c;
    RunResult r;
    std::thread run([&] { r = iso.Run(spec, c, {}); });
    REQUIRE(testing::WaitFor(running, 30s));
    proxy.Close();  // Docker goes away mid-task: the run ends, its removal fails
    run.join();
    INFO(r.message);
    CHECK(r.kind == RunResult::Kind::kError);
    CHECK(r.error_code == "isolation_unavailable");
    iso.WaitForCleanup();
    CHECK(containers() == 1);  // still there, kept for a retry
    proxy.Open();              // back, but no task comes to trigger the retry
  }                            // the isolator stops: it tries again
  CHECK(containers() == 0);
  (void)direct.ReapOrphans({node});  // whatever happens, leave nothing behind
}

}  // namespace
}  // namespace runner::isolation
