// Real processes, real cgroups: what a user of a node without Docker sees.

#include "isolation/process/process_isolator.h"

#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stop_token>
#include <thread>

#include "tests/support/services.h"

namespace runner::isolation::process {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Kind = RunResult::Kind;

// Every shell script runs with this as $0 and every sleep with a 98765x
// duration, so the suite can prove nothing of it survives.
constexpr const char* kMarker = "rt-proc-marker";
constexpr const char* kCgroupParent = "runner-it-process";

class Recorder : public Observer {
 public:
  void OnStarted(std::string_view isolation, std::string_view handle) override {
    std::lock_guard lock(mu_);
    isolation_ = isolation;
    handle_ = handle;
  }
  void OnOutput(OutputStream stream, std::string_view data) override {
    std::lock_guard lock(mu_);
    (stream == OutputStream::kStdout ? out_ : err_).append(data);
  }
  void OnUsage(const UsageSample& sample) override {
    std::lock_guard lock(mu_);
    samples_.push_back(sample);
  }
  void OnOverLimit(std::string_view resource, OverLimitAction action,
                   std::string_view message) override {
    std::lock_guard lock(mu_);
    overs_.push_back({std::string(resource), action, std::string(message)});
    if (on_over_) on_over_();
  }

  struct Over {
    std::string resource;
    OverLimitAction action;
    std::string message;
  };
  std::string out() {
    std::lock_guard lock(mu_);
    return out_;
  }
  std::string err() {
    std::lock_guard lock(mu_);
    return err_;
  }
  std::string handle() {
    std::lock_guard lock(mu_);
    return handle_;
  }
  std::string isolation() {
    std::lock_guard lock(mu_);
    return isolation_;
  }
  std::vector<UsageSample> samples() {
    std::lock_guard lock(mu_);
    return samples_;
  }
  std::vector<Over> overs() {
    std::lock_guard lock(mu_);
    return overs_;
  }
  // Called (under the recorder's lock) on each over-limit report.
  std::function<void()> on_over_;

 private:
  std::mutex mu_;
  std::string isolation_, handle_, out_, err_;
  std::vector<UsageSample> samples_;
  std::vector<Over> overs_;
};

ProcessIsolatorOptions Options(const testing::TempDir& dir) {
  ProcessIsolatorOptions o;
  o.work_root = dir.path() / "work";
  o.cgroup_parent = kCgroupParent;
  o.sample_interval = 100ms;
  o.stop_grace = 1s;
  // ctest it_process_prebuilt: the same tests with pre-built sandboxes.
  if (const char* n = std::getenv("RUNNER_TEST_PREBUILT")) o.prebuilt_sandboxes = std::atoi(n);
  return o;
}

TaskSpec Spec(std::vector<std::string> command) {
  static std::atomic<int> n{0};
  TaskSpec spec;
  spec.task_id = "it-process-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
  spec.worker_id = "w-test";
  spec.command = std::move(command);
  return spec;
}

TaskSpec Shell(const std::string& script) { return Spec({"/bin/sh", "-c", script, kMarker}); }

// Pids of processes whose command line contains `needle` (other than us).
std::vector<int> ProcessesWith(const std::string& needle) {
  std::vector<int> found;
  DIR* proc = ::opendir("/proc");
  while (dirent* e = ::readdir(proc)) {
    int pid = std::atoi(e->d_name);
    if (pid <= 0 || pid == ::getpid()) continue;
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmdline.find(needle) != std::string::npos) found.push_back(pid);
  }
  ::closedir(proc);
  return found;
}

// No child of this test process is left, not even a zombie; with pre-built
// sandboxes (RUNNER_TEST_PREBUILT), but for their idle inits: ones still
// waiting for a task (no child of their own).
bool NoChildren() {
  int status = 0;
  if (std::getenv("RUNNER_TEST_PREBUILT") == nullptr) {
    return ::waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD;
  }
  auto only_idle_inits = [] {
    for (const auto& t : fs::directory_iterator("/proc/self/task")) {
      std::ifstream in(t.path() / "children");
      int pid = 0;
      while (in >> pid) {
        std::string base = "/proc/" + std::to_string(pid);
        std::ifstream cmd(base + "/cmdline");
        std::string cmdline((std::istreambuf_iterator<char>(cmd)),
                            std::istreambuf_iterator<char>());
        std::ifstream kids(base + "/task/" + std::to_string(pid) + "/children");
        std::string grandchildren((std::istreambuf_iterator<char>(kids)),
                                  std::istreambuf_iterator<char>());
        if (cmdline.rfind(std::string("runner-task-init\0-w", 19), 0) != 0 ||
            grandchildren.find_first_not_of(' ') != std::string::npos) {
          return false;
        }
      }
    }
    return true;
  };
  // One being built may not have exec'd the init yet.
  for (int i = 0; i < 100; ++i) {
    if (only_idle_inits()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The v1 cpu (or v2) cgroup directory of a running pid, from /proc/<pid>/cgroup.
fs::path CpuCgroupOf(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    auto a = line.find(':');
    auto b = line.find(':', a + 1);
    std::string ctrls = line.substr(a + 1, b - a - 1);
    std::stringstream ss(ctrls);
    std::string c;
    while (std::getline(ss, c, ',')) {
      if (c == "cpu")
        return fs::path("/sys/fs/cgroup/cpu") / fs::path(line.substr(b + 1)).relative_path();
    }
  }
  return {};
}

// Only recycled (empty) spares are left under the work root.
bool NoTaskDirs(const fs::path& root) {
  for (const auto& e : fs::directory_iterator(root)) {
    if (e.path().filename() != ".spare") return false;
  }
  for (const auto& spare : fs::directory_iterator(root / ".spare")) {
    for (const auto& e : fs::directory_iterator(spare.path())) {
      if (e.path().filename() != "tmp" || !fs::is_empty(e.path())) return false;
    }
  }
  return true;
}

// The same, once `iso` has cleaned up after every task it finished.
bool NoTaskDirs(ProcessIsolator& iso, const fs::path& root) {
  iso.WaitForCleanup();
  return NoTaskDirs(root);
}

TEST_CASE("this host gives tasks memory, cpu and pids cgroups and a way to kill them all",
          "[process][cgroup]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  INFO(iso.cgroups().Describe());
  CHECK(iso.cgroups().memory().has_value());
  CHECK(iso.cgroups().cpu().has_value());
  CHECK(iso.cgroups().cpuacct().has_value());
  CHECK(iso.cgroups().pids().has_value());
  CHECK((iso.cgroups().v2().has_value() || iso.cgroups().freezer().has_value()));
  CHECK(iso.Name() == "process");
  CHECK(iso.Available());
}

TEST_CASE("a task's stdout and stderr reach the observer apart", "[process]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder rec;
  RunResult r = iso.Run(Shell("echo to-out; echo to-err >&2; echo more-out"), rec, {});
  CHECK(r.kind == Kind::kExited);
  CHECK(r.exit_code == 0);
  CHECK(r.error_code.empty());
  CHECK(r.isolation == "process");
  CHECK(rec.isolation() == "process");
  CHECK(std::atoi(rec.handle().c_str()) > 0);
  CHECK(rec.out() == "to-out\nmore-out\n");
  CHECK(rec.err() == "to-err\n");
  CHECK(r.usage.duration > 0);
  CHECK(NoChildren());
}

TEST_CASE("a task's exit code is reported", "[process]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder rec;
  RunResult r = iso.Run(Shell("exit 3"), rec, {});
  INFO(rec.err());
  CHECK(r.kind == Kind::kExited);
  CHECK(r.exit_code == 3);
  CHECK(r.error_code == "nonzero_exit");
}

TEST_CASE("a command that does not exist fails with 127 and says so", "[process]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder rec;
  RunResult r = iso.Run(Spec({"no-such-command-rt"}), rec, {});
  CHECK(r.kind == Kind::kExited);
  CHECK(r.exit_code == 127);
  CHECK_THAT(rec.err(), Catch::Contains("command not found: no-such-command-rt"));
  CHECK(NoTaskDirs(iso, dir.path() / "work"));
}

TEST_CASE("a task starts the same whether its child shares the runner's memory or copies it",
          "[process][spawn]") {
  const bool shared = GENERATE(true, false);
  INFO("shared_memory_spawn=" << shared);
  testing::TempDir dir;
  ProcessIsolatorOptions o = Options(dir);
  o.shared_memory_spawn = shared;
  o.open_files = 321;
  ProcessIsolator iso(o);
  // Limits, working dir and cgroup are set in the child before exec; many
  // starts in a row reuse nothing of an earlier child.
  for (int i = 0; i < 20; ++i) {
    Recorder rec;
    RunResult r =
        iso.Run(Shell("ulimit -n; pwd; grep -c runner /proc/self/cgroup; exit 5"), rec, {});
    REQUIRE(r.kind == Kind::kExited);
    CHECK(r.exit_code == 5);
    auto lines = rec.out();
    CHECK_THAT(lines, Catch::StartsWith("321\n/work\n"));  // the sandbox's view of it
    CHECK_THAT(lines, !Catch::EndsWith("\n0\n"));          // inside the task's cgroup
  }
  Recorder missing;
  RunResult r = iso.Run(Spec({"no-such-command-rt"}), missing, {});
  CHECK(r.exit_code == 127);
  CHECK_THAT(missing.err(), Catch::Contains("command not found: no-such-command-rt"));
  // A program of the host outside the sandbox's view: found on the host,
  // started, and the exec inside fails; what it reports reaches the result.
  const fs::path bogus = dir.path() / "not-a-program";
  { std::ofstream(bogus) << "neither ELF nor #!\n"; }
  fs::permissions(bogus, fs::perms::owner_all);
  Recorder unrunnable;
  RunResult bad = iso.Run(Spec({bogus.string()}), unrunnable, {});
  CHECK(bad.kind == Kind::kExited);
  CHECK(bad.exit_code == 127);
  CHECK_THAT(bad.message, Catch::Contains("command not found in the sandbox: " + bogus.string()));
  CHECK(NoChildren());
  CHECK(NoTaskDirs(iso, dir.path() / "work"));
}

TEST_CASE("the runner's environment does not reach the task", "[process][env]") {
  ::setenv("RUNNER_IT_SECRET", "hunter2-do-not-leak", 1);
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder rec;
  TaskSpec spec = Spec({"env"});
  spec.env["GREETING"] = "hello";
  RunResult r = iso.Run(spec, rec, {});
  ::unsetenv("RUNNER_IT_SECRET");
  REQUIRE(r.kind == Kind::kExited);
  std::string out = rec.out();
  CHECK(out.find("hunter2") == std::string::npos);
  CHECK(out.find("RUNNER_IT_SECRET") == std::string::npos);
  CHECK_THAT(out, Catch::Contains("GREETING=hello\n"));
  CHECK_THAT(out, Catch::Contains("PATH=/usr/local/bin:/usr/bin:/bin\n"));
  CHECK_THAT(out, Catch::Contains("HOME=/work\n"));
  CHECK_THAT(out, Catch::Contains("TMPDIR=/tmp\n"));
}

TEST_CASE("the work dir is private to the task and removed afterwards on every path",
          "[process][workdir]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));

  SECTION("after a normal exit") {
    Recorder rec;
    RunResult r = iso.Run(
        Shell("pwd; echo data > file; ls -ld . | cut -c1-10; test -d \"$TMPDIR\""), rec, {});
    REQUIRE(r.kind == Kind::kExited);
    CHECK(r.exit_code == 0);
    std::istringstream lines(rec.out());
    std::string pwd, mode;
    std::getline(lines, pwd);
    std::getline(lines, mode);
    CHECK(pwd == "/work");
    CHECK(mode == "drwx------");
    CHECK(NoTaskDirs(iso, dir.path() / "work"));
  }
  SECTION("after a timeout, from a size-capped tmpfs") {
    Recorder rec;
    TaskSpec spec = Shell("pwd; exec sleep 987650");
    spec.limits.disk = 4 << 20;
    spec.timeout = 300ms;
    RunResult r = iso.Run(spec, rec, {});
    CHECK(r.kind == Kind::kTimedOut);
    CHECK(Trim(rec.out()) == "/work");
    iso.WaitForCleanup();
    std::ifstream mounts("/proc/mounts");
    std::string table((std::istreambuf_iterator<char>(mounts)), std::istreambuf_iterator<char>());
    CHECK(table.find((dir.path() / "work").string() + "/") == std::string::npos);
  }
  CHECK(NoTaskDirs(iso, dir.path() / "work"));
}

TEST_CASE("a task never sees what an earlier task left in its work dir", "[process][workdir]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder first;
  RunResult r1 = iso.Run(Shell("mkdir -p d/e; echo secret > d/e/f; echo x > $TMPDIR/t; "
                               "ln -s / root-link; chmod 777 ."),
                         first, {});
  REQUIRE(r1.kind == Kind::kExited);
  REQUIRE(r1.exit_code == 0);
  iso.WaitForCleanup();
  REQUIRE_FALSE(fs::is_empty(dir.path() / "work" / ".spare"));  // the next task reuses it
  Recorder second;
  RunResult r2 = iso.Run(Shell("ls -A; ls -A \"$TMPDIR\"; ls -ld . | cut -c1-10"), second, {});
  REQUIRE(r2.kind == Kind::kExited);
  CHECK(second.out() == "tmp\ndrwx------\n");
  CHECK(fs::exists("/bin/sh"));  // the planted link was removed, not followed
}

TEST_CASE("a task over its memory limit is reported oom_killed", "[process][memory]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder rec;
  TaskSpec spec = Spec({"dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"});
  spec.limits.memory = 32 << 20;
  RunResult r = iso.Run(spec, rec, {});
  CHECK(r.kind == Kind::kOomKilled);
  CHECK(r.error_code == "oom_killed");
  CHECK(r.exit_code == 137);
  CHECK_THAT(r.message, Catch::Contains("memory limit"));
  CHECK(r.usage.peak_memory > 16 << 20);
  CHECK(r.usage.peak_memory <= (32 << 20) + (1 << 20));
}

TEST_CASE("a CPU limit holds a busy loop to its share of a core", "[process][cpu]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder rec;
  TaskSpec spec = Shell("while :; do :; done");
  spec.limits.cpus = 0.25;
  spec.timeout = 2s;
  RunResult r = iso.Run(spec, rec, {});
  CHECK(r.kind == Kind::kTimedOut);
  double share = r.usage.cpu_seconds / r.usage.duration;
  INFO("cpu_seconds=" << r.usage.cpu_seconds << " duration=" << r.usage.duration);
  CHECK(share > 0.12);
  CHECK(share < 0.33);
  auto samples = rec.samples();
  REQUIRE(samples.size() >= 5);
  CHECK(samples.back().cpu_percent < 40);
}

TEST_CASE("a task that fills its disk limit is stopped as over_limit", "[process][disk]") {
  testing::TempDir dir;

  SECTION("a writer in a size-capped tmpfs work dir") {
    ProcessIsolator iso(Options(dir));
    Recorder rec;
    TaskSpec spec = Spec({"dd", "if=/dev/zero", "of=big", "bs=1M", "count=64"});
    spec.limits.disk = 8 << 20;
    RunResult r = iso.Run(spec, rec, {});
    CHECK(r.kind == Kind::kOverLimit);
    CHECK(r.error_code == "over_limit");
    CHECK_THAT(r.message, Catch::Contains("disk limit of 8.0 MiB"));
  }
  SECTION("a writer that keeps going after errors is killed") {
    ProcessIsolator iso(Options(dir));
    Recorder rec;
    TaskSpec spec = Shell(
        "i=0; while :; do dd if=/dev/zero of=f$i bs=64k count=16 2>/dev/null; "
        "i=$((i+1)); done");
    spec.limits.disk = 4 << 20;
    spec.timeout = 20s;
    auto t0 = std::chrono::steady_clock::now();
    RunResult r = iso.Run(spec, rec, {});
    CHECK(r.kind == Kind::kOverLimit);
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  }
  SECTION("without tmpfs, the file-size limit stops the writer") {
    ProcessIsolatorOptions o = Options(dir);
    o.use_tmpfs = false;
    ProcessIsolator iso(o);
    Recorder rec;
    TaskSpec spec = Spec({"dd", "if=/dev/zero", "of=big", "bs=1M", "count=64"});
    spec.limits.disk = 8 << 20;
    RunResult r = iso.Run(spec, rec, {});
    CHECK(r.kind == Kind::kOverLimit);
    CHECK(r.error_code == "over_limit");
  }
  CHECK(NoTaskDirs(dir.path() / "work"));  // each isolator cleaned up as it went
}

TEST_CASE("a fork bomb is held to the pids limit and cleaned up", "[process][pids]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  // Never run a bomb without the cgroup that contains it.
  REQUIRE(iso.cgroups().pids().has_value());
  Recorder rec;
  // The main shell forks once, before the bomb starts, then execs: a shell
  // that forked for the bomb itself exited with "can't fork" whenever the
  // bomb's children ate the last pid first (under load), ending the task early.
  // Each bomb process leaves a sleep behind before it doubles, so the bomb
  // stays at the limit until the timeout: a bomb of shells alone dies out by
  // itself (every shell whose fork fails exits), under load between two
  // samples.
  TaskSpec spec = Shell("(b() { sleep 987651 & b & b; }; b) & exec sleep 987651");
  spec.limits.pids = 24;
  spec.limits.cpus = 0.5;
  spec.timeout = 2s;
  RunResult r = iso.Run(spec, rec, {});
  CHECK(r.kind == Kind::kTimedOut);
  int64_t max_pids = 0;
  for (const UsageSample& s : rec.samples()) max_pids = std::max(max_pids, s.pids);
  CHECK(max_pids <= 24);
  CHECK(max_pids >= 10);
  CHECK_THAT(rec.err(), Catch::Contains("fork"));
  CHECK(ProcessesWith(kMarker).empty());
  CHECK(NoChildren());
}

TEST_CASE("a task that runs past its timeout is timed out", "[process][timeout]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder rec;
  TaskSpec spec = Spec({"sleep", "987652"});
  spec.timeout = 300ms;
  auto t0 = std::chrono::steady_clock::now();
  RunResult r = iso.Run(spec, rec, {});
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(r.kind == Kind::kTimedOut);
  CHECK(r.error_code == "timed_out");
  CHECK(took >= 300ms);
  CHECK(took < 2s);
  CHECK(ProcessesWith("987652").empty());
}

TEST_CASE("a task that ignores SIGTERM is killed after the grace period", "[process][timeout]") {
  testing::TempDir dir;
  ProcessIsolatorOptions o = Options(dir);
  o.stop_grace = 500ms;
  ProcessIsolator iso(o);
  Recorder rec;
  TaskSpec spec = Shell("trap '' TERM; echo ready; while :; do sleep 0.05; done");
  spec.timeout = 200ms;
  auto t0 = std::chrono::steady_clock::now();
  RunResult r = iso.Run(spec, rec, {});
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(r.kind == Kind::kTimedOut);
  CHECK(took >= 700ms);
  CHECK(took < 3s);
  CHECK(ProcessesWith(kMarker).empty());
}

TEST_CASE("cancel kills background grandchildren that left the process group",
          "[process][cancel]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder rec;
  std::stop_source stop;
  // One grandchild in its own session, one double-forked (reparented to init).
  TaskSpec spec = Shell("setsid sleep 987653 & (sleep 987654 &); sleep 987655");
  std::thread canceller([&] {
    bool up = testing::WaitFor(
        [] {
          // Each number is also in the shell's own command line.
          return ProcessesWith("987653").size() >= 2 && ProcessesWith("987654").size() >= 2 &&
                 ProcessesWith("987655").size() >= 2;
        },
        5s);
    CHECK(up);
    stop.request_stop();
  });
  RunResult r = iso.Run(spec, rec, stop.get_token());
  canceller.join();
  CHECK(r.kind == Kind::kStopped);
  CHECK(ProcessesWith("987653").empty());
  CHECK(ProcessesWith("987654").empty());
  CHECK(ProcessesWith("987655").empty());
  CHECK(NoChildren());
}

TEST_CASE("what a task leaves running in the background dies when it exits", "[process][cancel]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder rec;
  RunResult r = iso.Run(Shell("setsid sleep 987656 & echo started"), rec, {});
  CHECK(r.kind == Kind::kExited);
  CHECK(r.exit_code == 0);
  CHECK(rec.out() == "started\n");
  CHECK(ProcessesWith("987656").empty());
}

TEST_CASE("usage is sampled while a task runs and totalled at the end", "[process][usage]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Recorder rec;
  TaskSpec spec = Shell("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done");
  spec.limits.cpus = 1;
  RunResult r = iso.Run(spec, rec, {});
  REQUIRE(r.kind == Kind::kExited);
  CHECK(r.usage.cpu_seconds > 0.05);
  CHECK(r.usage.cpu_seconds <= r.usage.duration * 1.1);
  CHECK(r.usage.peak_memory > 0);
  auto samples = rec.samples();
  REQUIRE_FALSE(samples.empty());
  CHECK(samples.back().cpu_seconds > 0);
  CHECK(samples.back().memory > 0);
  CHECK(samples.back().pids >= 1);
}

TEST_CASE("tasks without limits reuse a cgroup and count only their own CPU time",
          "[process][usage][cgroup]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  REQUIRE_FALSE(iso.cgroups().empty());
  auto cgroup_of_task = [&](TaskSpec spec, RunResult& r) {
    Recorder rec;
    r = iso.Run(spec, rec, {});
    iso.WaitForCleanup();  // the cgroup is back among the spares
    return Trim(rec.out());
  };
  // A busy task, then an idle one in the cgroup it leaves behind.
  RunResult busy, idle, limited;
  std::string first = cgroup_of_task(
      Shell("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; tail -n1 /proc/self/cgroup"), busy);
  std::string second = cgroup_of_task(Shell("tail -n1 /proc/self/cgroup"), idle);
  REQUIRE(busy.kind == Kind::kExited);
  REQUIRE(idle.kind == Kind::kExited);
  CHECK(busy.usage.cpu_seconds > 0.05);
  CHECK(idle.usage.cpu_seconds < 0.05);  // not the busy task's seconds again
  CHECK(first.find("slot-") != std::string::npos);
  CHECK(first == second);
  // A task with a limit gets a cgroup of its own, named after it.
  TaskSpec with_limit = Shell("tail -n1 /proc/self/cgroup");
  with_limit.limits.memory = 64 << 20;
  std::string third = cgroup_of_task(with_limit, limited);
  CHECK(limited.kind == Kind::kExited);
  CHECK(third.find(with_limit.task_id) != std::string::npos);
}

TEST_CASE("each over-limit action is carried out", "[process][overlimit]") {
  testing::TempDir dir;
  ProcessIsolatorOptions o = Options(dir);
  o.over_limit.soft_fraction = 0.5;
  // Holds a 48 MiB buffer (over half of 64 MiB) for as long as it runs.
  TaskSpec spec = Spec({"dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=100000000"});
  spec.limits.memory = 64 << 20;
  spec.timeout = 20s;
  Recorder rec;
  std::stop_source stop;

  SECTION("warn reports it and lets the task run") {
    o.over_limit.action = OverLimitAction::kWarn;
    ProcessIsolator iso(o);
    std::thread t([&] {
      CHECK(testing::WaitFor([&] { return !rec.overs().empty(); }, 10s));
      std::this_thread::sleep_for(300ms);  // still running after the warning
      stop.request_stop();
    });
    RunResult r = iso.Run(spec, rec, stop.get_token());
    t.join();
    CHECK(r.kind == Kind::kStopped);
    auto overs = rec.overs();
    REQUIRE(overs.size() == 1);
    CHECK(overs[0].resource == "memory");
    CHECK(overs[0].action == OverLimitAction::kWarn);
    CHECK_THAT(overs[0].message, Catch::Contains("over the soft limit"));
  }
  SECTION("throttle lowers the task's CPU quota") {
    o.over_limit.action = OverLimitAction::kThrottle;
    spec.limits.cpus = 1;
    ProcessIsolator iso(o);
    std::string quota;
    std::thread t([&] {
      CHECK(testing::WaitFor([&] { return !rec.overs().empty(); }, 10s));
      fs::path cg = CpuCgroupOf(std::atoi(rec.handle().c_str()));
      std::ifstream in(cg / "cpu.cfs_quota_us");
      std::getline(in, quota);
      stop.request_stop();
    });
    RunResult r = iso.Run(spec, rec, stop.get_token());
    t.join();
    CHECK(r.kind == Kind::kStopped);
    auto overs = rec.overs();
    REQUIRE_FALSE(overs.empty());
    CHECK(overs[0].action == OverLimitAction::kThrottle);
    CHECK_THAT(overs[0].message, Catch::Contains("CPU quota lowered from 1.00 to 0.50"));
    INFO("quota=" << quota);
    CHECK(!quota.empty());
    CHECK(std::atoi(quota.c_str()) > 0);
    CHECK(std::atoi(quota.c_str()) <= 50000);
  }
  SECTION("kill ends the task as over_limit") {
    o.over_limit.action = OverLimitAction::kKill;
    ProcessIsolator iso(o);
    RunResult r = iso.Run(spec, rec, {});
    CHECK(r.kind == Kind::kOverLimit);
    CHECK(r.error_code == "over_limit");
    CHECK_THAT(r.message, Catch::Contains("memory"));
    auto overs = rec.overs();
    REQUIRE(overs.size() == 1);
    CHECK(overs[0].action == OverLimitAction::kKill);
  }
}

TEST_CASE("many tasks run at once each see only their own output", "[process][concurrency]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  constexpr int kTasks = 8;
  std::vector<std::thread> threads;
  std::vector<std::string> outs(kTasks);
  std::vector<int> codes(kTasks, -1);
  for (int i = 0; i < kTasks; ++i) {
    threads.emplace_back([&, i] {
      Recorder rec;
      TaskSpec spec = Shell("for j in 1 2 3; do echo task-" + std::to_string(i) +
                            "-$j; done; exit " + std::to_string(i));
      spec.limits.memory = 64 << 20;
      RunResult r = iso.Run(spec, rec, {});
      outs[static_cast<size_t>(i)] = rec.out();
      codes[static_cast<size_t>(i)] = r.exit_code;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kTasks; ++i) {
    std::string s = std::to_string(i);
    CHECK(outs[static_cast<size_t>(i)] == "task-" + s + "-1\ntask-" + s + "-2\ntask-" + s + "-3\n");
    CHECK(codes[static_cast<size_t>(i)] == i);
  }
  CHECK(NoTaskDirs(iso, dir.path() / "work"));
}

TEST_CASE("without cgroups a task still runs, times out and is cleaned up", "[process][nocgroup]") {
  testing::TempDir dir;
  ProcessIsolatorOptions o = Options(dir);
  o.use_cgroups = false;
  ProcessIsolator iso(o);
  CHECK(iso.cgroups().empty());
  Recorder rec;
  RunResult ok = iso.Run(Shell("echo hi; exit 4"), rec, {});
  CHECK(ok.kind == Kind::kExited);
  CHECK(ok.exit_code == 4);
  CHECK(rec.out() == "hi\n");
  CHECK(ok.usage.peak_memory > 0);

  // The address-space floor stops a memory hog when no cgroup can.
  Recorder hog_rec;
  TaskSpec hog = Spec({"dd", "if=/dev/zero", "of=/dev/null", "bs=1G", "count=1"});
  hog.limits.memory = 32 << 20;
  RunResult hog_r = iso.Run(hog, hog_rec, {});
  CHECK(hog_r.kind == Kind::kExited);
  CHECK(hog_r.exit_code != 0);
  CHECK_THAT(hog_rec.err(), Catch::Contains("memory"));

  Recorder slow_rec;
  TaskSpec slow = Shell("sleep 987657");
  slow.timeout = 200ms;
  RunResult slow_r = iso.Run(slow, slow_rec, {});
  CHECK(slow_r.kind == Kind::kTimedOut);
  CHECK(ProcessesWith("987657").empty());
  CHECK(NoTaskDirs(iso, dir.path() / "work"));
}

// Keep last: the whole suite leaves no process, zombie, cgroup or mount behind.
TEST_CASE(
    "a node's start removes the cgroups that killed nodes left, and kills what ran on in them",
    "[process][cgroup][stale]") {
  testing::TempDir dir;
  std::vector<fs::path> parents;
  {
    ProcessIsolator first(Options(dir));
    REQUIRE_FALSE(first.cgroups().empty());
    for (const auto& h : first.cgroups().hierarchies()) parents.push_back(h.parent);
  }
  auto sleeper = [] {
    const pid_t p = ::fork();
    if (p == 0) {
      ::pause();
      ::_exit(0);
    }
    return p;
  };
  // A pid that is gone (a reaped child), one that is alive (a sleeping child).
  const pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  ::waitpid(gone, nullptr, 0);
  const pid_t alive = sleeper();
  const std::string dead = std::to_string(gone);
  const std::vector<std::string> stale = {"slot-" + dead + "-1", "01TASK-2-" + dead + "-7"};
  const std::vector<std::string> kept = {"slot-" + std::to_string(alive) + "-1",
                                         "slot-" + std::to_string(::getpid()) + "-999",
                                         "not-a-task-cgroup"};
  for (const auto& p : parents) {
    for (const auto& n : stale) fs::create_directory(p / n);
    for (const auto& n : kept) fs::create_directory(p / n);
  }
  // A task of the dead runner whose child outlived it, still running.
  const std::string orphaned = "01ORPHAN-1-" + dead + "-3";
  const pid_t orphan = sleeper();
  for (const auto& p : parents) {
    fs::create_directory(p / orphaned);
    std::ofstream(p / orphaned / "cgroup.procs") << orphan << "\n";
  }

  {
    ProcessIsolator next(Options(dir));  // what a restarted node does
    for (const auto& p : parents) {
      INFO(p.string());
      for (const auto& n : stale) CHECK_FALSE(fs::exists(p / n));
      for (const auto& n : kept) CHECK(fs::exists(p / n));
      CHECK_FALSE(fs::exists(p / orphaned));
    }
  }
  int status = 0;
  const bool ended =
      testing::WaitFor([&] { return ::waitpid(orphan, &status, WNOHANG) == orphan; }, 5s);
  CHECK(ended);  // killed, not left running
  if (ended) {
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
  } else {
    ::kill(orphan, SIGKILL);
    ::waitpid(orphan, nullptr, 0);
    for (const auto& p : parents) ::rmdir((p / orphaned).c_str());
  }
  CHECK(::kill(alive, 0) == 0);  // a live runner's pid is never touched
  ::kill(alive, SIGKILL);
  ::waitpid(alive, nullptr, 0);
  for (const auto& p : parents) {
    for (const auto& n : kept) ::rmdir((p / n).c_str());
  }
}

TEST_CASE("no stray process, cgroup or mount is left after the suite", "[process][cleanup]") {
  CHECK(ProcessesWith(kMarker).empty());
  CHECK(ProcessesWith("98765").empty());
  CHECK(NoChildren());
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  for (const auto& h : iso.cgroups().hierarchies()) {
    INFO(h.parent.string());
    std::vector<std::string> left;
    for (const auto& e : fs::directory_iterator(h.parent)) {
      if (e.is_directory()) left.push_back(e.path().filename().string());
    }
    CHECK(left.empty());
  }
  std::ifstream mounts("/proc/mounts");
  std::string all((std::istreambuf_iterator<char>(mounts)), std::istreambuf_iterator<char>());
  CHECK(all.find("/work/it-process-") == std::string::npos);
}

}  // namespace
}  // namespace runner::isolation::process
