// Choosing isolation against the real DockerIsolator and daemon, seen through a
// unix-socket proxy the test opens and closes to play "Docker stopped" (the
// selector's rules with a stand-in: tests/unit/isolation/selector_test.cpp).

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
