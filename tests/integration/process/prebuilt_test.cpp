// Pre-built sandboxes (ProcessIsolatorOptions::prebuilt_sandboxes): a task
// starts in a sandbox built before it was known. Each is used once, a dead
// one is replaced, limits hold in them, and none outlives its isolator.
// The rest of the sandbox's guarantees run on this path too: ctest
// it_process_prebuilt runs the whole it_process suite with
// RUNNER_TEST_PREBUILT=2 (as root and, for the escape suite, unprivileged).

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <mutex>
#include <thread>

#include "isolation/process/process_isolator.h"
#include "tests/integration/process/capture.h"
#include "tests/support/services.h"

namespace runner::isolation::process {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Kind = RunResult::Kind;

ProcessIsolatorOptions Options(const testing::TempDir& dir, size_t prebuilt = 2) {
  ProcessIsolatorOptions o;
  o.work_root = dir.path() / "data" / "work";
  o.cgroup_parent = "runner-it-prebuilt";
  o.sample_interval = 100ms;
  o.stop_grace = 500ms;
  o.prebuilt_sandboxes = prebuilt;
  return o;
}

TaskSpec Shell(const std::string& script) {
  static std::atomic<int> n{0};
  TaskSpec spec;
  spec.task_id = "it-prebuilt-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
  spec.worker_id = "w-test";
  spec.command = {"/bin/sh", "-c", script, "rt-prebuilt-marker"};
  spec.timeout = 20s;
  return spec;
}

// Waits (up to 10 s) for the pool to hold `n` ready sandboxes.
bool WaitReady(const ProcessIsolator& iso, size_t n) {
  for (int i = 0; i < 1000; ++i) {
    if (iso.PrebuiltReady() >= n) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

bool Alive(int pid) { return ::kill(pid, 0) == 0; }

bool Contains(const std::vector<int>& v, int x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

TEST_CASE("a pre-built sandbox runs one task only, and a new one takes its place",
          "[process][prebuilt]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  REQUIRE(iso.sandbox().usable());
  REQUIRE(WaitReady(iso, 2));
  std::vector<int> before = iso.PrebuiltPids();

  Capture first;
  TaskSpec a = Shell(
      "echo secret > /tmp/left; echo secret > /work/left; echo secret > /dev/shm/left; "
      "sleep 98761 & echo $SECRET_RT; id -u; hostname; echo W$(ls -A /.w 2>/dev/null | wc -l); "
      "ls -A /.w/* 2>/dev/null | wc -l");
  a.env["SECRET_RT"] = "first-task-secret";
  RunResult r = iso.Run(a, first, {});
  INFO("stderr: " << first.err());
  REQUIRE(r.kind == Kind::kExited);
  CHECK(r.exit_code == 0);
  CHECK(Contains(before, first.pid()));  // it ran in a sandbox built before it
  CHECK_THAT(first.out(), Catch::StartsWith("first-task-secret\n"));
  CHECK_THAT(first.out(), Catch::Contains("\nrunner-task\n"));
  // The runner's work root, where the sandbox found its work dir, is covered.
  CHECK_THAT(first.out(), Catch::EndsWith("\nW0\n0\n"));
  if (::geteuid() == 0) CHECK_THAT(first.out(), Catch::Contains("\n65534\n"));
  CHECK_FALSE(Alive(first.pid()));  // its init is gone with its namespace
  CHECK_FALSE(Contains(iso.PrebuiltPids(), first.pid()));

  Capture second;
  RunResult r2 = iso.Run(Shell("echo \"[$SECRET_RT]\"; ls -A /tmp /work /dev/shm; "
                               "grep -l '9876[1]' /proc/[0-9]*/cmdline 2>/dev/null || echo none"),
                         second, {});
  INFO("stderr: " << second.err());
  REQUIRE(r2.kind == Kind::kExited);
  CHECK(second.pid() != first.pid());
  CHECK_THAT(second.out(), Catch::StartsWith("[]\n"));
  CHECK_THAT(second.out(), !Catch::Contains("left"));
  CHECK_THAT(second.out(), Catch::EndsWith("none\n"));
  CHECK(WaitReady(iso, 2));  // refilled
}

TEST_CASE("a pre-built sandbox whose init died is replaced, and the task still runs",
          "[process][prebuilt]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir, 1));
  REQUIRE(iso.sandbox().usable());
  REQUIRE(WaitReady(iso, 1));
  std::vector<int> pids = iso.PrebuiltPids();
  REQUIRE(pids.size() == 1);
  REQUIRE(::kill(pids[0], SIGKILL) == 0);
  // Dead now, not yet reaped: the pool finds out when a task asks for it.
  for (int i = 0; i < 200; ++i) {
    std::ifstream stat("/proc/" + std::to_string(pids[0]) + "/stat");
    std::string all((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    if (all.find(") Z ") != std::string::npos) break;
    std::this_thread::sleep_for(5ms);
  }
  Capture cap;
  RunResult r = iso.Run(Shell("echo ran"), cap, {});
  INFO("stderr: " << cap.err());
  REQUIRE(r.kind == Kind::kExited);
  CHECK(r.exit_code == 0);
  CHECK(cap.out() == "ran\n");
  CHECK(cap.pid() != pids[0]);
  CHECK(iso.PrebuiltReplaced() == 1);
  CHECK(WaitReady(iso, 1));
  CHECK_FALSE(Contains(iso.PrebuiltPids(), pids[0]));
  // Reaped: no zombie of it is left.
  CHECK_FALSE(fs::exists("/proc/" + std::to_string(pids[0])));
}

// Limits need the runner's own cgroups (root): the unprivileged run leaves
// this case out by its [limits] tag (tests/CMakeLists.txt); everywhere else
// a missing controller fails it rather than skipping.
TEST_CASE("limits hold in a pre-built sandbox", "[process][prebuilt][limits]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  REQUIRE(iso.sandbox().usable());
  REQUIRE(WaitReady(iso, 2));

  SECTION("memory: OOM is reported") {
    INFO("the memory limit needs a memory cgroup the runner can create (run as root)");
    REQUIRE(::geteuid() == 0);
    REQUIRE(iso.cgroups().memory());
    Capture cap;
    TaskSpec spec = Shell("exec dd if=/dev/zero of=/dev/null bs=256M count=1");
    spec.limits.memory = 32 << 20;
    std::vector<int> ready = iso.PrebuiltPids();
    RunResult r = iso.Run(spec, cap, {});
    CHECK(Contains(ready, cap.pid()));
    CHECK(r.kind == Kind::kOomKilled);
    CHECK(r.error_code == "oom_killed");
  }
  SECTION("pids: a fork bomb is held") {
    INFO("the pids limit needs a pids cgroup the runner can create (run as root)");
    REQUIRE(::geteuid() == 0);
    REQUIRE(iso.cgroups().pids());
    Capture cap;
    // Only builtins once the sleeps are started: no fork is left to count them.
    // (A shell whose fork fails exits: the subshell does.)
    TaskSpec spec = Shell(
        "(i=0; while [ $i -lt 40 ]; do sleep 98762 & i=$((i+1)); done) 2>/dev/null; "
        "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n");
    spec.limits.pids = 16;
    std::vector<int> ready = iso.PrebuiltPids();
    RunResult r = iso.Run(spec, cap, {});
    INFO("stdout: " << cap.out() << " stderr: " << cap.err());
    CHECK(Contains(ready, cap.pid()));
    REQUIRE(r.kind == Kind::kExited);
    int count = std::atoi(cap.out().c_str());
    CHECK(count >= 8);
    CHECK(count <= 16);  // the init, the shell and the sleeps the limit let in
  }
  SECTION("cpu: a busy loop gets its share") {
    INFO("the cpu limit needs a cpu cgroup the runner can create (run as root)");
    REQUIRE(::geteuid() == 0);
    REQUIRE(iso.cgroups().cpu());
    Capture cap;
    TaskSpec spec = Shell("while :; do :; done");
    spec.limits.cpus = 0.25;
    spec.timeout = 2s;
    std::vector<int> ready = iso.PrebuiltPids();
    RunResult r = iso.Run(spec, cap, {});
    CHECK(Contains(ready, cap.pid()));
    CHECK(r.kind == Kind::kTimedOut);
    double share = r.usage.cpu_seconds / r.usage.duration;
    INFO("cpu_seconds=" << r.usage.cpu_seconds << " duration=" << r.usage.duration);
    CHECK(share > 0.12);
    CHECK(share < 0.33);
  }
  SECTION("disk: /tmp and /work share the limit") {
    Capture cap;
    TaskSpec spec = Shell(
        "dd if=/dev/zero of=/tmp/a bs=1M count=6 2>/dev/null && echo tmp-ok; "
        "dd if=/dev/zero of=/work/b bs=1M count=6 2>/dev/null && echo work-ok; sleep 1; echo end");
    spec.limits.disk = 10 << 20;
    std::vector<int> ready = iso.PrebuiltPids();
    RunResult r = iso.Run(spec, cap, {});
    INFO("out " << cap.out() << " err " << cap.err());
    if (::geteuid() == 0) {
      // A tmpfs work dir is mounted after the sandbox was built: a cold start.
      CHECK_FALSE(Contains(ready, cap.pid()));
      CHECK_THAT(cap.out(), Catch::Contains("tmp-ok"));
      CHECK_THAT(cap.out(), !Catch::Contains("work-ok"));
    } else {
      CHECK(Contains(ready, cap.pid()));
      CHECK(r.kind == Kind::kOverLimit);
    }
  }
  SECTION("timeout and rlimits") {
    Capture cap;
    TaskSpec spec = Shell("ulimit -c; ulimit -n; sleep 98763");
    spec.timeout = 500ms;
    std::vector<int> ready = iso.PrebuiltPids();
    auto t0 = std::chrono::steady_clock::now();
    RunResult r = iso.Run(spec, cap, {});
    CHECK(Contains(ready, cap.pid()));
    CHECK(r.kind == Kind::kTimedOut);
    CHECK(std::chrono::steady_clock::now() - t0 < 3s);
    CHECK(cap.out() == "0\n4096\n");
  }
  SECTION("cancel") {
    Capture cap;
    std::stop_source stop;
    std::thread canceller([&] {
      std::this_thread::sleep_for(300ms);
      stop.request_stop();
    });
    RunResult r = iso.Run(Shell("trap '' TERM; sleep 98764 & sleep 98764"), cap, stop.get_token());
    canceller.join();
    CHECK(r.kind == Kind::kStopped);
  }
  iso.WaitForCleanup();
  std::ifstream ps("/proc/self/mountinfo");
  std::string mounts((std::istreambuf_iterator<char>(ps)), std::istreambuf_iterator<char>());
  CHECK(mounts.find("it-prebuilt-") == std::string::npos);
}

TEST_CASE("no pre-built sandbox outlives its isolator", "[process][prebuilt]") {
  testing::TempDir dir;
  std::vector<int> pids;
  const fs::path work_root = dir.path() / "data" / "work";
  {
    ProcessIsolator iso(Options(dir, 3));
    REQUIRE(iso.sandbox().usable());
    REQUIRE(WaitReady(iso, 3));
    pids = iso.PrebuiltPids();
    Capture cap;
    RunResult r = iso.Run(Shell("true"), cap, {});
    CHECK(r.kind == Kind::kExited);
    REQUIRE(WaitReady(iso, 3));
    pids = iso.PrebuiltPids();
    for (int pid : pids) CHECK(Alive(pid));
  }
  for (int pid : pids) CHECK_FALSE(fs::exists("/proc/" + std::to_string(pid)));
  int status = 0;
  CHECK(::waitpid(-1, &status, WNOHANG) < 0);  // no child, not even a zombie
  // The work root is no mount point any more, and nothing of ours is mounted.
  std::ifstream in("/proc/self/mountinfo");
  std::string mounts((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(mounts.find(work_root.string()) == std::string::npos);
  for (const char* ps : {"98761", "98762", "98763", "98764", "rt-prebuilt-marker"}) {
    std::string found;
    for (const auto& e : fs::directory_iterator("/proc")) {
      std::ifstream cmd(e.path() / "cmdline");
      std::string c((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
      if (c.find(ps) != std::string::npos && e.path().filename() != std::to_string(::getpid()))
        found += e.path().filename().string() + " ";
    }
    CHECK(found.empty());
  }
}

}  // namespace runner::isolation::process
