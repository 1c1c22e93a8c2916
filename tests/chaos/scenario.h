#pragma once

// Shared pieces of the chaos scenarios: one fresh database, a temp dir, the
// runner processes of the scenario and cleanup of their containers on every
// path; task JSON builders; waits on the database.

#include <boost/json.hpp>
#include <memory>
#include <string>
#include <vector>

#include "tests/chaos/harness.h"
#include "tests/support/services.h"

namespace runner::chaos {

struct TaskOpts {
  std::vector<std::string> command;
  std::string isolation = "process";
  double timeout = 60;
  int max_attempts = 1;
  std::vector<std::pair<std::string, std::string>> env;
  int64_t pids = 0;
  int64_t memory = 0;
};

inline TaskOpts Opts(std::vector<std::string> command, std::string isolation = "process",
                     double timeout = 60, int64_t pids = 0) {
  TaskOpts o;
  o.command = std::move(command);
  o.isolation = std::move(isolation);
  o.timeout = timeout;
  o.pids = pids;
  return o;
}

inline std::string TaskJson(const TaskOpts& o) {
  boost::json::object t;
  boost::json::array cmd;
  for (const auto& c : o.command) cmd.emplace_back(c);
  t["command"] = std::move(cmd);
  t["isolation"] = o.isolation;
  t["timeout"] = o.timeout;
  t["max_attempts"] = o.max_attempts;
  if (!o.env.empty()) {
    boost::json::object env;
    for (const auto& [k, v] : o.env) env[k] = v;
    t["env"] = std::move(env);
  }
  if (o.pids > 0 || o.memory > 0) {
    boost::json::object lim;
    if (o.pids > 0) lim["pids"] = o.pids;
    if (o.memory > 0) lim["memory"] = o.memory;
    t["limits"] = std::move(lim);
  }
  return boost::json::serialize(t);
}

// Owns what a scenario starts; the destructor kills runners first, then
// removes every container of every node the database has seen.
struct Scenario {
  testing::TestDatabase db;
  testing::TempDir dir;
  std::string docker = testing::DockerHost();
  std::vector<std::unique_ptr<RunnerProcess>> runners;

  Scenario() = default;
  Scenario(const Scenario&) = delete;
  Scenario& operator=(const Scenario&) = delete;
  ~Scenario() {
    for (auto& r : runners) r.reset();
    RemoveContainersOfNodes(docker, NodeIds(db.conninfo()));
  }

  RunnerArgs Args(const std::string& name) const {
    RunnerArgs a;
    a.database_url = db.url();
    a.data_dir = dir.path() / ("data-" + name);
    return a;
  }

  RunnerProcess& Add(RunnerArgs args, const std::string& name) {
    runners.push_back(std::make_unique<RunnerProcess>(std::move(args), dir.path(), name));
    return *runners.back();
  }

  long long Unfinished() const {
    return QueryInt(db.conninfo(),
                    "SELECT count(*) FROM tasks WHERE state IN ('queued','running')");
  }

  bool WaitAllFinal(std::chrono::milliseconds deadline) const {
    return testing::WaitFor([&] { return Unfinished() == 0; }, deadline, 200ms);
  }
};

}  // namespace runner::chaos
