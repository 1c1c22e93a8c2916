// Tasks per second for no-op tasks (/bin/true) through ProcessIsolator::Run,
// against a bare fork/exec/wait loop of /bin/true in the same run: serial and
// 2-way parallel, several interleaved rounds, medians. Also the isolator with
// every limit set (memory, cpu and pids cgroups plus a tmpfs work dir), to show
// what limits cost. Writes JSON (--out). Not a test: nothing here asserts.
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

#include "isolation/process/process_isolator.h"

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

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
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

}  // namespace

int main(int argc, char** argv) {
  int rounds = 15;
  int tasks = 40;
  std::string out = "bench/results/process.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--tasks")) tasks = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--out")) out = argv[i + 1];
  }
  spdlog::set_level(spdlog::level::warn);
  char tmpl[] = "/tmp/runner-process-bench-XXXXXX";
  std::filesystem::path root = ::mkdtemp(tmpl);
  ProcessIsolatorOptions options;
  options.work_root = root / "work";
  options.cgroup_parent = "runner-bench";
  ProcessIsolator iso(options);

  auto run = [&](bool limited) {
    return [&, limited](int i) {
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
      RunResult r = iso.Run(spec, obs, {});
      if (r.kind != RunResult::Kind::kExited || r.exit_code != 0) {
        std::fprintf(stderr, "task failed: %s\n", r.message.c_str());
        std::abort();
      }
    };
  };

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
  json += "  \"target\": \"isolator (no limits) within 20% of the bare loop\",\n";
  for (int threads : {1, 2}) {
    std::vector<double> bare, isolator, limited, ratio, ratio_limited;
    std::vector<double> cpu_bare, cpu_iso, cpu_lim;
    Rate(20, threads, [](int) { BareTrue(); });  // warm-up
    Rate(20, threads, run(false));
    Rate(20, threads, run(true));
    auto measure = [&](const std::function<void(int)>& one, std::vector<double>& rates,
                       std::vector<double>& cpu) {
      double c0 = CpuSeconds();
      rates.push_back(Rate(tasks, threads, one));
      cpu.push_back((CpuSeconds() - c0) * 1000 / tasks);
    };
    for (int r = 0; r < rounds; ++r) {
      measure([](int) { BareTrue(); }, bare, cpu_bare);
      measure(run(false), isolator, cpu_iso);
      measure(run(true), limited, cpu_lim);
      ratio.push_back(isolator.back() / bare.back());
      ratio_limited.push_back(limited.back() / bare.back());
    }
    double b = Median(bare), s = Median(isolator), l = Median(limited);
    double q = Median(ratio), ql = Median(ratio_limited);
    std::printf(
        "%s: bare %.0f tasks/s (%.2f cpu ms/task), isolator %.0f tasks/s (%.2f cpu ms), "
        "median ratio %.0f%%; with all limits %.0f tasks/s (%.2f cpu ms), ratio %.0f%%\n",
        threads == 1 ? "serial" : "2-way parallel", b, Median(cpu_bare), s, Median(cpu_iso),
        100 * q, l, Median(cpu_lim), 100 * ql);
    char buf[1024];
    std::snprintf(buf, sizeof(buf),
                  "  \"%s\": {\n    \"bare_tasks_per_s\": %.1f,\n"
                  "    \"isolator_tasks_per_s\": %.1f,\n    \"isolator_vs_bare\": %.3f,\n"
                  "    \"isolator_all_limits_tasks_per_s\": %.1f,\n"
                  "    \"isolator_all_limits_vs_bare\": %.3f,\n"
                  "    \"bare_cpu_ms_per_task\": %.3f,\n"
                  "    \"isolator_cpu_ms_per_task\": %.3f,\n"
                  "    \"isolator_all_limits_cpu_ms_per_task\": %.3f,\n",
                  threads == 1 ? "serial" : "parallel_2", b, s, q, l, ql, Median(cpu_bare),
                  Median(cpu_iso), Median(cpu_lim));
    json += buf;
    json += "    \"blocks_bare\": " + Json(bare) + ",\n";
    json += "    \"blocks_isolator\": " + Json(isolator) + ",\n";
    json += "    \"blocks_isolator_all_limits\": " + Json(limited) + "\n  },\n";
  }
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
