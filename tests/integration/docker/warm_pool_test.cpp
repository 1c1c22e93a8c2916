// Integration tests of warm containers (isolation/docker/warm_pool.h) against
// the real dockerd and runner-task:latest: the hit and miss paths, single use,
// the limits `update` applies, OOM, timeout and cancel in a warm container,
// the reaper, and the pool's stop. Every container carries
// io.runner.node=<this run's id>; the last test checks none is left.

#include "isolation/docker/warm_pool.h"

#include <atomic>
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>

#include "isolation/docker/docker_isolator.h"
#include "tests/integration/docker/docker_test_support.h"
#include "tests/support/services.h"

namespace {

using runner::testing::docker::Collector;
using runner::testing::docker::RandomId;
using runner::testing::docker::SpecOn;

using namespace std::chrono_literals;
using runner::isolation::OutputStream;
using runner::isolation::RunResult;
using runner::isolation::TaskSpec;
using runner::isolation::docker::DockerIsolator;
using runner::isolation::docker::DockerIsolatorOptions;
using Clock = std::chrono::steady_clock;
namespace json = boost::json;

constexpr const char* kImage = "runner-task:latest";

const std::string& RunNode() {
  static const std::string id = "it-warm-" + RandomId();
  return id;
}

DockerIsolatorOptions Options(int per_image, const std::string& node = RunNode()) {
  DockerIsolatorOptions o;
  o.docker_host = runner::testing::DockerHost();
  o.stop_grace = 2s;
  o.warm_per_image = per_image;
  o.warm_images = {kImage};
  o.node_id = node;
  o.warm_wait = 0ms;  // a miss runs cold at once (the wait has its own test)
  return o;
}

TaskSpec Spec(std::vector<std::string> command) { return SpecOn(RunNode(), std::move(command)); }

bool WaitReady(DockerIsolator& iso, int n, std::chrono::seconds within = 60s) {
  return runner::testing::WaitFor(
      [&] {
        auto s = iso.WarmStatus();
        return s && s->ready >= n;
      },
      within);
}

size_t ContainersLabelled(DockerIsolator& iso, const std::string& label) {
  auto list = iso.client().ContainerList({label});
  REQUIRE(list.ok());
  return list->size();
}

// The warm isolator most tests share: one ready container.
DockerIsolator& Warm() {
  static DockerIsolator iso(Options(1));
  return iso;
}

// Warm(), started, with its container ready.
DockerIsolator& ReadyWarm() {
  auto& iso = Warm();
  REQUIRE(iso.StartWarmPool().ok());
  REQUIRE(WaitReady(iso, 1));
  return iso;
}

// Runs `spec`, asking it to stop once its output has "ready".
RunResult RunStoppedOnceReady(DockerIsolator& iso, const TaskSpec& spec, Collector& c) {
  std::stop_source stop;
  std::jthread canceller([&] {
    runner::testing::WaitFor(
        [&] {
          std::lock_guard lock(c.mu);
          return c.out.find("ready") != std::string::npos;
        },
        20s);
    stop.request_stop();
  });
  return iso.Run(spec, c, stop.get_token());
}

// The container of a finished task is gone (single use).
bool Gone(DockerIsolator& iso, const std::string& id) {
  iso.WaitForCleanup();
  auto inspected = iso.client().ContainerInspect(id);
  return !inspected.ok() && inspected.error().code == "not_found";
}

}  // namespace

TEST_CASE("the launcher message carries the report nonce, argv and env, length first",
          "[warm][unit]") {
  TaskSpec spec;
  spec.command = {"sh", "-c", "echo hi"};
  spec.env = {{"A", "1"}};
  std::string m = runner::isolation::docker::EncodeLaunch(spec, "n0nce");
  std::string body = std::string("n0nce\0003\0sh\0-c\0echo hi\0A=1\0", 26);
  REQUIRE(m.size() == 4 + body.size());
  CHECK(static_cast<unsigned char>(m[0]) == body.size());
  CHECK(m.substr(4) == body);
}

TEST_CASE("a warm container has every setting of a cold one, and the launcher", "[warm][unit]") {
  auto o = Options(1);
  auto c = runner::isolation::docker::BuildWarmConfig(kImage, {"/ep"}, o, "n1", "tok", "/x/l");
  const auto& host = c.at("HostConfig").as_object();
  CHECK(host.at("NetworkMode").as_string() == "none");
  CHECK(host.at("ReadonlyRootfs").as_bool());
  CHECK(host.at("CapDrop").as_array()[0].as_string() == "ALL");
  CHECK(host.at("SecurityOpt").as_array()[0].as_string() == "no-new-privileges");
  CHECK(host.at("Init").as_bool());
  CHECK(host.at("Tmpfs").as_object().contains("/work"));
  CHECK(host.at("Tmpfs").as_object().contains("/tmp"));
  CHECK(host.at("Binds").as_array()[0].as_string() == "/x/l:/.runner/launch:ro");
  CHECK(c.at("User").as_string() == "65534:65534");
  CHECK(c.at("NetworkDisabled").as_bool());
  CHECK(c.at("OpenStdin").as_bool());
  CHECK(c.at("StdinOnce").as_bool());
  CHECK(c.at("Entrypoint").as_array().size() == 2);
  CHECK(c.at("Labels").as_object().at("io.runner.node").as_string() == "n1");
  CHECK(c.at("Labels").as_object().at("io.runner.warm").as_string() == "tok");
  CHECK(!host.contains("Memory"));
  CHECK(c.at("Env").as_array().empty());  // nothing of any task before it is taken
}

TEST_CASE("a matching task takes a warm container and runs as a cold one would", "[warm][run]") {
  auto& iso = ReadyWarm();
  auto before = *iso.WarmStatus();
  CHECK(before.target == 1);

  auto spec = Spec({"sh", "-c", "id -u; pwd; echo $GREETING; echo err >&2; cat; exit 3"});
  spec.env = {{"GREETING", "hello world"}};
  Collector c;
  RunResult r = iso.Run(spec, c, {});
  CHECK(r.kind == RunResult::Kind::kExited);
  CHECK(r.exit_code == 3);
  CHECK(r.isolation == "docker");
  CHECK(c.out == "65534\n/work\nhello world\n");  // `cat` reads /dev/null, as in a cold task
  CHECK(c.err == "err\n");
  auto after = *iso.WarmStatus();
  CHECK(after.hits == before.hits + 1);
  CHECK(Gone(iso, c.container));
  // Refilled in the background.
  CHECK(WaitReady(iso, 1));
}

TEST_CASE("a warm task's output comes whole on its attach stream, to the exit", "[warm][run]") {
  // The attach stream that writes argv and env carries the output back (no
  // logs call): megabytes on both streams, interleaved, and the last line
  // written just before exit all arrive.
  auto& iso = ReadyWarm();
  auto spec = Spec({"sh", "-c",
                    "yes 0123456789abcdef | head -c 2000000; yes err | head -c 500000 >&2; "
                    "echo last"});
  Collector c;
  RunResult r = iso.Run(spec, c, {});
  CHECK(r.kind == RunResult::Kind::kExited);
  CHECK(r.exit_code == 0);
  CHECK(c.out.size() == 2000000 + 5);
  CHECK(c.out.substr(0, 17) == "0123456789abcdef\n");
  CHECK(c.out.substr(c.out.size() - 5) == "last\n");
  CHECK(c.err.size() == 500000);
  CHECK(c.err.find_first_not_of("er\n") == std::string::npos);
}

TEST_CASE("a command that does not exist exits 127 in a warm container", "[warm][run]") {
  auto& iso = ReadyWarm();
  auto spec = Spec({"no-such-command-here"});
  Collector c;
  RunResult r = iso.Run(spec, c, {});
  CHECK(r.kind == RunResult::Kind::kExited);
  CHECK(r.exit_code == 127);
  CHECK(c.err.find("no-such-command-here") != std::string::npos);
}

TEST_CASE("a task that does not match takes the cold path", "[warm][run]") {
  auto& iso = ReadyWarm();
  auto before = *iso.WarmStatus();
  auto spec = Spec({"sh", "-c", "echo cold"});
  spec.limits.disk = 8LL << 20;  // not the warm containers' default tmpfs
  Collector c;
  RunResult r = iso.Run(spec, c, {});
  CHECK(r.kind == RunResult::Kind::kExited);
  CHECK(c.out == "cold\n");
  auto after = *iso.WarmStatus();
  CHECK(after.misses == before.misses + 1);
  CHECK(after.hits == before.hits);
  CHECK(after.ready == 1);  // the warm container is still there for the next match
}

TEST_CASE("a task that finds none ready waits for the one being started", "[warm][wait]") {
  // Back to back, the second task comes while its container's replacement is
  // still being created and started: with a wait it takes that one; without,
  // it runs cold at once.
  const bool wait = GENERATE(true, false);
  const std::string node = RunNode() + (wait ? "-wait" : "-nowait");
  auto options = Options(1, node);
  options.warm_wait = wait ? 20s : 0ms;  // generous: a loaded CI host starts slowly
  DockerIsolator iso(options);
  REQUIRE(iso.StartWarmPool().ok());
  REQUIRE(WaitReady(iso, 1));
  auto before = *iso.WarmStatus();
  Collector ca, cb;
  REQUIRE(iso.Run(Spec({"true"}), ca, {}).kind == RunResult::Kind::kExited);
  RunResult rb = iso.Run(Spec({"sh", "-c", "echo second"}), cb, {});
  CHECK(rb.kind == RunResult::Kind::kExited);
  CHECK(cb.out == "second\n");
  CHECK(cb.container != ca.container);
  auto after = *iso.WarmStatus();
  CHECK(after.hits == before.hits + (wait ? 2 : 1));
  CHECK(after.misses == before.misses + (wait ? 0 : 1));
  iso.StopWarmPool();
  iso.WaitForCleanup();
  CHECK(ContainersLabelled(iso, "io.runner.node=" + node) == 0);
}

TEST_CASE("a warm container serves one task: nothing of it reaches the next", "[warm][single]") {
  auto& iso = ReadyWarm();
  // A hostile task leaves files and a process behind.
  auto a = Spec({"sh", "-c",
                 "echo secret > /work/left; echo secret > /tmp/left; "
                 "(trap '' TERM HUP; sleep 600) >/dev/null 2>&1 & echo planted"});
  Collector ca;
  RunResult ra = iso.Run(a, ca, {});
  REQUIRE(ra.kind == RunResult::Kind::kExited);
  CHECK(ca.out == "planted\n");
  REQUIRE(WaitReady(iso, 1));

  auto b = Spec({"sh", "-c", "ls -A /work /tmp; ps -o pid,args | grep -c 'sleep 600' || true"});
  Collector cb;
  RunResult rb = iso.Run(b, cb, {});
  CHECK(rb.kind == RunResult::Kind::kExited);
  CHECK(cb.container != ca.container);
  CHECK(cb.out.find("left") == std::string::npos);
  CHECK(cb.out.find("secret") == std::string::npos);
  CHECK(Gone(iso, ca.container));
  CHECK(Gone(iso, cb.container));
}

TEST_CASE("limits given by update are on the container while the task runs", "[warm][limits]") {
  auto& iso = ReadyWarm();
  auto spec = Spec({"sh", "-c", "echo $SECRET_TOKEN; sleep 5"});
  spec.env = {{"SECRET_TOKEN", "s3cr3t-warm"}};  // secrets reach tasks as env
  spec.limits.cpus = 0.5;
  spec.limits.memory = 96LL << 20;
  spec.limits.pids = 42;
  Collector c;
  json::object host, labels;
  std::string config_text;
  std::jthread inspector([&] {
    REQUIRE(runner::testing::WaitFor([&] { return c.started.load(); }, 20s));
    std::string id;
    {
      std::lock_guard lock(c.mu);
      id = c.container;
    }
    auto inspected = iso.client().ContainerInspect(id);
    REQUIRE(inspected.ok());
    host = inspected->at("HostConfig").as_object();
    config_text = json::serialize(inspected->at("Config"));
    labels = inspected->at("Config").as_object().at("Labels").as_object();
  });
  RunResult r = iso.Run(spec, c, {});
  inspector.join();
  CHECK(r.kind == RunResult::Kind::kExited);
  REQUIRE(!host.empty());
  CHECK(host.at("NanoCpus").as_int64() == 500000000);
  CHECK(host.at("Memory").as_int64() == (96LL << 20));
  CHECK(host.at("MemorySwap").as_int64() == (96LL << 20));
  CHECK(host.at("PidsLimit").as_int64() == 42 + 1);  // and one for the launcher, its parent
  CHECK(host.at("ReadonlyRootfs").as_bool());
  CHECK(host.at("NetworkMode").as_string() == "none");
  CHECK(labels.contains("io.runner.warm"));
  CHECK(labels.at("io.runner.node").as_string() == RunNode());
  // The task has its env; the container's config never had it.
  CHECK(c.out == "s3cr3t-warm\n");
  CHECK(!config_text.empty());
  CHECK(config_text.find("s3cr3t-warm") == std::string::npos);
}

TEST_CASE("a paused pool (backpressure) does not refill until it resumes", "[warm][pressure]") {
  const std::string node = RunNode() + "-paused";
  DockerIsolator iso(Options(1, node));
  REQUIRE(iso.StartWarmPool().ok());
  REQUIRE(WaitReady(iso, 1));
  iso.PauseWarmPool(true);
  Collector c;
  RunResult r = iso.Run(Spec({"true"}), c, {});
  CHECK(r.kind == RunResult::Kind::kExited);
  CHECK(iso.WarmStatus()->hits == 1);
  // Past the refill deferral: still nothing started while throttled.
  std::this_thread::sleep_for(2500ms);
  CHECK(iso.WarmStatus()->ready == 0);
  iso.WaitForCleanup();
  CHECK(ContainersLabelled(iso, "io.runner.node=" + node) == 0);
  iso.PauseWarmPool(false);
  CHECK(WaitReady(iso, 1));
  iso.StopWarmPool();
  CHECK(ContainersLabelled(iso, "io.runner.node=" + node) == 0);
}

TEST_CASE("a memory hog in a warm container is reported oom_killed", "[warm][limits]") {
  auto& iso = ReadyWarm();
  auto hits = iso.WarmStatus()->hits;
  auto spec = Spec({"sh", "-c", "x=a; while true; do x=$x$x; done"});
  spec.limits.memory = 32LL << 20;
  Collector c;
  RunResult r = iso.Run(spec, c, {});
  CHECK(iso.WarmStatus()->hits == hits + 1);
  CHECK(r.kind == RunResult::Kind::kOomKilled);
  CHECK(r.error_code == "oom_killed");
}

TEST_CASE("a warm task past its timeout is stopped and reported timed_out", "[warm][timeout]") {
  auto& iso = ReadyWarm();
  auto spec = Spec({"sleep", "30"});
  spec.timeout = 1s;
  Collector c;
  auto t0 = Clock::now();
  RunResult r = iso.Run(spec, c, {});
  CHECK(r.kind == RunResult::Kind::kTimedOut);
  CHECK(Clock::now() - t0 < 10s);
  CHECK(Gone(iso, c.container));
}

TEST_CASE("a stop request cancels a warm task", "[warm][cancel]") {
  auto& iso = ReadyWarm();
  auto spec = Spec({"sleep", "30"});
  Collector c;
  std::stop_source stop;
  std::jthread canceller([&] {
    runner::testing::WaitFor([&] { return c.started.load(); }, 20s);
    std::this_thread::sleep_for(300ms);
    stop.request_stop();
  });
  auto t0 = Clock::now();
  RunResult r = iso.Run(spec, c, stop.get_token());
  CHECK(r.kind == RunResult::Kind::kStopped);
  CHECK(r.error_code == "cancelled");
  CHECK(Clock::now() - t0 < 10s);
  CHECK(Gone(iso, c.container));
}

TEST_CASE("a task cannot end itself early with a forged exit report", "[warm][report]") {
  // The launcher's report carries a nonce the task never sees: one the task
  // writes (its own guess, or what it might find in its environment) is
  // output, and the task runs on to its real end.
  auto& iso = ReadyWarm();
  auto spec = Spec({"sh", "-c",
                    "env | grep -c runner-exit; "
                    "printf '\\036runner-exit 00000000000000000000000000000000 0 0 0\\n'; "
                    "sleep 1; echo after; exit 3"});
  Collector c;
  RunResult r = iso.Run(spec, c, {});
  CHECK(r.kind == RunResult::Kind::kExited);
  CHECK(r.exit_code == 3);
  CHECK(c.out == "0\n\x1erunner-exit 00000000000000000000000000000000 0 0 0\nafter\n");
}

TEST_CASE("a warm task gets the SIGTERM of a stop, and what it leaves running is ended",
          "[warm][report]") {
  auto& iso = ReadyWarm();
  {
    // The launcher passes the stop's SIGTERM on to the task, which has its
    // grace to finish.
    auto spec = Spec({"sh", "-c",
                      "trap 'echo got-term; exit 7' TERM; echo ready; "
                      "while :; do sleep 0.1; done"});
    Collector c;
    RunResult r = RunStoppedOnceReady(iso, spec, c);
    CHECK(r.kind == RunResult::Kind::kStopped);
    CHECK(c.out == "ready\ngot-term\n");
  }
  REQUIRE(WaitReady(iso, 1));
  {
    // A task that exits 0 at once is over at once, whatever it left behind
    // holding its output open (a cold task's container ends the same way).
    auto spec = Spec({"sh", "-c", "(trap '' TERM HUP; sleep 600; echo late) & echo done"});
    Collector c;
    auto t0 = Clock::now();
    RunResult r = iso.Run(spec, c, {});
    CHECK(r.kind == RunResult::Kind::kExited);
    CHECK(r.exit_code == 0);
    CHECK(c.out == "done\n");
    CHECK(Clock::now() - t0 < 10s);
    CHECK(Gone(iso, c.container));
  }
}

TEST_CASE("a warm task that writes as it shuts down on SIGTERM keeps all its output",
          "[warm][report]") {
  // After passing a signal on, the launcher goes on copying: a task that
  // writes more than a pipe holds during its grace is not stalled until the
  // kill.
  auto& iso = ReadyWarm();
  auto spec = Spec({"sh", "-c",
                    "trap 'yes bye | head -c 300000; exit 7' TERM; echo ready; "
                    "while :; do sleep 0.1; done"});
  Collector c;
  RunResult r = RunStoppedOnceReady(iso, spec, c);
  CHECK(r.kind == RunResult::Kind::kStopped);
  CHECK(r.exit_code == 7);  // ended by its own exit, in the grace, not by the kill
  CHECK(c.out.size() == 6 + 300000);
}

TEST_CASE("a dead node's warm containers are reaped; a live pool's are spared", "[warm][reap]") {
  const std::string dead = RunNode() + "-dead";
  {
    DockerIsolator victim(Options(2, dead));
    REQUIRE(victim.StartWarmPool().ok());
    REQUIRE(WaitReady(victim, 2));
    // Its own reaping (a node's first pass reaps its own id) spares them.
    auto own = victim.ReapOrphans({dead});
    REQUIRE(own.ok());
    CHECK(*own == 0);
    CHECK(ContainersLabelled(victim, "io.runner.node=" + dead) == 2);
    // Another node reaps them as a dead node's.
    auto reaped = Warm().ReapOrphans({dead});
    REQUIRE(reaped.ok());
    CHECK(*reaped == 2);
    CHECK(ContainersLabelled(victim, "io.runner.node=" + dead) == 0);
  }
}

TEST_CASE("stopping the pool leaves no warm container", "[warm][stop]") {
  const std::string node = RunNode() + "-stop";
  DockerIsolator iso(Options(3, node));
  REQUIRE(iso.StartWarmPool().ok());
  REQUIRE(WaitReady(iso, 3));
  iso.StopWarmPool();
  CHECK(iso.WarmStatus()->ready == 0);
  CHECK(ContainersLabelled(iso, "io.runner.node=" + node) == 0);
}

TEST_CASE("with no warm containers every task is cold, as before", "[warm][off]") {
  DockerIsolator iso(Options(0));
  CHECK(!iso.WarmStatus().has_value());
  REQUIRE(iso.StartWarmPool().ok());
  auto spec = Spec({"sh", "-c", "echo cold"});
  Collector c;
  RunResult r = iso.Run(spec, c, {});
  CHECK(r.kind == RunResult::Kind::kExited);
  CHECK(c.out == "cold\n");
}

TEST_CASE("no warm container of this test run is left behind", "[warm][cleanup]") {
  Warm().StopWarmPool();
  Warm().WaitForCleanup();
  CHECK(ContainersLabelled(Warm(), "io.runner.node=" + RunNode()) == 0);
}
