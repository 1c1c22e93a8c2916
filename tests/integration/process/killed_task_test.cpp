// Regression: one killed task with a child broke the node's process mode.
// Killing it wrote cgroup.kill to its limit-free cgroup, that cgroup went
// back to the spares, and the kernel then SIGKILLed every child cloned into
// it: each later task died at once with 137 and no output. Each way of
// killing a task is followed by 12 plain tasks on 4 threads that must all
// succeed.

#include <atomic>
#include <catch2/catch.hpp>
#include <mutex>
#include <stop_token>
#include <thread>
#include <vector>

#include "isolation/process/process_isolator.h"
#include "tests/support/services.h"

namespace runner::isolation::process {
namespace {

using namespace std::chrono_literals;
using Kind = RunResult::Kind;

class OutputRecorder : public Observer {
 public:
  void OnStarted(std::string_view, std::string_view) override {}
  void OnOutput(OutputStream stream, std::string_view data) override {
    std::lock_guard lock(mu_);
    if (stream == OutputStream::kStdout) out_.append(data);
  }
  void OnUsage(const UsageSample&) override {}
  void OnOverLimit(std::string_view, OverLimitAction, std::string_view) override {}
  std::string out() {
    std::lock_guard lock(mu_);
    return out_;
  }

 private:
  std::mutex mu_;
  std::string out_;
};

ProcessIsolatorOptions Options(const testing::TempDir& dir) {
  ProcessIsolatorOptions o;
  o.work_root = dir.path() / "work";
  o.cgroup_parent = "runner-it-killed";
  o.sample_interval = 100ms;
  o.stop_grace = 300ms;
  return o;
}

TaskSpec Spec(std::vector<std::string> command) {
  static std::atomic<int> n{0};
  TaskSpec spec;
  spec.task_id = "it-killed-" + std::to_string(++n);
  spec.worker_id = "w-test";
  spec.command = std::move(command);
  return spec;
}

// 12 plain tasks on 4 threads: how many printed their line and exited 0.
int PlainTasksThatSucceed(ProcessIsolator& iso) {
  std::atomic<int> ok{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&] {
      for (int i = 0; i < 3; ++i) {
        OutputRecorder rec;
        RunResult r = iso.Run(Spec({"sh", "-c", "echo plain"}), rec, {});
        if (r.kind == Kind::kExited && r.exit_code == 0 && rec.out() == "plain\n") {
          ++ok;
        } else {
          UNSCOPED_INFO("plain task: exit " << r.exit_code << " " << r.message);
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  return ok.load();
}

// Runs `spec` (a shell with a child) and stops it `stop_after` after start, if set.
RunResult RunAndKill(ProcessIsolator& iso, TaskSpec spec,
                     std::optional<std::chrono::milliseconds> stop_after) {
  OutputRecorder rec;
  std::stop_source stop;
  std::jthread canceller;
  if (stop_after) {
    canceller = std::jthread([&, after = *stop_after] {
      std::this_thread::sleep_for(after);  // the task must be running its child by then
      stop.request_stop();
    });
  }
  return iso.Run(spec, rec, stop.get_token());
}

}  // namespace

TEST_CASE("after a task with a child is cancelled, later tasks still run", "[process][killed]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  // The child outlives the SIGTERM, so the stop has to SIGKILL it.
  RunResult r = RunAndKill(iso, Spec({"sh", "-c", "trap '' TERM; sleep 3; echo x"}), 300ms);
  CHECK(r.kind == Kind::kStopped);
  iso.WaitForCleanup();
  CHECK(PlainTasksThatSucceed(iso) == 12);
}

TEST_CASE("after a task with a child times out, later tasks still run", "[process][killed]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  TaskSpec spec = Spec({"sh", "-c", "sleep 3; echo x"});
  spec.timeout = 300ms;
  RunResult r = RunAndKill(iso, spec, std::nullopt);
  CHECK(r.kind == Kind::kTimedOut);
  iso.WaitForCleanup();
  CHECK(PlainTasksThatSucceed(iso) == 12);
}

TEST_CASE("after a task that ignores SIGTERM is killed, later tasks still run",
          "[process][killed]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  TaskSpec spec = Spec({"sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"});
  spec.timeout = 300ms;
  RunResult r = RunAndKill(iso, spec, std::nullopt);
  CHECK(r.kind == Kind::kTimedOut);
  iso.WaitForCleanup();
  CHECK(PlainTasksThatSucceed(iso) == 12);
}

TEST_CASE("after four tasks with children are stopped at once, later tasks still run",
          "[process][killed]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  std::vector<std::thread> running;
  std::atomic<int> stopped{0};
  for (int i = 0; i < 4; ++i) {
    running.emplace_back([&] {
      RunResult r = RunAndKill(iso, Spec({"sh", "-c", "sleep 3; echo x"}), 300ms);
      if (r.kind == Kind::kStopped) ++stopped;
    });
  }
  for (auto& t : running) t.join();
  CHECK(stopped == 4);
  iso.WaitForCleanup();
  CHECK(PlainTasksThatSucceed(iso) == 12);
}

TEST_CASE("a task killed by a signal says which one", "[process][killed]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  OutputRecorder rec;
  RunResult r = iso.Run(Spec({"sh", "-c", "kill -KILL $$"}), rec, {});
  CHECK(r.kind == Kind::kExited);
  CHECK(r.exit_code == 137);
  CHECK(r.message == "the task was killed by SIGKILL");
  r = iso.Run(Spec({"sh", "-c", "kill -SEGV $$"}), rec, {});
  CHECK(r.exit_code == 139);
  CHECK(r.message == "the task was killed by SIGSEGV");
}

}  // namespace runner::isolation::process
