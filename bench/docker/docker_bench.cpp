// Per-task overhead of DockerIsolator::Run, cold and warm (issue #21: warm
// containers), against the raw Engine API loop (create, wait registered,
// start, wait, remove) with the same image, command (`true`) and container
// config, at the same concurrency, in the same run. Rounds rotate raw / cold /
// warm so daemon drift hits all alike. Also: host CPU per task (every process
// on the host: dockerd, containerd, runc, this one), counted until the path's
// cleanup and refill are done, and the idle CPU of this process while it
// holds --idle-warm ready warm containers. Prints a summary and writes JSON
// (see bench/docker/run).

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/common/stats.h"
#include "bench/docker/raw_engine_loop.h"
#include "isolation/docker/docker_isolator.h"
#include "isolation/docker/warm_pool.h"

namespace {

using runner::bench::Round;
using runner::bench::RunConcurrently;
using runner::isolation::RunResult;
using runner::isolation::TaskSpec;
using runner::isolation::docker::DockerIsolator;
using runner::isolation::docker::DockerIsolatorOptions;
namespace json = boost::json;

struct NullObserver : runner::isolation::Observer {
  void OnOutput(runner::isolation::OutputStream, std::string_view) override {}
};

std::string RandomHex(int n) {
  static std::mt19937_64 rng{std::random_device{}()};
  std::string s;
  for (int i = 0; i < n; ++i) s += "0123456789abcdef"[rng() % 16];
  return s;
}

using runner::bench::Median;
using runner::bench::Percentile;

// Busy jiffies of the whole host (every CPU), from /proc/stat.
double HostBusySeconds() {
  std::ifstream f("/proc/stat");
  std::string cpu;
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  f >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  return (user + nice + system + irq + softirq + steal) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU seconds of this process (user + system), from /proc/self/stat.
double SelfCpuSeconds() {
  std::ifstream f("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto close = text.rfind(')');
  std::istringstream rest(text.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15; ++i) {
    rest >> field;
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

bool WaitWarmFull(DockerIsolator& iso, std::chrono::seconds within) {
  const auto until = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < until) {
    auto w = iso.WarmStatus();
    if (w && w->ready >= w->target) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

double LoadAverage() {
  std::ifstream f("/proc/loadavg");
  double one = -1;
  f >> one;
  return one;
}

// The command line (bench/docker/README.md).
struct Args {
  std::string out = "bench/results/docker.json";
  std::string host = "unix:///var/run/docker.sock";
  int rounds = 5;
  int tasks = 12;
  int idle_warm = 100;
  int idle_seconds = 30;
  // The warm path's wait for a container being started (DockerIsolatorOptions::
  // warm_wait) and refill lanes; --alt-wait adds a fourth path, "warm-alt",
  // with that wait instead, to compare both in the same rounds.
  int warm_wait_ms = -1;  // -1: the isolator's default
  int warm_lanes = -1;
  int alt_wait_ms = -1;
  std::vector<int> levels{1, 4, 16};
  bool debug = false;  // --debug: the isolator's phase log (where each task's time goes)
};

Args ParseArgs(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--debug") {
      args.debug = true;
      continue;
    }
    if (i + 1 >= argc) break;
    const std::string v = argv[++i];
    if (a == "--out") args.out = v;
    if (a == "--docker-host") args.host = v;
    if (a == "--rounds") args.rounds = std::stoi(v);
    if (a == "--tasks") args.tasks = std::stoi(v);
    if (a == "--idle-warm") args.idle_warm = std::stoi(v);
    if (a == "--idle-seconds") args.idle_seconds = std::stoi(v);
    if (a == "--warm-wait") args.warm_wait_ms = std::stoi(v);
    if (a == "--warm-lanes") args.warm_lanes = std::stoi(v);
    if (a == "--alt-wait") args.alt_wait_ms = std::stoi(v);
    if (a == "--levels") {
      args.levels.clear();
      std::stringstream ss(v);
      std::string n;
      while (std::getline(ss, n, ',')) args.levels.push_back(std::stoi(n));
    }
  }
  return args;
}

// What every phase runs on: the cold isolator and `true` tasks of this node.
struct Bench {
  const Args& args;
  std::string node;
  DockerIsolatorOptions options;
  DockerIsolator& isolator;

  TaskSpec MakeSpec() const {
    TaskSpec spec;
    spec.task_id = "bench-" + RandomHex(10);
    spec.worker_id = "bench";
    spec.node_id = node;
    spec.image = "runner-task:latest";
    spec.command = {"true"};
    return spec;
  }
  bool RunOn(DockerIsolator& iso) const {
    NullObserver obs;
    RunResult r = iso.Run(MakeSpec(), obs, {});
    return r.kind == RunResult::Kind::kExited && r.exit_code == 0;
  }
  // The raw loop: the same container config, the minimum calls.
  bool RawTask() const {
    return runner::bench::RawEngineTask(isolator.client(), options, MakeSpec());
  }
};

// Per-task overhead of sequential tasks (cold, warm, raw); nullopt when the
// warm pool did not fill.
std::optional<json::object> Sequential(const Bench& b) {
  // Per-task overhead, sequential tasks each started on an idle path (the
  // warm pool full, no removal pending): what one task costs from the
  // isolator taking it to its result, cold vs warm vs the raw loop.
  json::object sequential;
  {
    DockerIsolatorOptions warm_options = b.options;
    warm_options.warm_per_image = 1;  // the default for 1 worker
    warm_options.warm_images = {"runner-task:latest"};
    DockerIsolator warm(warm_options);
    if (!warm.StartWarmPool() || !WaitWarmFull(warm, std::chrono::seconds(120))) {
      std::cerr << "the warm pool did not fill\n";
      return std::nullopt;
    }
    b.RunOn(warm);
    std::vector<double> lat[3];
    int fail[3] = {0, 0, 0};
    const uint64_t hits0 = warm.WarmStatus()->hits;
    const int n = b.args.rounds * b.args.tasks;
    for (int i = 0; i < n; ++i) {
      for (int k = 0; k < 3; ++k) {
        const int path = (i + k) % 3;
        b.isolator.WaitForCleanup();
        warm.WaitForCleanup();
        WaitWarmFull(warm, std::chrono::seconds(120));
        const auto t0 = std::chrono::steady_clock::now();
        const bool ok = path == 0 ? b.RawTask() : path == 1 ? b.RunOn(b.isolator) : b.RunOn(warm);
        lat[path].push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
        if (!ok) ++fail[path];
      }
    }
    const uint64_t hits = warm.WarmStatus()->hits - hits0;
    std::printf(
        "sequential, idle path, %d tasks each: raw median %.1f ms (p90 %.1f) | cold %.1f ms "
        "(p90 %.1f) | warm %.1f ms (p90 %.1f, %llu of %d hits) | warm/cold %.2fx\n",
        n, Median(lat[0]), Percentile(lat[0], 0.9), Median(lat[1]), Percentile(lat[1], 0.9),
        Median(lat[2]), Percentile(lat[2], 0.9), static_cast<unsigned long long>(hits), n,
        Median(lat[2]) / Median(lat[1]));
    sequential = json::object{
        {"tasks", n},
        {"raw", json::object{{"median_ms", Median(lat[0])},
                             {"p90_ms", Percentile(lat[0], 0.9)},
                             {"failures", fail[0]}}},
        {"cold", json::object{{"median_ms", Median(lat[1])},
                              {"p90_ms", Percentile(lat[1], 0.9)},
                              {"failures", fail[1]}}},
        {"warm", json::object{{"median_ms", Median(lat[2])},
                              {"p90_ms", Percentile(lat[2], 0.9)},
                              {"failures", fail[2]},
                              {"hits", hits}}},
        {"warm_over_cold_median", Median(lat[2]) / Median(lat[1])},
        {"load_average_1m_after", LoadAverage()},
    };
    warm.StopWarmPool();
  }

  return sequential;
}

// Latency and throughput at each concurrency level, every path in every
// round; nullopt when a warm pool did not fill.
std::optional<json::array> Concurrency(const Bench& b) {
  json::array results;
  for (int concurrency : b.args.levels) {
    // The default of `runner serve`: one warm container per worker, plus one.
    DockerIsolatorOptions warm_options = b.options;
    warm_options.warm_per_image = concurrency + 1;
    warm_options.warm_images = {"runner-task:latest"};
    DockerIsolator warm(warm_options);
    DockerIsolatorOptions alt_options = warm_options;
    if (b.args.alt_wait_ms >= 0)
      alt_options.warm_wait = std::chrono::milliseconds(b.args.alt_wait_ms);
    DockerIsolator alt(alt_options);
    const int npaths = b.args.alt_wait_ms >= 0 ? 4 : 3;
    if (!warm.StartWarmPool() || !WaitWarmFull(warm, std::chrono::seconds(120)) ||
        (npaths == 4 && (!alt.StartWarmPool() || !WaitWarmFull(alt, std::chrono::seconds(120))))) {
      std::cerr << "the warm pool did not fill\n";
      return std::nullopt;
    }
    b.RunOn(warm);  // warm-up of the warm path
    if (npaths == 4) b.RunOn(alt);

    enum Path { kRaw = 0, kCold = 1, kWarm = 2, kAlt = 3 };
    const char* names[] = {"raw", "cold", "warm", "warm-alt"};
    std::vector<double> lat[4], tput[4], cpu_ms[4], warm_vs_cold;
    int fail[4] = {0, 0, 0, 0};
    uint64_t hits_before = warm.WarmStatus()->hits, misses_before = warm.WarmStatus()->misses;
    uint64_t alt_hits0 = alt.WarmStatus() ? alt.WarmStatus()->hits : 0;
    uint64_t alt_misses0 = alt.WarmStatus() ? alt.WarmStatus()->misses : 0;
    for (int r = 0; r < b.args.rounds; ++r) {
      double round_median[4] = {0, 0, 0, 0};
      for (int k = 0; k < npaths; ++k) {
        const int path = (r + k) % npaths;  // rotate which goes first
        DockerIsolator& pool = path == kAlt ? alt : warm;
        // Every path starts idle: the warm pool full, no removal pending.
        if (path >= kWarm && !WaitWarmFull(pool, std::chrono::seconds(120))) {
          std::cerr << "the warm pool did not refill\n";
        }
        b.isolator.WaitForCleanup();
        warm.WaitForCleanup();
        alt.WaitForCleanup();
        const double busy0 = HostBusySeconds();
        Round round =
            path == kRaw ? RunConcurrently(concurrency, b.args.tasks, [&] { return b.RawTask(); })
            : path == kCold
                ? RunConcurrently(concurrency, b.args.tasks, [&] { return b.RunOn(b.isolator); })
                : RunConcurrently(concurrency, b.args.tasks, [&] { return b.RunOn(pool); });
        // The work a path leaves behind is its cost too: removals, and the
        // warm path's replacements.
        b.isolator.WaitForCleanup();
        pool.WaitForCleanup();
        if (path >= kWarm) WaitWarmFull(pool, std::chrono::seconds(120));
        const double busy = HostBusySeconds() - busy0;
        round_median[path] = Median(round.latencies_ms);
        lat[path].insert(lat[path].end(), round.latencies_ms.begin(), round.latencies_ms.end());
        tput[path].push_back(static_cast<double>(b.args.tasks) / round.wall_s);
        cpu_ms[path].push_back(busy * 1000 / b.args.tasks);
        fail[path] += round.failures;
      }
      warm_vs_cold.push_back(round_median[kWarm] / round_median[kCold]);
    }
    auto w = *warm.WarmStatus();
    const double hits = static_cast<double>(w.hits - hits_before);
    const double misses = static_cast<double>(w.misses - misses_before);
    json::object row{{"concurrency", concurrency},
                     {"rounds", b.args.rounds},
                     {"tasks_per_round", b.args.tasks},
                     {"warm_containers", concurrency}};
    for (int p = 0; p < npaths; ++p) {
      std::printf(
          "concurrency %2d %-4s: median %6.1f ms (p90 %6.1f) | %5.2f tasks/s | host CPU %5.1f "
          "ms/task | failures %d\n",
          concurrency, names[p], Median(lat[p]), Percentile(lat[p], 0.9), Median(tput[p]),
          Median(cpu_ms[p]), fail[p]);
      row[names[p]] = json::object{{"median_ms", Median(lat[p])},
                                   {"p90_ms", Percentile(lat[p], 0.9)},
                                   {"median_tasks_per_s", Median(tput[p])},
                                   {"host_cpu_ms_per_task", Median(cpu_ms[p])},
                                   {"failures", fail[p]}};
    }
    const double ratio = Median(lat[kWarm]) / Median(lat[kCold]);
    const double tput_ratio = Median(tput[kWarm]) / Median(tput[kCold]);
    std::printf(
        "concurrency %2d: warm/cold median latency %.2fx (paired rounds %.2fx), warm/cold "
        "throughput %.2fx, warm/raw throughput %.2fx, warm hit rate %.0f%%\n",
        concurrency, ratio, Median(warm_vs_cold), tput_ratio,
        Median(tput[kWarm]) / Median(tput[kRaw]), 100 * hits / std::max(1.0, hits + misses));
    row["warm_over_cold_median_latency"] = ratio;
    row["warm_over_cold_paired_rounds"] = Median(warm_vs_cold);
    row["warm_over_cold_throughput"] = tput_ratio;
    row["cold_over_raw_throughput"] = Median(tput[kCold]) / Median(tput[kRaw]);
    row["warm_over_raw_throughput"] = Median(tput[kWarm]) / Median(tput[kRaw]);
    row["warm_hit_rate"] = hits / std::max(1.0, hits + misses);
    if (npaths == 4) {
      auto a = *alt.WarmStatus();
      const double ah = static_cast<double>(a.hits - alt_hits0);
      const double am = static_cast<double>(a.misses - alt_misses0);
      std::printf(
          "concurrency %2d: warm-alt (wait %d ms)/cold throughput %.2fx, median latency %.2fx, "
          "hit rate %.0f%%\n",
          concurrency, b.args.alt_wait_ms, Median(tput[kAlt]) / Median(tput[kCold]),
          Median(lat[kAlt]) / Median(lat[kCold]), 100 * ah / std::max(1.0, ah + am));
      row["warm_alt_wait_ms"] = b.args.alt_wait_ms;
      row["warm_alt_over_cold_throughput"] = Median(tput[kAlt]) / Median(tput[kCold]);
      row["warm_alt_hit_rate"] = ah / std::max(1.0, ah + am);
    }
    row["load_average_1m_after"] = LoadAverage();
    results.push_back(std::move(row));
    warm.StopWarmPool();
    alt.StopWarmPool();
  }

  return results;
}

// This process's CPU while it keeps --idle-warm warm containers ready.
json::object Idle(const Bench& b) {
  const DockerIsolatorOptions& options = b.options;
  json::object idle;
  if (b.args.idle_warm > 0) {
    DockerIsolatorOptions idle_options = options;
    idle_options.warm_per_image = b.args.idle_warm;
    idle_options.warm_images = {"runner-task:latest"};
    DockerIsolator idle_iso(idle_options);
    const auto fill0 = std::chrono::steady_clock::now();
    const bool full = idle_iso.StartWarmPool() && WaitWarmFull(idle_iso, std::chrono::seconds(600));
    const double fill_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - fill0).count();
    const double self0 = SelfCpuSeconds();
    const double host0 = HostBusySeconds();
    std::this_thread::sleep_for(std::chrono::seconds(b.args.idle_seconds));
    const double self_pct = (SelfCpuSeconds() - self0) / b.args.idle_seconds * 100;
    const double host_pct = (HostBusySeconds() - host0) / b.args.idle_seconds * 100;
    const int ready = idle_iso.WarmStatus()->ready;
    std::printf(
        "idle with %d warm containers (%d ready, filled in %.1f s): this process %.3f%% of a "
        "core, whole host %.1f%% of a core (other tenants included)\n",
        b.args.idle_warm, ready, fill_s, self_pct, host_pct);
    idle = json::object{{"warm_containers", b.args.idle_warm},
                        {"ready", ready},
                        {"filled", full},
                        {"fill_seconds", fill_s},
                        {"seconds", b.args.idle_seconds},
                        {"runner_cpu_pct_of_core", self_pct},
                        {"host_cpu_pct_of_core", host_pct}};
    idle_iso.StopWarmPool();
  }

  return idle;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = ParseArgs(argc, argv);
  spdlog::set_level(args.debug ? spdlog::level::debug : spdlog::level::warn);
  const double load_before = LoadAverage();
  const std::string node = "bench-docker-" + RandomHex(8);

  DockerIsolatorOptions options;
  options.docker_host = args.host;
  options.node_id = node;
  if (args.warm_wait_ms >= 0) options.warm_wait = std::chrono::milliseconds(args.warm_wait_ms);
  if (args.warm_lanes > 0) options.warm_lanes = args.warm_lanes;
  DockerIsolator isolator(options);  // cold: no warm containers
  auto& client = isolator.client();
  auto api = client.ApiVersion();
  if (!api) {
    std::cerr << "docker unavailable: " << api.error().message << "\n";
    return 1;
  }
  std::string engine = isolator.EngineVersion();

  Bench b{args, node, options, isolator};
  // Warm-up: first container start pays for image and mount setup.
  for (int i = 0; i < 2; ++i) {
    b.RawTask();
    b.RunOn(isolator);
  }

  auto sequential = Sequential(b);
  if (!sequential) return 1;
  auto results = Concurrency(b);
  if (!results) return 1;
  json::object idle = Idle(b);

  isolator.WaitForCleanup();  // its queued removals are not leftovers
  auto leftovers = isolator.ReapOrphans({node});

  std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  json::object doc{
      {"benchmark",
       "docker isolator per-task latency and throughput, cold and warm, vs the raw Engine API "
       "loop"},
      {"date", stamp},
      {"engine", engine},
      {"image", "runner-task:latest"},
      {"command", json::array{"true"}},
      {"raw_loop",
       "create (same config as the isolator), wait?condition=next-exit, start, "
       "wait, remove"},
      {"cold",
       "DockerIsolator::Run: image inspect cached for 60 s, create, wait, start, logs follow "
       "stream, stats sampler thread, inspect only after a nonzero exit; the removal is "
       "queued, off the task's path"},
      {"warm",
       "DockerIsolator::Run with one warm container per worker, plus one: wait, update only "
       "when the task has limits (none here), attach stdin and write argv+env to the "
       "launcher, output and the launcher's exit report on the attach stream (Docker's exit "
       "waited for only after a nonzero status); removal queued and a replacement created in "
       "the background"},
      {"host_cpu",
       "busy CPU of the whole host (/proc/stat) from a round's start until its removals (and "
       "the warm path's replacements) are done, per task; other tenants of the host count too"},
      {"hardware_threads", std::thread::hardware_concurrency()},
      {"note", "the host is shared with other builds; see load_average_1m_before/after"},
      {"load_average_1m_before", load_before},
      {"load_average_1m_after", LoadAverage()},
      {"warm_wait_ms", static_cast<int64_t>(options.warm_wait.count())},
      {"warm_lanes", options.warm_lanes},
      {"leftover_containers_reaped", leftovers ? *leftovers : -1},
      {"sequential", std::move(*sequential)},
      {"results", std::move(*results)},
      {"idle", std::move(idle)},
  };
  std::ofstream f(args.out);
  f << json::serialize(doc) << "\n";
  std::printf("wrote %s\n", args.out.c_str());
  return 0;
}
