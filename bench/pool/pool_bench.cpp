// End-to-end pool benchmark: submit -> finished through a real Node (PostgreSQL
// queue, NOTIFY wake-up, real isolators) for no-op tasks: `true` as a process
// and `true` in a container, at several worker counts. Reports tasks/s of a
// burst, and submit-to-start latency of single submissions to an idle node
// (the NOTIFY wake-up path; timestamps are the database's own). A bare
// fork/exec/wait loop of /bin/true runs in the same process as the floor.
//
//   bench/pool/run [--tasks N] [--latency N] [--workers 1,4,16] [--modes process,docker]
//
// Needs RUNNER_TEST_PGHOST (scripts/services) and, for docker, a daemon with
// runner-task:latest. Writes JSON (--out).

#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <pqxx/pqxx>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "runner/config.h"
#include "runner/metrics/registry.h"
#include "runner/pool/node.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace json = boost::json;

std::string Env(const char* name, const std::string& fallback = {}) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : fallback;
}

std::string AdminConninfo() {
  return "host=" + Env("RUNNER_TEST_PGHOST", "/tmp/runner-dev/pgsock") +
         " user=" + Env("RUNNER_TEST_PGUSER", "postgres") + " dbname=postgres";
}

// A fresh database for one measurement, dropped at the end.
class ScratchDb {
 public:
  ScratchDb() {
    std::mt19937_64 rng{std::random_device{}()};
    name_ = "bench_pool_" + std::to_string(rng() % 1000000000);
    pqxx::connection admin(AdminConninfo());
    pqxx::nontransaction tx(admin);
    tx.exec("CREATE DATABASE " + tx.quote_name(name_));
  }
  ~ScratchDb() {
    try {
      pqxx::connection admin(AdminConninfo());
      pqxx::nontransaction tx(admin);
      tx.exec("DROP DATABASE IF EXISTS " + tx.quote_name(name_) + " WITH (FORCE)");
    } catch (const std::exception&) {
    }
  }
  std::string conninfo() const {
    return "host=" + Env("RUNNER_TEST_PGHOST", "/tmp/runner-dev/pgsock") +
           " user=" + Env("RUNNER_TEST_PGUSER", "postgres") + " dbname=" + name_;
  }

 private:
  std::string name_;
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto idx = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

int64_t Count(const std::string& conninfo, const std::string& sql) {
  pqxx::connection c(conninfo);
  pqxx::nontransaction tx(c);
  return tx.exec(sql)[0][0].as<int64_t>();
}

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

json::object Measure(const std::string& mode, int workers, int tasks, int latency_samples) {
  ScratchDb db;
  std::filesystem::path data =
      std::filesystem::temp_directory_path() / ("runner-pool-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(data);
  runner::Config config;
  config.data_dir = data.string();
  config.workers = workers;
  config.max_workers = std::max(workers, 1);
  config.mode = mode == "docker" ? runner::isolation::IsolationMode::kDocker
                                 : runner::isolation::IsolationMode::kProcess;
  config.docker_host = Env("RUNNER_TEST_DOCKER_HOST", "unix:///var/run/docker.sock");
  config.poll_interval = 1;
  config.pressure.cpu_high = 100;
  config.pressure.memory_high = 100;
  config.pressure.disk_high = 100;
  runner::metrics::Registry registry;
  auto node = runner::pool::Node::Create(config, db.conninfo(), registry);
  if (!node) throw std::runtime_error("node: " + node.error().message);
  if (auto st = (*node)->Start(); !st) throw std::runtime_error("start: " + st.error().message);
  auto deadline = Clock::now() + std::chrono::seconds(20);
  while (!(*node)->Listening() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  runner::queue::NewTask t;
  t.command = {"true"};
  t.isolation = config.mode;

  // Wake-up latency: one task at a time into an idle node.
  std::vector<double> latency_ms;
  for (int i = 0; i < latency_samples; ++i) {
    auto sub = (*node)->store().Submit(t);
    if (!sub) throw std::runtime_error("submit: " + sub.error().message);
    for (;;) {
      auto got = (*node)->store().Get(sub->task.id);
      if (got && runner::queue::IsFinal(got->state)) {
        if (got->started_at) {
          latency_ms.push_back(
              std::chrono::duration<double, std::milli>(*got->started_at - got->created_at)
                  .count());
        }
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  // Burst throughput: `tasks` submitted at once, until all are final.
  std::vector<runner::queue::NewTask> batch(static_cast<std::size_t>(tasks), t);
  const int64_t done_before =
      Count(db.conninfo(), "SELECT count(*) FROM tasks WHERE state NOT IN ('queued','running')");
  auto t0 = Clock::now();
  auto subs = (*node)->postgres().SubmitBatch(batch);
  if (!subs) throw std::runtime_error("submit batch: " + subs.error().message);
  deadline = Clock::now() + std::chrono::seconds(600);
  while (Clock::now() < deadline) {
    if (Count(db.conninfo(),
              "SELECT count(*) FROM tasks WHERE state NOT IN ('queued','running')") >=
        done_before + tasks) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const int64_t ok = Count(db.conninfo(), "SELECT count(*) FROM tasks WHERE state = 'succeeded'");
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
  std::error_code ec;
  std::filesystem::remove_all(data, ec);

  json::object r;
  r["failures"] = failures;
  r["mode"] = mode;
  r["workers"] = workers;
  r["tasks"] = tasks;
  r["seconds"] = seconds;
  r["tasks_per_second"] = tasks / seconds;
  r["succeeded"] = ok;
  r["submit_to_start_ms_p50"] = Percentile(latency_ms, 0.5);
  r["submit_to_start_ms_p99"] = Percentile(latency_ms, 0.99);
  r["latency_samples"] = static_cast<int64_t>(latency_ms.size());
  std::cerr << mode << " workers=" << workers << " tasks/s=" << tasks / seconds
            << " start p50=" << Percentile(latency_ms, 0.5)
            << "ms p99=" << Percentile(latency_ms, 0.99) << "ms succeeded=" << ok << "\n";
  return r;
}

int64_t RssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

double CpuSeconds() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// What `workers` idle workers cost: CPU share and RSS growth over `seconds`.
json::object IdleCost(int workers, int seconds) {
  ScratchDb db;
  std::filesystem::path data =
      std::filesystem::temp_directory_path() / ("runner-pool-idle-" + std::to_string(::getpid()));
  std::filesystem::create_directories(data);
  runner::Config config;
  config.data_dir = data.string();
  config.workers = workers;
  config.max_workers = workers;
  config.mode = runner::isolation::IsolationMode::kProcess;
  config.pressure.cpu_high = 100;
  config.pressure.memory_high = 100;
  config.pressure.disk_high = 100;
  runner::metrics::Registry registry;
  const int64_t rss_before = RssBytes();
  auto node = runner::pool::Node::Create(config, db.conninfo(), registry);
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
  std::error_code ec;
  std::filesystem::remove_all(data, ec);
  json::object r;
  r["workers"] = workers;
  r["seconds"] = wall;
  r["cpu_percent_of_one_core"] = 100.0 * cpu / wall;
  r["rss_growth_bytes"] = rss;
  std::cerr << "idle workers=" << workers << " cpu=" << 100.0 * cpu / wall
            << "% of a core, rss growth=" << rss / (1024 * 1024) << " MiB\n";
  return r;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) {
    if (!part.empty()) out.push_back(part);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = "bench/results/pool.json";
  int tasks = 300;
  int latency = 50;
  std::string workers_arg = "1,4,16";
  std::string modes_arg = "process,docker";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--out") out = v;
    if (k == "--tasks") tasks = std::stoi(v);
    if (k == "--latency") latency = std::stoi(v);
    if (k == "--workers") workers_arg = v;
    if (k == "--modes") modes_arg = v;
  }
  spdlog::set_level(spdlog::level::warn);
  json::array runs;
  for (const auto& mode : Split(modes_arg)) {
    for (const auto& w : Split(workers_arg)) {
      try {
        runs.push_back(Measure(mode, std::stoi(w), tasks, latency));
      } catch (const std::exception& e) {
        std::cerr << mode << " workers=" << w << " failed: " << e.what() << "\n";
        runs.push_back(
            json::object{{"mode", mode}, {"workers", std::stoi(w)}, {"error", e.what()}});
      }
    }
  }
  json::object idle;
  try {
    idle = IdleCost(100, 10);
  } catch (const std::exception& e) {
    idle["error"] = e.what();
  }
  const double floor = ForkExecRate(500);
  std::cerr << "bare fork/exec/wait of /bin/true (serial): " << floor << "/s\n";
  json::object doc;
  doc["benchmark"] = "pool end to end: submit -> finished, no-op tasks";
  doc["host_cpus"] = static_cast<int64_t>(std::thread::hardware_concurrency());
  doc["fork_exec_wait_true_per_second_serial"] = floor;
  doc["runs"] = runs;
  doc["idle_100_workers"] = idle;
  std::ofstream(out) << json::serialize(doc) << "\n";
  std::cerr << "wrote " << out << "\n";
  return 0;
}
