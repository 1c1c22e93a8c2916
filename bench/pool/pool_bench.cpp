// End-to-end pool benchmark: submit -> finished through a real Node (PostgreSQL
// queue, NOTIFY wake-up, real isolators) for no-op tasks: `true` as a process
// and `true` in a container, at several worker counts. Reports tasks/s of a
// burst, and submit-to-start latency of single submissions to an idle node
// (the NOTIFY wake-up path; timestamps are the database's own).
//
// In the same run, at the same concurrency, the alternatives (--peers on):
// - process mode: a bare serial fork/exec/wait loop of /bin/true (the floor of
//   process starts), the raw SQL queue loop (the runner's claim and
//   finish-and-claim statements around posix_spawn/wait, nothing else: the
//   floor of a durable-queue runner) and graphile-worker jobs that spawn /bin/true
//   (bench/pool/graphile_spawn.js, run with node; NODE_PATH from bench/pool/run);
// - docker mode: the raw Engine API loop (bench/docker/raw_engine_loop.h, the
//   floor), `xargs -P N docker run --rm --network none` with the docker CLI,
//   and the same node with --warm-containers 0 (mode "docker" has the
//   default warm containers; "docker-cold" alone runs the cold node). Each
//   run also records claimed -> finished of its sequential samples.
// Each runner figure gets its ratios to those; a summary ends the output.
//
//   bench/pool/run [--tasks N] [--docker-tasks N] [--latency N] [--workers 1,4,16]
//                  [--modes process,process-bare,docker,docker-cold] [--peers on|off] [--idle
//                  on|off] [--rounds N]
// --rounds N repeats every setting N times, the runner and its peers
// alternated (odd rounds run the peers first), and the summary reports the
// median of each round's ratio and of each round's wake-up p50 and p99.
//
// Every burst (the runner's and each peer's) starts once the host is quiet
// (under 25% busy for half a second, 20 s at most), and Docker-mode runs
// record the host's CPU per task and what the runner's process and
// PostgreSQL add to it.
//
// Needs RUNNER_TEST_PGHOST (scripts/services) and, for docker, a daemon with
// runner-task:latest. Writes JSON (--out).

#include <fmt/format.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <pqxx/pqxx>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/common/stats.h"
#include "bench/docker/raw_engine_loop.h"
#include "bench/pool/bench_host.h"
#include "isolation/docker/docker_isolator.h"
#include "runner/config.h"
#include "runner/metrics/registry.h"
#include "runner/node/node.h"
#include "runner/queue/postgres_store.h"
#include "runner/queue/queue_sql.h"
#include "tests/support/services.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace json = boost::json;
using runner::bench::CpuMsPerTask;
using runner::bench::CpuNow;
using runner::bench::CpuSeconds;
using runner::bench::CpuUse;
using runner::bench::Env;
using runner::bench::LastLine;
using runner::bench::RandomHex;
using runner::bench::Ratio;
using runner::bench::RssBytes;
using runner::bench::RunShell;
using runner::bench::SettleHost;
using runner::bench::ShellQuote;
using runner::bench::ShellResult;
using runner::bench::Split;

// A fresh database for one measurement, dropped at the end: the test
// support's scratch database on the cluster of RUNNER_TEST_PGHOST.
using ScratchDb = runner::testing::TestDatabase;

// A node's data dir under the temp dir, removed on every path.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix)
      : path_(std::filesystem::temp_directory_path() / (prefix + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A node config for the bench: `workers` workers, backpressure off (the bench
// itself saturates the host).
runner::Config BenchConfig(const ScratchDir& data, int workers,
                           runner::isolation::IsolationMode mode) {
  runner::Config config;
  config.data_dir = data.path().string();
  config.workers = workers;
  config.max_workers = std::max(workers, 1);
  config.mode = mode;
  config.pressure.cpu_high = 100;
  config.pressure.memory_high = 100;
  config.pressure.disk_high = 100;
  return config;
}

using runner::bench::Median;
using runner::bench::Percentile;

constexpr const char* kCountFinished =
    "SELECT count(*) FROM tasks WHERE state NOT IN ('queued','running')";
constexpr const char* kCountSucceeded = "SELECT count(*) FROM tasks WHERE state = 'succeeded'";

// Tasks the node has finished for good, from its own counters: polling the
// database through the burst would load the PostgreSQL under test, which
// the peers' loops do not have to share.
int64_t NodeFinalCount(runner::metrics::Registry& registry) {
  double n = 0;
  for (auto state : {runner::queue::TaskState::kSucceeded, runner::queue::TaskState::kFailed,
                     runner::queue::TaskState::kCancelled, runner::queue::TaskState::kTimedOut}) {
    n += registry
             .GetCounter("runner_tasks_finished_total", "Tasks this node finished, by outcome",
                         {{"state", std::string(runner::queue::ToString(state))}})
             .Value();
  }
  return static_cast<int64_t>(n);
}

// Counts tasks on one connection held for the whole measurement: a new
// connection per poll would fork a backend each time and take CPU from the
// system under test.
class TaskCounter {
 public:
  explicit TaskCounter(const std::string& conninfo) : conn_(conninfo) {}
  int64_t Count(const char* sql) {
    pqxx::nontransaction tx(conn_);
    return tx.exec(sql)[0][0].as<int64_t>();
  }

 private:
  pqxx::connection conn_;
};

double ForkExecRate(int n) {
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::execl("/bin/true", "true", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
  return n / std::chrono::duration<double>(Clock::now() - t0).count();
}

bool IsDockerMode(const std::string& mode) { return mode == "docker" || mode == "docker-cold"; }

json::object Measure(const std::string& mode, int workers, int tasks, int latency_samples) {
  ScratchDb db;
  ScratchDir data("runner-pool-bench-");
  runner::Config config =
      BenchConfig(data, workers,
                  IsDockerMode(mode) ? runner::isolation::IsolationMode::kDocker
                                     : runner::isolation::IsolationMode::kProcess);
  // "docker" has the node's default warm containers (one per worker);
  // "docker-cold" none, every task created and started on its claim.
  if (mode == "docker-cold") config.warm_containers = 0;
  config.docker_host = Env("RUNNER_TEST_DOCKER_HOST", "unix:///var/run/docker.sock");
  // "process" runs sandboxed (the default); "process-bare" with --process-sandbox off.
  config.process_sandbox = mode != "process-bare";
  config.poll_interval = 1;
  // As the runner reads it: RUNNER_CLAIM_ON_FINISH=false measures the pool
  // with every claim going through the claimer's batch.
  config.claim_on_finish = Env("RUNNER_CLAIM_ON_FINISH", "true") != "false";
  runner::metrics::Registry registry;
  auto node = runner::node::Node::Create(config, db.conninfo(), registry);
  if (!node) throw std::runtime_error("node: " + node.error().message);
  if (auto st = (*node)->Start(); !st) throw std::runtime_error("start: " + st.error().message);
  auto deadline = Clock::now() + std::chrono::seconds(20);
  while (!(*node)->Listening() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  runner::queue::NewTask t;
  t.command = {"true"};
  t.isolation = config.mode;

  TaskCounter counter(db.conninfo());

  // Wake-up latency: one task at a time into an idle node. The first task
  // after the node's start is a warm-up, left out: its claim plans the
  // statement and fills the catalog caches of a fresh connection (13-15 ms
  // here), which a node pays once, not per wake-up. graphile's figures
  // likewise follow warm-up jobs.
  std::vector<double> latency_ms, run_ms;
  double first_after_start_ms = 0;  // the warm-up's, reported apart
  for (int i = -1; i < latency_samples; ++i) {
    // Each sample meets an idle node: its warm containers all ready again.
    const auto warm_deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < warm_deadline) {
      const auto w = (*node)->Status().docker_warm;
      if (w.ready >= w.target) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    auto sub = (*node)->store().Submit(t);
    if (!sub) throw std::runtime_error("submit: " + sub.error().message);
    const auto sample_deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < sample_deadline) {
      auto got = (*node)->store().Get(sub->task.id);
      if (got && runner::queue::IsFinal(got->state)) {
        if (got->started_at) {
          const double ms =
              std::chrono::duration<double, std::milli>(*got->started_at - got->created_at).count();
          if (i < 0) {
            first_after_start_ms = ms;
          } else {
            latency_ms.push_back(ms);
            if (got->finished_at) {  // claimed -> finished: the isolation's whole cost
              run_ms.push_back(
                  std::chrono::duration<double, std::milli>(*got->finished_at - *got->started_at)
                      .count());
            }
          }
        }
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  // Burst throughput: `tasks` submitted at once, until all are final.
  std::vector<runner::queue::NewTask> batch(static_cast<std::size_t>(tasks), t);
  const int64_t done_before = counter.Count(kCountFinished);
  // The node counts a task after its finish has committed: the last
  // sample, final in the database, may not be counted yet, and would then
  // count as one of the burst's (seen: 120 counted, 119 in the database).
  const auto counted_by = Clock::now() + std::chrono::seconds(5);
  while (NodeFinalCount(registry) < latency_samples + 1 && Clock::now() < counted_by) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int64_t node_before = NodeFinalCount(registry);
  SettleHost();
  const CpuUse cpu0 = CpuNow();
  auto t0 = Clock::now();
  auto subs = (*node)->postgres().SubmitBatch(batch);
  if (!subs) throw std::runtime_error("submit batch: " + subs.error().message);
  const double submit_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  deadline = Clock::now() + std::chrono::seconds(600);
  while (Clock::now() < deadline) {
    if (NodeFinalCount(registry) >= node_before + tasks) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const CpuUse cpu1 = CpuNow();
  // The database must agree with the node's counters.
  if (const int64_t final_rows = counter.Count(kCountFinished); final_rows < done_before + tasks) {
    throw std::runtime_error("the node counted " + std::to_string(tasks) +
                             " tasks finished but the database has " +
                             std::to_string(final_rows - done_before));
  }
  const int64_t ok = counter.Count(kCountSucceeded);
  json::array failures;
  runner::queue::TaskFilter failed_filter;
  failed_filter.state = runner::queue::TaskState::kFailed;
  failed_filter.limit = 5;
  if (auto page = (*node)->store().List(failed_filter); page) {
    for (const auto& f : page->tasks) {
      failures.push_back(json::value(f.error ? f.error->code + ": " + f.error->message : "?"));
    }
  }
  (*node)->Shutdown(runner::StopOptions{false, std::chrono::seconds(30)});
  node->reset();

  json::object r;
  r["failures"] = failures;
  r["mode"] = mode;
  r["workers"] = workers;
  r["tasks"] = tasks;
  r["seconds"] = seconds;
  r["tasks_per_second"] = tasks / seconds;
  r["submit_ms"] = submit_ms;  // of the burst, one SubmitBatch; inside `seconds`
  r["succeeded"] = ok;
  r["submit_to_start_ms_p50"] = Percentile(latency_ms, 0.5);
  r["submit_to_start_ms_p99"] = Percentile(latency_ms, 0.99);
  r["latency_samples"] = static_cast<int64_t>(latency_ms.size());
  r["claimed_to_finished_ms_p50"] = Percentile(run_ms, 0.5);
  r["first_task_after_start_ms"] = first_after_start_ms;
  r["cpu_ms_per_task"] = CpuMsPerTask(cpu0, cpu1, tasks);
  std::cerr << mode << " workers=" << workers << " tasks/s=" << tasks / seconds
            << " submit=" << submit_ms << "ms"
            << " start p50=" << Percentile(latency_ms, 0.5)
            << "ms p99=" << Percentile(latency_ms, 0.99) << "ms succeeded=" << ok
            << " cpu/task=" << json::serialize(r["cpu_ms_per_task"]) << "\n";
  return r;
}

// What `workers` idle workers cost: CPU share and RSS growth over `seconds`.
json::object IdleCost(int workers, int seconds) {
  ScratchDb db;
  ScratchDir data("runner-pool-idle-");
  runner::Config config = BenchConfig(data, workers, runner::isolation::IsolationMode::kProcess);
  runner::metrics::Registry registry;
  const int64_t rss_before = RssBytes();
  auto node = runner::node::Node::Create(config, db.conninfo(), registry);
  if (!node) throw std::runtime_error("node: " + node.error().message);
  if (auto st = (*node)->Start(); !st) throw std::runtime_error("start: " + st.error().message);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // let start-up settle
  const double cpu0 = CpuSeconds();
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  const double cpu = CpuSeconds() - cpu0;
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const int64_t rss = RssBytes() - rss_before;
  (*node)->Shutdown(runner::StopOptions{false, std::chrono::seconds(10)});
  node->reset();
  json::object r;
  r["workers"] = workers;
  r["seconds"] = wall;
  r["cpu_percent_of_one_core"] = 100.0 * cpu / wall;
  r["rss_growth_bytes"] = rss;
  std::cerr << "idle workers=" << workers << " cpu=" << 100.0 * cpu / wall
            << "% of a core, rss growth=" << rss / (1024 * 1024) << " MiB\n";
  return r;
}

// The floor of a durable-queue runner in process mode: `concurrency` threads,
// each on its own connection, claim a task with the runner's own SQL (and
// session settings), spawns /bin/true and waits, then finish it and claim the
// next in one statement (kFinishAndClaim), with nothing else: no cgroup, work
// dir, pipes, logs, events or pool. Timed like Measure(): from the submit of
// the burst to the last finish.
json::object RawQueueLoop(int concurrency, int tasks) {
  namespace sql = runner::queue::sql;
  ScratchDb db;
  runner::queue::StoreOptions options;
  options.conninfo = db.conninfo();
  auto store = runner::queue::PostgresStore::Open(options);  // applies the schema
  if (!store) throw std::runtime_error("store: " + store.error().message);
  std::vector<std::unique_ptr<pqxx::connection>> conns;
  for (int i = 0; i < concurrency; ++i) {
    conns.push_back(std::make_unique<pqxx::connection>(db.conninfo()));
    pqxx::nontransaction(*conns.back()).exec(std::string(sql::kSessionPlanSettings));
    conns.back()->prepare(sql::kClaim.name, std::string(sql::kClaim.text));
    conns.back()->prepare(sql::kFinishAndClaim.name, std::string(sql::kFinishAndClaim.text));
  }
  runner::queue::NewTask t;
  t.command = {"true"};
  t.isolation = runner::isolation::IsolationMode::kProcess;
  std::vector<runner::queue::NewTask> batch(static_cast<std::size_t>(tasks), t);
  const char* usage = R"({"cpu_seconds":0,"peak_memory":0,"duration":0})";
  std::atomic<int> done{0};
  SettleHost();
  const auto t0 = Clock::now();
  auto subs = (*store)->SubmitBatch(batch);
  if (!subs) throw std::runtime_error("submit batch: " + subs.error().message);
  std::mutex error_mu;
  std::string error;  // the first thread's failure, guarded by error_mu
  std::vector<std::thread> threads;
  for (int i = 0; i < concurrency; ++i) {
    threads.emplace_back([&, i] {
      try {
        pqxx::connection& c = *conns[static_cast<std::size_t>(i)];
        const std::string worker = "raw-" + std::to_string(i);
        std::optional<std::string> id;
        {
          pqxx::nontransaction tx(c);
          auto r = tx.exec_prepared(sql::kClaim.name, "{\"" + worker + "\"}", "bench",
                                    int64_t{30000}, nullptr, int64_t{1}, nullptr);
          if (!r.empty()) id = r[0][0].as<std::string>();
        }
        while (id) {
          // posix_spawn: glibc clones with CLONE_VM | CLONE_VFORK, the cheapest start.
          pid_t pid = -1;
          char* const argv[] = {const_cast<char*>("true"), nullptr};
          int status = 0;
          if (::posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ) != 0) {
            throw std::runtime_error("posix_spawn /bin/true failed");
          }
          ::waitpid(pid, &status, 0);
          const std::string code = std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : 128);
          pqxx::nontransaction tx(c);
          auto r = tx.exec_prepared(sql::kFinishAndClaim.name, *id, worker, "succeeded", code,
                                    nullptr, usage, "process", true, 3600.0, "bench",
                                    int64_t{30000}, nullptr, nullptr);
          ++done;
          id.reset();
          if (!r[0][0].is_null()) id = r[0][0].as<std::string>();
        }
      } catch (const std::exception& e) {
        std::lock_guard lock(error_mu);
        if (error.empty()) error = e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!error.empty()) throw std::runtime_error("raw queue loop: " + error);
  if (done != tasks) {
    throw std::runtime_error("raw queue loop finished " + std::to_string(done.load()) + " of " +
                             std::to_string(tasks));
  }
  std::cerr << "raw queue loop concurrency=" << concurrency << " tasks/s=" << tasks / seconds
            << "\n";
  return json::object{{"concurrency", concurrency},
                      {"tasks", tasks},
                      {"seconds", seconds},
                      {"tasks_per_second", tasks / seconds}};
}

// graphile-worker jobs that spawn /bin/true, `concurrency` workers, one burst
// of `tasks` (bench/pool/graphile_spawn.js prints one JSON line).
json::object GraphileSpawn(const std::string& script, int concurrency, int tasks) {
  const std::string command = "timeout 600 node " + ShellQuote(script) + " --host " +
                              ShellQuote(Env("RUNNER_TEST_PGHOST", "/tmp/runner-dev/pgsock")) +
                              " --user " + ShellQuote(Env("RUNNER_TEST_PGUSER", "postgres")) +
                              " --tasks " + std::to_string(tasks) + " --concurrency " +
                              std::to_string(concurrency);
  ShellResult r = RunShell(command);
  if (r.exit_code != 0) {
    throw std::runtime_error("graphile_spawn.js exited with " + std::to_string(r.exit_code) +
                             " (is graphile-worker in NODE_PATH? bench/pool/run installs it)");
  }
  boost::system::error_code ec;
  json::value v = json::parse(LastLine(r.output), ec);
  if (ec || !v.is_object() || !v.as_object().contains("tasks_per_second")) {
    throw std::runtime_error("graphile_spawn.js printed no result: " + LastLine(r.output));
  }
  json::object o = v.as_object();
  std::cerr << "graphile spawn concurrency=" << concurrency
            << " tasks/s=" << o["tasks_per_second"].to_number<double>() << "\n";
  return o;
}

// The raw Engine API loop with `concurrency` loops over `tasks` tasks.
json::object RawEngineLoop(runner::isolation::docker::DockerIsolator& isolator,
                           const std::string& node_id, int concurrency, int tasks) {
  auto one = [&] {
    runner::isolation::TaskSpec spec;
    spec.task_id = "bench-pool-raw-" + RandomHex(10);
    spec.worker_id = "bench";
    spec.node_id = node_id;
    spec.image = "runner-task:latest";
    spec.command = {"true"};
    return runner::bench::RawEngineTask(isolator.client(), isolator.options(), spec);
  };
  SettleHost();
  const CpuUse cpu0 = CpuNow();
  runner::bench::Round round = runner::bench::RunConcurrently(concurrency, tasks, one);
  const CpuUse cpu1 = CpuNow();
  json::object o;
  o["concurrency"] = concurrency;
  o["tasks"] = tasks;
  o["seconds"] = round.wall_s;
  o["tasks_per_second"] = tasks / round.wall_s;
  o["failures"] = round.failures;
  o["task_ms_p50"] = Percentile(round.latencies_ms, 0.5);
  o["cpu_ms_per_task"] = CpuMsPerTask(cpu0, cpu1, tasks);
  std::cerr << "raw engine loop concurrency=" << concurrency << " tasks/s=" << tasks / round.wall_s
            << " failures=" << round.failures
            << " cpu/task=" << json::serialize(o["cpu_ms_per_task"]) << "\n";
  return o;
}

// `seq tasks | xargs -P concurrency docker run --rm --network none ... true`.
json::object XargsDockerRun(const std::string& cli, const std::string& node_id, int concurrency,
                            int tasks) {
  const std::string command = "seq 1 " + std::to_string(tasks) + " | timeout 900 xargs -P " +
                              std::to_string(concurrency) + " -I{} " + ShellQuote(cli) +
                              " run --rm --network none --label io.runner.task=xargs-{}"
                              " --label io.runner.node=" +
                              ShellQuote(node_id) + " runner-task:latest true";
  SettleHost();
  ShellResult r = RunShell(command);
  if (r.exit_code != 0) {
    // xargs: 123 when some docker run failed, 124 on timeout, 127 no such CLI.
    throw std::runtime_error("xargs docker run exited with " + std::to_string(r.exit_code));
  }
  json::object o;
  o["concurrency"] = concurrency;
  o["tasks"] = tasks;
  o["seconds"] = r.seconds;
  o["tasks_per_second"] = tasks / r.seconds;
  std::cerr << "xargs docker run concurrency=" << concurrency << " tasks/s=" << tasks / r.seconds
            << "\n";
  return o;
}

double TasksPerSecond(const json::object& o) {
  auto it = o.find("tasks_per_second");
  return it == o.end() ? 0 : it->value().to_number<double>();
}

// A peer measurement, or {"concurrency": N, "error": ...} when it failed.
template <class Fn>
json::object Peer(const char* what, int concurrency, Fn fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    std::cerr << what << " concurrency=" << concurrency << " failed: " << e.what() << "\n";
    return json::object{{"concurrency", concurrency}, {"error", e.what()}};
  }
}

struct Options {
  std::string out = "bench/results/pool.json";
  int tasks = 1000;        // per process-mode burst (runner and graphile alike)
  int docker_tasks = 120;  // per docker-mode burst (runner, raw loop and xargs alike)
  int latency = 50;
  int rounds = 1;  // alternated runner/peer rounds per setting; medians reported
  std::string workers = "1,4,16";
  std::string modes = "process,process-bare,docker";
  bool peers = true;
  bool idle = true;
  std::string graphile_script = "bench/pool/graphile_spawn.js";
  std::string docker_cli = "docker";
};

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--out") {
      o.out = v;
    } else if (k == "--tasks") {
      o.tasks = std::stoi(v);
    } else if (k == "--docker-tasks") {
      o.docker_tasks = std::stoi(v);
    } else if (k == "--latency") {
      o.latency = std::stoi(v);
    } else if (k == "--rounds") {
      o.rounds = std::max(1, std::stoi(v));
    } else if (k == "--workers") {
      o.workers = v;
    } else if (k == "--modes") {
      o.modes = v;
    } else if (k == "--peers") {
      o.peers = v != "off";
    } else if (k == "--idle") {
      o.idle = v != "off";
    } else if (k == "--graphile-script") {
      o.graphile_script = v;
    } else if (k == "--docker-cli") {
      o.docker_cli = v;
    } else {
      throw std::invalid_argument("unknown option " + k + " (see bench/pool/run)");
    }
  }
  return o;
}

// One mode and worker count over its rounds: the runner's rates and its
// ratio to each peer, round by round.
struct LevelStats {
  std::vector<double> mine_rates, vs_floor, vs_queue_loop, vs_graphile, vs_raw, vs_xargs, vs_cold,
      wake_p50, wake_p99;
  // Claimed -> finished of the sequential samples (one task into an idle
  // node): the runner's own, and, in docker mode, its cold twin's.
  std::vector<double> run_p50, cold_run_p50;
  // Docker mode, per task: host CPU of the runner's burst and of the raw
  // loop's, and what the runner's own process and PostgreSQL add.
  std::vector<double> cpu_mine, cpu_raw, cpu_added;
  int peer_failures = 0;  // peer measurements (or runner runs) that failed
};

// The summary line of a level: medians over the rounds (a single round: its
// own figures) against the issue's targets.
std::string SummaryLine(const std::string& mode, int workers, int rounds, const LevelStats& s) {
  std::string line =
      fmt::format("{:<7} {:>2} workers: runner {:7.1f}/s", mode, workers, Median(s.mine_rates));
  if (rounds > 1) line += fmt::format(" (median of {} rounds)", rounds);
  if (s.peer_failures > 0) {
    line += fmt::format(" | {} comparison(s) FAILED, see the runs' errors", s.peer_failures);
  }
  if (!s.vs_floor.empty()) {
    line += fmt::format(" | vs bare fork/exec serial {:.0f}% (target >= 60%)",
                        100 * Median(s.vs_floor));
  }
  if (!s.vs_queue_loop.empty()) {
    line += fmt::format(" | vs raw SQL queue + spawn loop {:.0f}%", 100 * Median(s.vs_queue_loop));
  }
  if (!s.vs_graphile.empty()) {
    line += fmt::format(" | vs graphile spawn {:.2f}x (target >= 2x)", Median(s.vs_graphile));
  }
  if (!s.vs_raw.empty()) {
    line +=
        fmt::format(" | vs raw Engine API loop {:.0f}% (target >= 95%)", 100 * Median(s.vs_raw));
  }
  if (!s.vs_xargs.empty()) {
    line += fmt::format(" | vs xargs docker run {:.2f}x (target > 1x)", Median(s.vs_xargs));
  }
  if (!s.vs_cold.empty()) {
    line += fmt::format(" | vs the same node with --warm-containers 0 {:.2f}x", Median(s.vs_cold));
  }
  if (!s.run_p50.empty()) {
    line += fmt::format(" | claimed -> finished p50 {:.1f} ms", Median(s.run_p50));
    if (!s.cold_run_p50.empty()) {
      line += fmt::format(" (cold {:.1f} ms: {:.2f}x)", Median(s.cold_run_p50),
                          Median(s.run_p50) / Median(s.cold_run_p50));
    }
  }
  if (!s.cpu_mine.empty()) {
    line += fmt::format(
        " | host CPU/task {:.0f} ms (raw loop {:.0f}), of which the runner and PostgreSQL "
        "add {:.1f} ms",
        Median(s.cpu_mine), Median(s.cpu_raw), Median(s.cpu_added));
  }
  if (!s.wake_p50.empty()) {
    line += fmt::format(" | wake-up p50 {:.1f} ms p99 {:.1f} ms (target < 5 / 20)",
                        Median(s.wake_p50), Median(s.wake_p99));
  }
  return line;
}

// What each peer is, with its runs.
json::object PeersDoc(const std::string& graphile_version, const std::string& docker_cli_version,
                      const json::array& queue_loop_runs, const json::array& graphile_runs,
                      const json::array& raw_runs, const json::array& xargs_runs,
                      const json::array& cold_runs) {
  return json::object{
      {"raw_queue_loop",
       json::object{{"what",
                     "N threads with a connection each: the runner's claim, then posix_spawn/wait "
                     "of /bin/true and the runner's finish-and-claim statement, nothing else"},
                    {"runs", queue_loop_runs}}},
      {"graphile_spawn",
       json::object{{"what",
                     "graphile-worker jobs spawning /bin/true (child_process.spawn, "
                     "await exit), burst into a warm worker, same PostgreSQL"},
                    {"version", graphile_version},
                    {"runs", graphile_runs}}},
      {"docker_raw_engine_loop",
       json::object{{"what",
                     "create (the isolator's config), wait?condition=next-exit, start, "
                     "wait, remove over the unix socket; N concurrent loops"},
                    {"runs", raw_runs}}},
      {"xargs_docker_run", json::object{{"what",
                                         "seq T | xargs -P N docker run --rm --network none "
                                         "runner-task:latest true"},
                                        {"docker_cli", docker_cli_version},
                                        {"runs", xargs_runs}}},
      {"docker_cold_runner",
       json::object{{"what",
                     "the same node and burst with --warm-containers 0: every task created and "
                     "started on its claim"},
                    {"runs", cold_runs}}},
  };
}

// The cost of 100 idle workers, with its summary line (or its error).
json::object IdleWithSummary(json::array& summary) {
  json::object idle;
  try {
    idle = IdleCost(100, 10);
    summary.push_back(json::value(fmt::format(
        "idle 100 workers: {:.2f}% of a core (target < 1%), RSS +{:.1f} MiB (target < 50)",
        idle["cpu_percent_of_one_core"].to_number<double>(),
        static_cast<double>(idle["rss_growth_bytes"].to_number<int64_t>()) / (1024 * 1024))));
  } catch (const std::exception& e) {
    idle["error"] = e.what();
  }
  return idle;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  try {
    opt = ParseArgs(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);

  // The process-mode floor, measured before the runs it is compared with.
  const double floor = ForkExecRate(1000);
  std::cerr << "bare fork/exec/wait of /bin/true (serial): " << floor << "/s\n";

  json::array runs, summary, graphile_runs, raw_runs, xargs_runs, queue_loop_runs, cold_runs;
  std::string graphile_version, docker_cli_version;
  const std::string bench_node = "bench-pool-" + RandomHex(8);
  std::unique_ptr<runner::isolation::docker::DockerIsolator> docker;
  for (const auto& mode : Split(opt.modes)) {
    const bool is_docker = IsDockerMode(mode);
    const int tasks = is_docker ? opt.docker_tasks : opt.tasks;
    if (is_docker && opt.peers) {
      runner::isolation::docker::DockerIsolatorOptions options;
      options.docker_host = Env("RUNNER_TEST_DOCKER_HOST", "unix:///var/run/docker.sock");
      docker = std::make_unique<runner::isolation::docker::DockerIsolator>(options);
      docker_cli_version = LastLine(RunShell("timeout 20 " + ShellQuote(opt.docker_cli) +
                                             " version --format '{{.Client.Version}}' 2>/dev/null")
                                        .output);
      // The first containers pay for image and mount setup: not the loop's cost.
      runner::bench::RunConcurrently(1, 2, [&] {
        runner::isolation::TaskSpec spec;
        spec.task_id = "bench-pool-warm-" + RandomHex(10);
        spec.worker_id = "bench";
        spec.node_id = bench_node;
        spec.image = "runner-task:latest";
        spec.command = {"true"};
        return runner::bench::RawEngineTask(docker->client(), docker->options(), spec);
      });
    }
    for (const auto& w : Split(opt.workers)) {
      const int workers = std::stoi(w);
      // Rounds alternate the runner and its peers, so host noise (which moves
      // rates 20-40% between minutes here) hits both; the summary gives the
      // median of each round's ratio.
      LevelStats s;
      double floor_rate = floor;
      for (int round = 0; round < opt.rounds; ++round) {
        json::object run;
        const auto measure_mine = [&] {
          try {
            run = Measure(mode, workers, tasks, opt.latency);
          } catch (const std::exception& e) {
            std::cerr << mode << " workers=" << w << " failed: " << e.what() << "\n";
            run = json::object{{"mode", mode}, {"workers", workers}, {"error", e.what()}};
          }
        };
        std::optional<json::object> q, g, raw, xargs, cold;  // this round's peers
        const auto measure_peers = [&] {
          if (!is_docker) {
            if (round > 0) floor_rate = ForkExecRate(1000);  // round 0 uses the one measured first
            if (!opt.peers) return;
            q = Peer("raw queue loop", workers, [&] { return RawQueueLoop(workers, tasks); });
            g = Peer("graphile spawn", workers,
                     [&] { return GraphileSpawn(opt.graphile_script, workers, tasks); });
            if (auto it = g->find("version"); it != g->end() && it->value().is_string()) {
              graphile_version = it->value().as_string().c_str();
              g->erase(it);
            }
          } else if (opt.peers) {
            raw = Peer("raw engine loop", workers,
                       [&] { return RawEngineLoop(*docker, bench_node, workers, tasks); });
            xargs = Peer("xargs docker run", workers, [&] {
              return XargsDockerRun(opt.docker_cli, bench_node, workers, tasks);
            });
            if (mode == "docker") {  // warm containers against none, same rounds
              cold = Peer("runner, --warm-containers 0", workers,
                          [&] { return Measure("docker-cold", workers, tasks, opt.latency); });
            }
          }
        };
        // Odd rounds run the peers first: whoever goes first meets the
        // daemon and database as the previous setting left them.
        if (round % 2 == 1) measure_peers();
        measure_mine();
        if (round % 2 == 0) measure_peers();
        const double mine = TasksPerSecond(run);
        s.mine_rates.push_back(mine);
        json::object ratios;
        // A ratio counts only when the peer measured something; a failed
        // peer keeps its error in the peers' runs and in the summary.
        const auto compare = [&](std::optional<json::object>& peer, const char* key, double scale,
                                 std::vector<double>& into, json::array& runs_of) {
          if (!peer) return;
          if (const double rate = TasksPerSecond(*peer); rate > 0 && mine > 0) {
            ratios[key] = scale * Ratio(mine, rate);
            into.push_back(Ratio(mine, rate));
          } else {
            ++s.peer_failures;
          }
          runs_of.push_back(std::move(*peer));
        };
        if (!is_docker) {
          run["fork_exec_wait_true_per_second_serial"] = floor_rate;
          ratios["vs_fork_exec_serial_pct"] = 100 * Ratio(mine, floor_rate);
          s.vs_floor.push_back(Ratio(mine, floor_rate));
          compare(q, "vs_raw_queue_loop_pct", 100, s.vs_queue_loop, queue_loop_runs);
          compare(g, "vs_graphile_spawn_x", 1, s.vs_graphile, graphile_runs);
        } else {
          if (raw && run.contains("cpu_ms_per_task") && raw->contains("cpu_ms_per_task")) {
            const auto& m = run.at("cpu_ms_per_task").as_object();
            const auto& r = raw->at("cpu_ms_per_task").as_object();
            const auto own = [](const json::object& c) {
              return c.at("self").to_number<double>() + c.at("postgres").to_number<double>();
            };
            s.cpu_mine.push_back(m.at("host").to_number<double>());
            s.cpu_raw.push_back(r.at("host").to_number<double>());
            s.cpu_added.push_back(own(m) - own(r));
          }
          compare(raw, "vs_raw_engine_loop_pct", 100, s.vs_raw, raw_runs);
          compare(xargs, "vs_xargs_docker_run_x", 1, s.vs_xargs, xargs_runs);
          if (cold) {
            if (auto it = cold->find("claimed_to_finished_ms_p50"); it != cold->end()) {
              s.cold_run_p50.push_back(it->value().to_number<double>());
            }
          }
          compare(cold, "vs_cold_runner_x", 1, s.vs_cold, cold_runs);
        }
        if (auto it = run.find("claimed_to_finished_ms_p50"); it != run.end()) {
          s.run_p50.push_back(it->value().to_number<double>());
        }
        if (auto it = run.find("submit_to_start_ms_p50"); it != run.end()) {
          s.wake_p50.push_back(it->value().to_number<double>());
          s.wake_p99.push_back(run.at("submit_to_start_ms_p99").to_number<double>());
        }
        run["round"] = round + 1;
        run["ratios"] = std::move(ratios);
        if (opt.rounds > 1) {
          std::cerr << fmt::format("{} {} workers round {}/{}: {:.1f}/s\n", mode, workers,
                                   round + 1, opt.rounds, mine);
        }
        runs.push_back(std::move(run));
      }
      summary.push_back(json::value(SummaryLine(mode, workers, opt.rounds, s)));
    }
  }
  if (docker) (void)docker->ReapOrphans({bench_node});

  json::object idle;
  if (opt.idle) idle = IdleWithSummary(summary);

  json::object doc;
  doc["benchmark"] = "pool end to end: submit -> finished, no-op tasks";
  doc["host_cpus"] = static_cast<int64_t>(std::thread::hardware_concurrency());
  doc["fork_exec_wait_true_per_second_serial"] = floor;
  doc["runs"] = runs;
  if (opt.idle) doc["idle_100_workers"] = idle;
  if (opt.peers) {
    doc["peers"] = PeersDoc(graphile_version, docker_cli_version, queue_loop_runs, graphile_runs,
                            raw_runs, xargs_runs, cold_runs);
  }
  doc["summary"] = summary;
  std::ofstream(opt.out) << json::serialize(doc) << "\n";
  std::cout << "== summary (tasks/s, same run; ratios = runner / peer)\n";
  for (const auto& l : summary) std::cout << l.as_string().c_str() << "\n";
  std::cerr << "wrote " << opt.out << "\n";
  return 0;
}
