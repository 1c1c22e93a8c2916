#pragma once

// Shared set-up of the pool integration tests: a node configuration for a
// test database and temp dir, a cheap isolator for queue-throughput tests,
// and one-value SQL probes.

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <thread>

#include "isolation/isolator.h"
#include "runner/config.h"
#include "runner/queue/postgres_store.h"
#include "tests/support/services.h"

namespace runner::pool::testing {

// A node that polls fast, never throttles (the CI host is busy) and runs
// tasks as processes.
inline Config NodeConfig(const runner::testing::TempDir& dir, int workers) {
  Config c;
  c.data_dir = dir.path().string();
  c.workers = workers;
  c.max_workers = 200;
  c.mode = isolation::IsolationMode::kProcess;
  c.poll_interval = 0.2;
  c.idle_backoff_max = 1;
  c.lease = 3;
  c.drain_timeout = 10;
  c.node_dead_after = 3;
  c.default_timeout = 60;
  c.pressure.cpu_high = 100;
  c.pressure.memory_high = 100;
  c.pressure.disk_high = 100;
  return c;
}

// Exits 0 at once (or after `delay`), and checks that no task is ever run by
// two workers at the same time, across every node sharing this isolator.
class NoopIsolator : public isolation::Isolator {
 public:
  explicit NoopIsolator(std::chrono::milliseconds delay = std::chrono::milliseconds(0))
      : delay_(delay) {}
  std::string_view Name() const override { return "process"; }
  bool Available() override { return true; }
  isolation::RunResult Run(const isolation::TaskSpec& spec, isolation::Observer&,
                           std::stop_token stop) override {
    {
      std::lock_guard lock(mu_);
      if (!running_.insert(spec.task_id).second) ++overlaps_;
      ++runs_[spec.task_id];
      by_node_[spec.node_id] += 1;
    }
    if (delay_.count() > 0) {
      std::mutex m;
      std::condition_variable_any cv;
      std::unique_lock l(m);
      cv.wait_for(l, stop, delay_, [] { return false; });
    }
    {
      std::lock_guard lock(mu_);
      running_.erase(spec.task_id);
    }
    isolation::RunResult r;
    r.isolation = "process";
    if (stop.stop_requested()) {
      r.kind = isolation::RunResult::Kind::kStopped;
      return r;
    }
    r.kind = isolation::RunResult::Kind::kExited;
    r.exit_code = 0;
    return r;
  }
  int Overlaps() const {
    std::lock_guard lock(mu_);
    return overlaps_;
  }
  std::map<std::string, int> Runs() const {
    std::lock_guard lock(mu_);
    return runs_;
  }
  std::map<std::string, int> RunsByNode() const {
    std::lock_guard lock(mu_);
    return by_node_;
  }

 private:
  const std::chrono::milliseconds delay_;
  mutable std::mutex mu_;
  std::set<std::string> running_;       // guarded by mu_
  std::map<std::string, int> runs_;     // guarded by mu_
  std::map<std::string, int> by_node_;  // guarded by mu_
  int overlaps_ = 0;                    // guarded by mu_
};

inline std::string Scalar(const runner::testing::TestDatabase& db, const std::string& query) {
  pqxx::connection conn(db.conninfo());
  pqxx::nontransaction tx(conn);
  auto r = tx.exec(query);
  return r[0][0].is_null() ? "" : r[0][0].as<std::string>();
}

inline int64_t Count(const runner::testing::TestDatabase& db, const std::string& query) {
  std::string v = Scalar(db, query);
  return v.empty() ? 0 : std::stoll(v);
}

inline queue::NewTask Command(std::vector<std::string> argv) {
  queue::NewTask t;
  t.command = std::move(argv);
  return t;
}

}  // namespace runner::pool::testing
