// Tasks per second for no-op tasks (/bin/true) through ProcessIsolator::Run,
// with the sandbox on (the default) and off, against a bare fork/exec/wait
// loop of /bin/true in the same run: 1 and 4 threads, several interleaved
// rounds, medians. Also the sandboxed isolator with every limit set (memory,
// cpu and pids cgroups plus a tmpfs work dir), to show what limits cost, and
// where a sandboxed start's time goes (the init's phase timestamps). Writes
// JSON (--out). Not a test: nothing here asserts.
//
//   process_bench [--rounds 15] [--tasks 40] [--out bench/results/process.json]
// (--tasks is the block size: tasks per measured block.)

#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "bench/common/stats.h"
#include "isolation/process/process_isolator.h"

using runner::bench::Median;

namespace {

using runner::isolation::Observer;
using runner::isolation::OutputStream;
using runner::isolation::RunResult;
using runner::isolation::TaskSpec;
using runner::isolation::process::ProcessIsolator;
using runner::isolation::process::ProcessIsolatorOptions;
using Clock = std::chrono::steady_clock;

class NullObserver : public Observer {
 public:
  void OnOutput(OutputStream, std::string_view) override {}
};

class StderrObserver : public Observer {
 public:
  void OnOutput(OutputStream stream, std::string_view data) override {
    if (stream == OutputStream::kStderr) err.append(data);
  }
  std::string err;
};

double NowNs() {
  return static_cast<double>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
          .count());
}

extern "C" char** environ;

// One fork/exec/wait of /bin/true, the floor any isolator pays.
void BareTrue() {
  static char arg0[] = "/bin/true";
  static char* argv[] = {arg0, nullptr};
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execve(argv[0], argv, environ);
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) std::abort();
}

// Runs `one` `tasks` times split over `threads`; returns tasks per second.
double Rate(int tasks, int threads, const std::function<void(int)>& one) {
  auto t0 = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int i = t; i < tasks; i += threads) one(i);
    });
  }
  for (auto& th : pool) th.join();
  return tasks / std::chrono::duration<double>(Clock::now() - t0).count();
}

// User + system CPU seconds of this process and its reaped children.
double CpuSeconds() {
  auto secs = [](const rusage& r) {
    return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
  };
  rusage self{}, children{};
  ::getrusage(RUSAGE_SELF, &self);
  ::getrusage(RUSAGE_CHILDREN, &children);
  return secs(self) + secs(children);
}

std::string Json(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%s%.1f", i ? ", " : "", v[i]);
    s += buf;
  }
  return s + "]";
}

// Where a sandboxed start's time goes: serial tasks with the init's phase
// timestamps, medians of each step in microseconds.
std::string StartBreakdown(const std::filesystem::path& root, ProcessIsolatorOptions options,
                           int tasks, bool prebuilt) {
  options.work_root = root / (prebuilt ? "work-trace-pre" : "work-trace");
  options.sandbox.trace_phases = true;
  options.prebuilt_sandboxes = prebuilt ? 2 : 0;
  ProcessIsolator traced(options);
  std::vector<std::string> phases = {"init_started", "root_built",         "network_ready",
                                     "task_forked",  "privileges_dropped", "seccomp_loaded"};
  std::vector<std::string> steps = {
      "runner: work dir, cgroup, clone3 with namespaces, exec of the init",
      "init: mounts and pivot_root (the new root)",
      "init: hostname (and loopback when no pre-made netns)",
      "init: fork of the task",
      "task: drop uid/gid, capabilities, no_new_privs",
      "task: load the seccomp filter",
      "task: exec /bin/true, exit, namespace teardown, reap, report"};
  if (prebuilt) {
    // Built ahead: the start begins at the request.
    phases = {"request_received", "request_done", "task_forked", "privileges_dropped",
              "seccomp_loaded"};
    steps = {"runner: work dir, cgroup, take a pre-built sandbox, send the request",
             "init: join cgroups, rlimits, bind the work dir, finish the root",
             "init: fork of the task",
             "task: drop uid/gid, capabilities, no_new_privs",
             "task: load the seccomp filter",
             "task: exec /bin/true, exit, namespace teardown, reap, report"};
  }
  std::vector<std::vector<double>> us(steps.size());
  for (int i = 0; i < tasks; ++i) {
    TaskSpec spec;
    spec.task_id = "trace-" + std::to_string(i);
    spec.worker_id = "bench";
    spec.command = {"/bin/true"};
    StderrObserver obs;
    if (prebuilt) {
      // Serial starts measure a ready sandbox's path, not the wait for one.
      for (int w = 0; w < 500 && traced.PrebuiltReady() < 2; ++w) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    double t0 = NowNs();
    RunResult r = traced.Run(spec, obs, {});
    double t_end = NowNs();
    if (r.kind != RunResult::Kind::kExited || r.exit_code != 0) std::abort();
    std::vector<double> at = {t0};
    for (const std::string& phase : phases) {
      auto pos = obs.err.find("runner-task-init phase " + phase + " ");
      if (pos == std::string::npos) std::abort();
      at.push_back(std::stod(obs.err.substr(pos + 24 + phase.size())));
    }
    at.push_back(t_end);
    for (size_t s = 0; s < steps.size(); ++s) us[s].push_back((at[s + 1] - at[s]) / 1000);
  }
  std::string json = prebuilt ? "  \"prebuilt_start_breakdown_us\": {\n"
                              : "  \"sandboxed_start_breakdown_us\": {\n";
  double total = 0;
  std::printf("where a %s no-op task's time goes (median of %d serial tasks):\n",
              prebuilt ? "pre-built sandbox's" : "sandboxed", tasks);
  for (size_t s = 0; s < steps.size(); ++s) {
    double m = Median(us[s]);
    total += m;
    std::printf("  %7.0f us  %s\n", m, steps[s].c_str());
    char buf[256];
    std::snprintf(buf, sizeof(buf), "    \"%s\": %.0f,\n", steps[s].c_str(), m);
    json += buf;
  }
  std::printf("  %7.0f us  total\n", total);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "    \"total\": %.0f\n  },\n", total);
  json += buf;
  traced.WaitForCleanup();
  return json;
}

// A no-op task on `which`, with every limit when `limited`; aborts the bench
// when it fails.
std::function<void(int)> RunOn(ProcessIsolator& which, bool limited) {
  return [&which, limited](int i) {
    TaskSpec spec;
    spec.task_id = "bench-" + std::to_string(i) + (limited ? "-l" : "");
    spec.worker_id = "bench";
    spec.command = {"/bin/true"};
    if (limited) {
      spec.limits.memory = 64 << 20;
      spec.limits.cpus = 1;
      spec.limits.pids = 64;
      spec.limits.disk = 16 << 20;
    }
    NullObserver obs;
    RunResult r = which.Run(spec, obs, {});
    if (r.kind != RunResult::Kind::kExited || r.exit_code != 0) {
      std::fprintf(stderr, "task failed: %s\n", r.message.c_str());
      std::abort();
    }
  };
}

// Every path at `threads` threads over `rounds` blocks of `tasks`: the
// printed lines, and the JSON member for that thread count.
std::string MeasureThreads(int threads, int rounds, int tasks, const std::filesystem::path& root,
                           const ProcessIsolatorOptions& options, ProcessIsolator& iso,
                           ProcessIsolator& iso_off) {
  const auto run_on = RunOn;
  std::string out;
  std::vector<double> bare, isolator, off, limited, ratio, ratio_off, ratio_limited, on_vs_off;
  std::vector<double> cpu_bare, cpu_iso, cpu_off, cpu_lim;
  std::vector<double> pre, pre_limited, cpu_pre, cpu_pre_lim, pre_vs_off, pre_lim_vs_off;
  // Pre-built sandboxes, as a node of `threads` workers keeps them (one
  // per worker and one more).
  ProcessIsolatorOptions pre_options = options;
  pre_options.work_root = root / ("work-pre-" + std::to_string(threads));
  pre_options.prebuilt_sandboxes = static_cast<size_t>(threads) + 1;
  ProcessIsolator iso_pre(pre_options);
  auto run = [&](bool limited_run) { return run_on(iso, limited_run); };
  Rate(20, threads, [](int) { BareTrue(); });  // warm-up
  Rate(20, threads, run(false));
  Rate(20, threads, run_on(iso_off, false));
  Rate(20, threads, run(true));
  Rate(20, threads, run_on(iso_pre, false));
  Rate(20, threads, run_on(iso_pre, true));
  auto measure = [&](const std::function<void(int)>& one, std::vector<double>& rates,
                     std::vector<double>& cpu) {
    double c0 = CpuSeconds();
    rates.push_back(Rate(tasks, threads, one));
    cpu.push_back((CpuSeconds() - c0) * 1000 / tasks);
  };
  for (int r = 0; r < rounds; ++r) {
    measure([](int) { BareTrue(); }, bare, cpu_bare);
    measure(run_on(iso_off, false), off, cpu_off);
    measure(run(false), isolator, cpu_iso);
    measure(run(true), limited, cpu_lim);
    measure(run_on(iso_pre, false), pre, cpu_pre);
    measure(run_on(iso_pre, true), pre_limited, cpu_pre_lim);
    pre_vs_off.push_back(pre.back() / off.back());
    pre_lim_vs_off.push_back(pre_limited.back() / off.back());
    ratio.push_back(isolator.back() / bare.back());
    ratio_off.push_back(off.back() / bare.back());
    ratio_limited.push_back(limited.back() / bare.back());
    on_vs_off.push_back(isolator.back() / off.back());
  }
  double b = Median(bare), s = Median(isolator), l = Median(limited), o = Median(off);
  double q = Median(ratio), ql = Median(ratio_limited), qo = Median(on_vs_off);
  std::printf(
      "%d thread(s): bare %.0f tasks/s (%.2f cpu ms/task); sandbox off %.0f tasks/s (%.2f cpu "
      "ms); sandbox on %.0f tasks/s (%.2f cpu ms), %.0f%% of off (median of pairs); on with "
      "all limits %.0f tasks/s (%.2f cpu ms)\n",
      threads, b, Median(cpu_bare), o, Median(cpu_off), s, Median(cpu_iso), 100 * qo, l,
      Median(cpu_lim));
  std::printf(
      "%d thread(s): pre-built sandboxes %.0f tasks/s (%.2f cpu ms), %.0f%% of off (median of "
      "pairs); pre-built with all limits %.0f tasks/s (%.2f cpu ms), %.0f%% of off\n",
      threads, Median(pre), Median(cpu_pre), 100 * Median(pre_vs_off), Median(pre_limited),
      Median(cpu_pre_lim), 100 * Median(pre_lim_vs_off));
  char buf[1024];
  std::snprintf(buf, sizeof(buf),
                "  \"%s\": {\n    \"bare_tasks_per_s\": %.1f,\n"
                "    \"sandbox_off_tasks_per_s\": %.1f,\n"
                "    \"sandbox_on_vs_off\": %.3f,\n"
                "    \"sandbox_off_vs_bare\": %.3f,\n"
                "    \"sandbox_off_cpu_ms_per_task\": %.3f,\n"
                "    \"isolator_tasks_per_s\": %.1f,\n    \"isolator_vs_bare\": %.3f,\n"
                "    \"isolator_all_limits_tasks_per_s\": %.1f,\n"
                "    \"isolator_all_limits_vs_bare\": %.3f,\n"
                "    \"bare_cpu_ms_per_task\": %.3f,\n"
                "    \"isolator_cpu_ms_per_task\": %.3f,\n"
                "    \"isolator_all_limits_cpu_ms_per_task\": %.3f,\n",
                threads == 1 ? "serial" : "parallel_4", b, o, qo, Median(ratio_off),
                Median(cpu_off), s, q, l, ql, Median(cpu_bare), Median(cpu_iso), Median(cpu_lim));
  out += buf;
  std::snprintf(buf, sizeof(buf),
                "    \"prebuilt_sandboxes\": %d,\n"
                "    \"prebuilt_tasks_per_s\": %.1f,\n"
                "    \"prebuilt_vs_sandbox_off\": %.3f,\n"
                "    \"prebuilt_cpu_ms_per_task\": %.3f,\n"
                "    \"prebuilt_all_limits_tasks_per_s\": %.1f,\n"
                "    \"prebuilt_all_limits_vs_sandbox_off\": %.3f,\n"
                "    \"prebuilt_all_limits_cpu_ms_per_task\": %.3f,\n",
                threads + 1, Median(pre), Median(pre_vs_off), Median(cpu_pre), Median(pre_limited),
                Median(pre_lim_vs_off), Median(cpu_pre_lim));
  out += buf;
  out += "    \"blocks_prebuilt\": " + Json(pre) + ",\n";
  out += "    \"blocks_prebuilt_all_limits\": " + Json(pre_limited) + ",\n";
  out += "    \"blocks_bare\": " + Json(bare) + ",\n";
  out += "    \"blocks_sandbox_off\": " + Json(off) + ",\n";
  out += "    \"blocks_isolator\": " + Json(isolator) + ",\n";
  out += "    \"blocks_isolator_all_limits\": " + Json(limited) + "\n  },\n";
  iso_pre.WaitForCleanup();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 15;
  int tasks = 40;
  std::string out = "bench/results/process.json";
  // An unknown or incomplete flag stops here: `--help` once ran the whole
  // benchmark and overwrote bench/results/process.json.
  for (int i = 1; i < argc; i += 2) {
    bool known = !std::strcmp(argv[i], "--rounds") || !std::strcmp(argv[i], "--tasks") ||
                 !std::strcmp(argv[i], "--out");
    if (!known || i + 1 >= argc) {
      std::fprintf(stderr, "usage: %s [--rounds N] [--tasks N] [--out FILE]\n", argv[0]);
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
    if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--tasks")) tasks = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--out")) out = argv[i + 1];
  }
  if (rounds < 1 || tasks < 1) {
    std::fprintf(stderr, "--rounds and --tasks take a positive number\n");
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);
  char tmpl[] = "/tmp/runner-process-bench-XXXXXX";
  std::filesystem::path root = ::mkdtemp(tmpl);
  ProcessIsolatorOptions options;
  options.work_root = root / "work";
  options.cgroup_parent = "runner-bench";
  ProcessIsolator iso(options);  // sandbox on
  ProcessIsolatorOptions off_options = options;
  off_options.work_root = root / "work-off";
  off_options.sandbox.enabled = false;
  ProcessIsolator iso_off(off_options);
  if (!iso.sandbox().usable()) {
    std::fprintf(stderr, "the sandbox is unavailable: %s\n",
                 iso.sandbox().unavailable_reason().c_str());
    return 1;
  }

  std::string json = "{\n  \"benchmark\": \"process isolator, no-op tasks (/bin/true)\",\n";
  json +=
      "  \"method\": \"blocks of tasks_per_block tasks, bare / isolator / isolator with all "
      "limits in turn, rounds blocks each; medians of per-block tasks/s and of the per-block "
      "isolator/bare ratio (pairs adjacent blocks, so load drift on a shared host cancels); "
      "cpu_ms_per_task is user+sys of the bench and its children\",\n";
  json += "  \"cpus\": " + std::to_string(std::thread::hardware_concurrency()) + ",\n";
  json += "  \"rounds\": " + std::to_string(rounds) + ",\n";
  json += "  \"tasks_per_block\": " + std::to_string(tasks) + ",\n";
  json += "  \"cgroups\": \"" + iso.cgroups().Describe() + "\",\n";
  json += "  \"sandbox\": \"" + iso.sandbox().Describe() + "\",\n";
  json += "  \"target\": \"sandboxed isolator >= 70% of the unsandboxed one at 1 thread\",\n";
  for (int threads : {1, 4})
    json += MeasureThreads(threads, rounds, tasks, root, options, iso, iso_off);
  json += StartBreakdown(root, options, tasks * 2, false);
  json += StartBreakdown(root, options, tasks * 2, true);
  std::time_t now = std::time(nullptr);
  char when[64];
  std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  json += std::string("  \"generated_at\": \"") + when + "\"\n}\n";
  std::filesystem::create_directories(std::filesystem::path(out).parent_path());
  std::ofstream(out) << json;
  iso.WaitForCleanup();  // the last tasks' work dirs (tmpfs mounts) go first
  std::filesystem::remove_all(root);
  std::printf("written %s\n", out.c_str());
  return 0;
}
