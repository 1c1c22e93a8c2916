// Per-task overhead of DockerIsolator::Run against the raw Engine API loop
// (create, wait registered, start, wait, remove) with the same image, command
// (`true`) and container config, at the same concurrency, in the same run.
// Rounds alternate raw / isolator so daemon drift hits both alike. Prints a
// summary and writes JSON (see bench/docker/run).

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/common/stats.h"
#include "bench/docker/raw_engine_loop.h"
#include "isolation/docker/docker_isolator.h"

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

double LoadAverage() {
  std::ifstream f("/proc/loadavg");
  double one = -1;
  f >> one;
  return one;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = "bench/results/docker.json";
  std::string host = "unix:///var/run/docker.sock";
  int rounds = 5;
  int tasks = 12;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--out") out = argv[i + 1];
    if (a == "--docker-host") host = argv[i + 1];
    if (a == "--rounds") rounds = std::stoi(argv[i + 1]);
    if (a == "--tasks") tasks = std::stoi(argv[i + 1]);
  }
  spdlog::set_level(spdlog::level::warn);

  DockerIsolatorOptions options;
  options.docker_host = host;
  DockerIsolator isolator(options);
  auto& client = isolator.client();
  const std::string node = "bench-docker-" + RandomHex(8);
  auto api = client.ApiVersion();
  if (!api) {
    std::cerr << "docker unavailable: " << api.error().message << "\n";
    return 1;
  }
  std::string engine = isolator.EngineVersion();

  auto make_spec = [&] {
    TaskSpec spec;
    spec.task_id = "bench-" + RandomHex(10);
    spec.worker_id = "bench";
    spec.node_id = node;
    spec.image = "runner-task:latest";
    spec.command = {"true"};
    return spec;
  };

  auto isolator_task = [&] {
    NullObserver obs;
    RunResult r = isolator.Run(make_spec(), obs, {});
    return r.kind == RunResult::Kind::kExited && r.exit_code == 0;
  };
  // The raw loop: the same container config, the minimum calls.
  auto raw_task = [&] { return runner::bench::RawEngineTask(client, options, make_spec()); };

  // Warm-up: first container start pays for image and mount setup.
  for (int i = 0; i < 2; ++i) {
    raw_task();
    isolator_task();
  }

  json::array results;
  for (int concurrency : {1, 4}) {
    std::vector<double> raw_lat, iso_lat, raw_tput, iso_tput, ratios;
    int raw_fail = 0, iso_fail = 0;
    for (int r = 0; r < rounds; ++r) {
      // Alternate which goes first.
      double round_raw = 0, round_iso = 0;
      for (int k = 0; k < 2; ++k) {
        bool raw_turn = (r + k) % 2 == 0;
        Round round = raw_turn ? RunConcurrently(concurrency, tasks, raw_task)
                               : RunConcurrently(concurrency, tasks, isolator_task);
        (raw_turn ? round_raw : round_iso) = Median(round.latencies_ms);
        auto& lat = raw_turn ? raw_lat : iso_lat;
        lat.insert(lat.end(), round.latencies_ms.begin(), round.latencies_ms.end());
        (raw_turn ? raw_tput : iso_tput).push_back(static_cast<double>(tasks) / round.wall_s);
        (raw_turn ? raw_fail : iso_fail) += round.failures;
      }
      ratios.push_back(round_iso / round_raw);
    }
    double paired = (Median(ratios) - 1) * 100;
    double raw_med = Median(raw_lat), iso_med = Median(iso_lat);
    double overhead = (iso_med - raw_med) / raw_med * 100;
    std::printf(
        "concurrency %d: raw median %.1f ms (p90 %.1f, %.2f tasks/s) | isolator median %.1f ms "
        "(p90 %.1f, %.2f tasks/s) | overhead %+.1f%% (paired rounds %+.1f%%) | failures raw %d "
        "isolator %d\n",
        concurrency, raw_med, Percentile(raw_lat, 0.9), Median(raw_tput), iso_med,
        Percentile(iso_lat, 0.9), Median(iso_tput), overhead, paired, raw_fail, iso_fail);
    results.push_back(json::object{
        {"concurrency", concurrency},
        {"rounds", rounds},
        {"tasks_per_round", tasks},
        {"raw", json::object{{"median_ms", raw_med},
                             {"p90_ms", Percentile(raw_lat, 0.9)},
                             {"median_tasks_per_s", Median(raw_tput)},
                             {"failures", raw_fail}}},
        {"isolator", json::object{{"median_ms", iso_med},
                                  {"p90_ms", Percentile(iso_lat, 0.9)},
                                  {"median_tasks_per_s", Median(iso_tput)},
                                  {"failures", iso_fail}}},
        {"overhead_median_pct", overhead},
        {"overhead_paired_rounds_median_pct", paired},
        {"load_average_1m_after", LoadAverage()},
    });
  }
  isolator.WaitForCleanup();  // its queued removals are not leftovers
  auto leftovers = isolator.ReapOrphans({node});

  std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  json::object doc{
      {"benchmark", "docker isolator per-task overhead vs raw Engine API loop"},
      {"date", stamp},
      {"engine", engine},
      {"image", "runner-task:latest"},
      {"command", json::array{"true"}},
      {"raw_loop",
       "create (same config as the isolator), wait?condition=next-exit, start, "
       "wait, remove"},
      {"isolator_extra",
       "logs follow stream (one more connection), stats sampler thread, image inspect cached "
       "for 60 s, inspect only after a nonzero exit; the removal is queued, off the task's path"},
      {"hardware_threads", std::thread::hardware_concurrency()},
      {"note", "the host is shared with other builds; see load_average_1m_after"},
      {"leftover_containers_reaped", leftovers ? *leftovers : -1},
      {"results", std::move(results)},
  };
  std::ofstream f(out);
  f << json::serialize(doc) << "\n";
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
