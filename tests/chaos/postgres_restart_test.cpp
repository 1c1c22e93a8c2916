// Scenario 3: PostgreSQL restarts mid-run. A private cluster (initdb + pg_ctl
// in a temp dir) so the shared one is never touched. The node reconnects its
// store and its NOTIFY listener, in-flight tasks finish and are recorded,
// /readyz goes 503 and back to 200, nothing is lost.
#include <catch2/catch.hpp>
#include <sstream>

#include "tests/chaos/scenario.h"

namespace runner::chaos {

TEST_CASE("a PostgreSQL restart mid-run loses nothing and the node reconnects by itself",
          "[chaos][postgres]") {
  PrivatePostgres pg;
  REQUIRE(pg.Start());
  REQUIRE(pg.CreateDatabase("chaos"));
  const std::string conninfo = pg.conninfo("chaos");
  testing::TempDir dir;

  RunnerArgs a;
  a.database_url = pg.url("chaos");
  a.data_dir = dir.path() / "data";
  a.workers = 6;
  a.mode = "process";
  a.lease = 10;
  // A slow fallback poll: tasks submitted after the restart start quickly only
  // when the NOTIFY listener reconnected.
  a.poll = 20;
  a.extra = {"--drain-timeout", "5"};
  RunnerProcess node(a, dir.path(), "node");
  REQUIRE(node.Start());

  std::vector<std::string> ids;
  const int before = Pick(30, 200);
  for (int i = 0; i < before; ++i) {
    TaskOpts o;
    o.command = {"sleep", i % 3 == 0 ? "2" : "0.5"};
    o.max_attempts = 3;
    std::string id = Submit(node.port(), TaskJson(o));
    REQUIRE(!id.empty());
    ids.push_back(id);
  }
  REQUIRE(testing::WaitFor(
      [&] { return QueryInt(conninfo, "SELECT count(*) FROM tasks WHERE state = 'running'") >= 3; },
      20s, 50ms));
  const long long running_at_restart =
      QueryInt(conninfo, "SELECT count(*) FROM tasks WHERE state = 'running'");

  auto down = Clock::now();
  REQUIRE(pg.Stop("fast"));
  const bool not_ready = testing::WaitFor(
      [&] { return HttpGet(node.port(), "/readyz", 2s).status == 503; }, 15s, 100ms);
  const double not_ready_s = SecondsSince(down);
  const HttpResult submit_down =
      HttpPost(node.port(), "/api/v1/tasks", TaskJson(Opts({"true"})), 5s);
  const bool healthy_down = HttpGet(node.port(), "/healthz", 2s).status == 200;
  std::this_thread::sleep_for(Pick(3s, 8s));
  const double outage_s = SecondsSince(down);
  auto up = Clock::now();
  REQUIRE(pg.Start());
  const bool ready_again = testing::WaitFor(
      [&] { return HttpGet(node.port(), "/readyz", 2s).status == 200; }, 60s, 100ms);
  const double ready_s = SecondsSince(up);

  // The backlog first: with every worker busy a new task waits its turn
  // whatever wakes the claimer.
  const bool backlog_done = testing::WaitFor(
      [&] {
        return QueryInt(conninfo,
                        "SELECT count(*) FROM tasks WHERE state IN ('queued','running')") == 0;
      },
      Pick(90s, 300s), 200ms);
  // Tasks submitted after the restart to idle workers: started through
  // NOTIFY, not the 20 s poll.
  std::vector<std::string> later;
  auto submit_after = Clock::now();
  for (int i = 0; i < 5; ++i) {
    TaskOpts o;
    o.command = {"true"};
    std::string id = Submit(node.port(), TaskJson(o));
    REQUIRE(!id.empty());
    ids.push_back(id);
    later.push_back(id);
  }
  const bool later_started = testing::WaitFor(
      [&] {
        for (const auto& id : later) {
          if (GetTask(conninfo, id).state != "succeeded") return false;
        }
        return true;
      },
      15s, 100ms);
  const double later_s = SecondsSince(submit_after);
  const bool all_final = testing::WaitFor(
      [&] {
        return QueryInt(conninfo,
                        "SELECT count(*) FROM tasks WHERE state IN ('queued','running')") == 0;
      },
      Pick(90s, 300s), 200ms);
  Invariants inv = CheckInvariants(conninfo, ids);
  const long long reruns = QueryInt(conninfo, "SELECT count(*) FROM tasks WHERE attempt > 1");

  std::ostringstream md;
  md << "## 3. PostgreSQL restarted mid-run\n\n"
     << "A private cluster (initdb + pg_ctl), one node (`--mode process`, `--lease 10`, "
        "`--poll-interval 20` so only NOTIFY starts new tasks quickly), "
     << before << " tasks of 0.5-2 s; the cluster is stopped (`pg_ctl -m fast`) with "
     << running_at_restart << " tasks running and started again " << outage_s << " s later.\n\n"
     << "| measure | value |\n|---|---|\n"
     << "| /readyz 503 after the stop | " << (not_ready ? "yes" : "NO") << " after " << not_ready_s
     << " s |\n"
     << "| /healthz during the outage | " << (healthy_down ? "200" : "not 200") << " |\n"
     << "| POST /api/v1/tasks during the outage | " << submit_down.status << " |\n"
     << "| /readyz 200 again after the start | " << (ready_again ? "yes" : "NO") << " after "
     << ready_s << " s |\n"
     << "| tasks submitted after the restart done (NOTIFY listener back) | "
     << (later_started ? "yes" : "NO") << " in " << later_s << " s |\n"
     << "| tasks submitted / final / succeeded / lost / ended twice | " << inv.submitted << " / "
     << inv.final_tasks << " / " << inv.by_state["succeeded"] << " / " << inv.lost << " / "
     << inv.multi_final << " |\n"
     << "| tasks that needed a second attempt | " << reruns << " |\n";
  ReportSection("3-postgres-restart", md.str());
  INFO(md.str());
  INFO(inv.Summary());
  INFO(node.LogTail(4000));

  CHECK(not_ready);
  CHECK(healthy_down);
  CHECK(submit_down.status >= 500);
  CHECK(ready_again);
  CHECK(backlog_done);
  CHECK(later_started);
  CHECK(later_s < 10);
  CHECK(all_final);
  CHECK(inv.lost == 0);
  CHECK(inv.multi_final == 0);
  CHECK(inv.event_overlaps == 0);
  CHECK(inv.by_state["succeeded"] == inv.submitted);
  // In-flight tasks finish and are recorded: not run a second time.
  CHECK(reruns == 0);
  CHECK(node.Running());
}

}  // namespace runner::chaos
