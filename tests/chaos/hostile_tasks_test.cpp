// Scenario 5: hostile tasks next to ordinary ones: 100 MB of output, hundreds
// of forked processes, a task reading a stdin that never comes, tasks that
// ignore SIGTERM. Each ends within its limits; the node and the neighbours
// stay healthy.
#include <catch2/catch.hpp>
#include <sstream>

#include "tests/chaos/scenario.h"

namespace runner::chaos {

TEST_CASE(
    "hostile tasks end within their limits while the node and neighbouring tasks stay "
    "healthy",
    "[chaos][hostile]") {
  Scenario s;
  RunnerArgs a = s.Args("node");
  a.workers = 10;
  a.mode = "auto";
  a.lease = 5;
  RunnerProcess& node = s.Add(a, "node");
  REQUIRE(node.Start());

  struct Hostile {
    std::string name;
    TaskOpts opts;
    double limit_s;  // it must be over by then
    std::string id;
  };
  const std::string flood =
      "yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop"
      " | head -c 100000000";
  const std::string forks =
      "i=0; while [ $i -lt 300 ]; do sleep 5 & i=$((i+1)); done; wait; echo done";
  const std::string stubborn = "trap '' TERM; while true; do sleep 0.2; done";
  std::vector<Hostile> hostile = {
      {"100 MB of output (process)", Opts({"sh", "-c", flood}, "process", 120), 120, {}},
      {"100 MB of output (docker)", Opts({"sh", "-c", flood}, "docker", 120), 120, {}},
      {"300 forks, pids limit 64 (process)", Opts({"sh", "-c", forks}, "process", 30, 64), 40, {}},
      {"300 forks, pids limit 64 (docker)", Opts({"sh", "-c", forks}, "docker", 30, 64), 40, {}},
      {"reads stdin that never comes (process)", Opts({"cat"}, "process", 20), 20, {}},
      {"reads stdin that never comes (docker)", Opts({"cat"}, "docker", 20), 20, {}},
      {"ignores SIGTERM, timeout 2 s (process)",
       Opts({"sh", "-c", stubborn}, "process", 2),
       20,
       {}},
      {"ignores SIGTERM, timeout 2 s (docker)", Opts({"sh", "-c", stubborn}, "docker", 2), 20, {}},
  };
  std::vector<std::string> ids;
  auto t0 = Clock::now();
  for (auto& h : hostile) {
    std::string why;
    h.id = Submit(node.port(), TaskJson(h.opts), &why);
    INFO(h.name << ": " << why);
    REQUIRE(!h.id.empty());
    ids.push_back(h.id);
  }
  std::vector<std::string> neighbours;
  const int n_neighbours = Pick(20, 100);
  for (int i = 0; i < n_neighbours; ++i) {
    TaskOpts o;
    o.isolation = i % 2 ? "docker" : "process";
    o.command = {"sh", "-c", "sleep 0.3; echo ok"};
    std::string id = Submit(node.port(), TaskJson(o));
    REQUIRE(!id.empty());
    neighbours.push_back(id);
    ids.push_back(id);
  }
  // Health while they run.
  double health_max_ms = 0;
  int health_fail = 0;
  int max_threads = 0;
  long max_rss = 0;
  const auto deadline = Clock::now() + 150s;
  while (Clock::now() < deadline && s.Unfinished() > 0) {
    HttpResult h = HttpGet(node.port(), "/healthz", 5s);
    if (h.status != 200) ++health_fail;
    health_max_ms = std::max(health_max_ms, h.ms);
    auto [threads, rss] = node.ThreadsAndRss();
    max_threads = std::max(max_threads, threads);
    max_rss = std::max(max_rss, rss);
    std::this_thread::sleep_for(250ms);
  }
  const bool all_final = s.Unfinished() == 0;
  const double total_s = SecondsSince(t0);

  std::ostringstream md;
  md << "## 5. Hostile tasks\n\n"
     << "One node (`--mode auto`, 10 workers); the hostile tasks below run next to " << n_neighbours
     << " ordinary tasks (`sleep 0.3`, half Docker, half process). Log cap: "
        "the default 1 MiB per task.\n\n"
     << "| task | final state | error | run time | logs stored / truncated "
        "|\n|---|---|---|---|---|\n";
  std::vector<TaskRow> rows;
  for (const auto& h : hostile) {
    TaskRow t = GetTask(s.db.conninfo(), h.id);
    rows.push_back(t);
    md << "| " << h.name << " | " << t.state << " | " << (t.error_code.empty() ? "-" : t.error_code)
       << " | " << t.run_seconds << " s | " << t.log_bytes << " B / "
       << (t.logs_truncated ? "yes" : "no") << " |\n";
  }
  int neighbours_ok = 0;
  for (const auto& id : neighbours)
    neighbours_ok += GetTask(s.db.conninfo(), id).state == "succeeded";
  Invariants inv = CheckInvariants(s.db.conninfo(), ids);
  md << "\n| measure | value |\n|---|---|\n"
     << "| neighbouring tasks succeeded | " << neighbours_ok << " / " << n_neighbours << " |\n"
     << "| /healthz while they ran: failures / slowest | " << health_fail << " / " << health_max_ms
     << " ms |\n"
     << "| runner threads (max) / RSS (max) | " << max_threads << " / " << max_rss / 1024
     << " MiB |\n"
     << "| all done in | " << total_s << " s |\n";
  ReportSection("5-hostile-tasks", md.str());
  INFO(md.str());
  INFO(node.LogTail(3000));

  CHECK(all_final);
  CHECK(node.Running());
  CHECK(health_fail == 0);
  CHECK(neighbours_ok == n_neighbours);
  CHECK(inv.lost == 0);
  CHECK(inv.multi_final == 0);
  for (size_t i = 0; i < hostile.size(); ++i) {
    INFO(hostile[i].name);
    CHECK(rows[i].run_seconds <= hostile[i].limit_s);
    CHECK(rows[i].state != "running");
  }
  // Output floods: stored logs capped and marked as cut.
  for (size_t i : {0u, 1u}) {
    INFO(hostile[i].name);
    CHECK(rows[i].logs_truncated);
    CHECK(rows[i].log_bytes <= (1 << 20) + 65536);
  }
  // Stubborn tasks: ended by the timeout.
  for (size_t i : {6u, 7u}) {
    INFO(hostile[i].name);
    CHECK(rows[i].state == "timed_out");
  }
  // A task reading stdin gets end-of-file at once.
  for (size_t i : {4u, 5u}) {
    INFO(hostile[i].name);
    CHECK(rows[i].state == "succeeded");
  }
}

}  // namespace runner::chaos
