#pragma once

// The chaos suite's harness: real `runner serve` processes (fork/exec on free
// loopback ports, one shared test database), a small HTTP client, a Docker
// socket proxy we can cut, a private PostgreSQL cluster we can restart, and
// the invariant checks run against the database after each scenario.
//
// Every wait has a deadline; every process, container, directory and cluster
// started here is stopped by its owner's destructor.
//
// Thread-safety: each object is owned by one test thread, except
// ContainerSampler and DockerProxy, which run their own threads internally.

#include <sys/resource.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/socket_proxy.h"

namespace runner::chaos {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// CHAOS_FULL=1: the full-length suite (scripts/reliability); else CI-short.
bool FullMode();
template <typename T>
T Pick(T ci, T full) {
  return FullMode() ? full : ci;
}
double SecondsSince(Clock::time_point t);

// A loopback TCP port nobody listens on right now.
int FreePort();

// Raises RLIMIT_NOFILE of this process to its hard limit (or `want`).
void RaiseFileLimit(rlim_t want);

struct RunnerArgs {
  std::string database_url;
  fs::path data_dir;
  int workers = 4;
  int max_workers = 256;
  std::string mode = "auto";
  std::string docker_host;  // empty: the default
  double lease = 3;
  double poll = 0.2;
  // Written to a file and passed with --config. CPU backpressure is off by
  // default: the suite saturates a small CI host on purpose, and a node that
  // throttles on its own load would stall every scenario (the pressure
  // scenario sets its own thresholds).
  std::string config_yaml = "pressure:\n  cpuHigh: 100\n  cpuLow: 99\n";
  std::vector<std::string> extra;
};

// One `runner serve` child process with its output in a log file.
class RunnerProcess {
 public:
  RunnerProcess(RunnerArgs args, fs::path log_dir, std::string name);
  ~RunnerProcess();  // SIGKILL and reap when still running
  RunnerProcess(const RunnerProcess&) = delete;
  RunnerProcess& operator=(const RunnerProcess&) = delete;

  // Starts (on a new free port) and waits until /healthz answers; false on timeout.
  bool Start(std::chrono::milliseconds deadline = 60s);
  void Signal(int sig);
  // Waits for exit up to the deadline; the exit status (or 128+signal), -1 on timeout.
  int Wait(std::chrono::milliseconds deadline);
  bool Running();
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  std::string LogTail(size_t bytes = 4000) const;
  const fs::path& log_path() const { return log_; }
  // Threads and VmRSS (KiB) from /proc/<pid>/status.
  std::pair<int, long> ThreadsAndRss() const;

 private:
  RunnerArgs args_;
  fs::path log_dir_;
  std::string name_;
  fs::path log_;
  pid_t pid_ = -1;
  int port_ = 0;
  int starts_ = 0;
};

struct HttpResult {
  int status = -1;  // -1: no response
  std::string body;
  double ms = 0;
};
HttpResult HttpGet(int port, const std::string& path, std::chrono::milliseconds timeout = 5s);
HttpResult HttpPost(int port, const std::string& path, const std::string& body,
                    std::chrono::milliseconds timeout = 5s);

// POST /api/v1/tasks; the new task's id, or empty with the reason in *why.
std::string Submit(int port, const std::string& json_body, std::string* why = nullptr);
// Reads a top-level or dotted field ("pool.state") of a JSON body; empty when absent.
std::string JsonField(const std::string& body, const std::string& dotted);

// Direct SQL on the test database.
long long QueryInt(const std::string& conninfo, const std::string& sql);
std::map<std::string, std::string> TaskStates(const std::string& conninfo);

struct TaskRow {
  std::string state = "missing";
  std::string error_code;
  std::string isolation_used;
  int attempt = 0;
  bool logs_truncated = false;
  long long log_bytes = 0;
  double run_seconds = 0;  // finished_at - started_at of the last attempt
};
TaskRow GetTask(const std::string& conninfo, const std::string& id);

struct Invariants {
  int submitted = 0;
  int final_tasks = 0;        // in a final state
  int lost = 0;               // submitted, but missing or not final
  int multi_final = 0;        // more than one final event (ended more than once)
  int event_overlaps = 0;     // an attempt started before the previous one ended, per events
  int observed_overlaps = 0;  // from tick files / container samples (filled by the caller)
  std::map<std::string, int> by_state;
  std::vector<std::string> problems;  // first few, for the failure message
  std::string Summary() const;
};
// Checks every task of `ids` in the database after a scenario.
Invariants CheckInvariants(const std::string& conninfo, const std::vector<std::string>& ids);

// Process-mode tasks that append "<pid> <ns>" ticks to dir/<key>: the number of
// keys where two different pids ticked in overlapping time ranges.
int TickOverlaps(const fs::path& dir, std::vector<std::string>* which = nullptr);
// sh command for a ticking task: `count` ticks `step` seconds apart.
std::string TickCommand(const fs::path& dir, int count, double step);

// Polls the Docker daemon for this product's containers and records tasks that
// had two running containers at the same sample.
class ContainerSampler {
 public:
  explicit ContainerSampler(std::string docker_host, std::chrono::milliseconds every = 200ms);
  ~ContainerSampler();
  void Stop();
  std::set<std::string> overlapping_tasks() const;
  int samples() const { return samples_; }

 private:
  void Loop();
  std::string host_;
  std::chrono::milliseconds every_;
  std::atomic<bool> stop_{false};
  std::atomic<int> samples_{0};
  mutable std::mutex mu_;
  std::set<std::string> overlapping_;
  std::thread thread_;
};

// Containers of this product on the daemon carrying io.runner.node=<node>.
int ContainersOfNodes(const std::string& docker_host, const std::set<std::string>& nodes,
                      bool running_only = false);
// Removes them (cleanup on every path).
void RemoveContainersOfNodes(const std::string& docker_host, const std::set<std::string>& nodes);
std::set<std::string> NodeIds(const std::string& conninfo);

// Forwards a unix socket we control to the real daemon; Close() cuts it.
using DockerProxy = runner::testing::SocketProxy;

// A private PostgreSQL cluster (initdb + pg_ctl as the postgres user) that a
// scenario may restart without disturbing anyone else.
class PrivatePostgres {
 public:
  PrivatePostgres();
  ~PrivatePostgres();
  bool Start();
  bool Stop(const std::string& mode = "fast");
  std::string url(const std::string& db) const;
  std::string conninfo(const std::string& db) const;
  bool CreateDatabase(const std::string& db);

 private:
  fs::path dir_;
  std::string bin_;
  bool started_ = false;
};

// Appends a markdown section to $CHAOS_REPORT_DIR/<file>.md (when set).
void ReportSection(const std::string& file, const std::string& markdown);

}  // namespace runner::chaos
