// Scenario 2: the Docker Engine goes away mid-run and comes back. We never
// stop the shared dockerd: the node talks to it through a unix-socket proxy we
// cut and restore. Running Docker tasks end with a clear error and retry; their
// retries wait in the queue while Docker is away (no attempt burnt on the
// outage) and succeed once it is back; the node stays up; `auto` tasks run as
// processes while Docker is away and in Docker again once it is back.
#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <sstream>

#include "tests/chaos/scenario.h"

namespace runner::chaos {

TEST_CASE(
    "docker going away mid-run fails running docker tasks clearly, retries them and falls "
    "back to processes until it returns",
    "[chaos][docker]") {
  Scenario s;
  std::string daemon = s.docker.substr(std::string("unix://").size());
  DockerProxy proxy(s.dir.path() / "docker.sock", daemon);
  proxy.Open();

  RunnerArgs a = s.Args("node");
  a.workers = 8;
  a.mode = "auto";
  a.docker_host = proxy.host();
  RunnerProcess& node = s.Add(a, "node");
  REQUIRE(node.Start());
  REQUIRE(testing::WaitFor(
      [&] {
        return JsonField(HttpGet(node.port(), "/api/v1/status").body, "docker.available") == "true";
      },
      15s, 100ms));

  ContainerSampler sampler(s.docker);
  std::vector<std::string> ids, docker_ids;
  const int docker_tasks = Pick(4, 8);
  for (int i = 0; i < docker_tasks; ++i) {
    TaskOpts o;
    o.isolation = "docker";
    o.command = {"sleep", "4"};
    o.max_attempts = 3;
    std::string id = Submit(node.port(), TaskJson(o));
    REQUIRE(!id.empty());
    ids.push_back(id);
    docker_ids.push_back(id);
  }
  // All of them running inside Docker before the cut.
  REQUIRE(testing::WaitFor(
      [&] {
        return QueryInt(s.db.conninfo(), "SELECT count(*) FROM tasks WHERE state = 'running'") ==
               docker_tasks;
      },
      30s, 100ms));
  std::this_thread::sleep_for(1s);

  auto cut = Clock::now();
  proxy.Close();
  const bool noticed = testing::WaitFor(
      [&] {
        return JsonField(HttpGet(node.port(), "/api/v1/status").body, "docker.available") ==
               "false";
      },
      20s, 100ms);
  const double notice_s = SecondsSince(cut);

  // auto tasks submitted while Docker is away run as processes.
  std::vector<std::string> during;
  for (int i = 0; i < 5; ++i) {
    TaskOpts o;
    o.isolation = "auto";
    o.command = {"sh", "-c", "echo during"};
    std::string id = Submit(node.port(), TaskJson(o));
    REQUIRE(!id.empty());
    ids.push_back(id);
    during.push_back(id);
  }
  const bool during_done = testing::WaitFor(
      [&] {
        for (const auto& id : during) {
          if (GetTask(s.db.conninfo(), id).state != "succeeded") return false;
        }
        return true;
      },
      20s, 100ms);
  // The running docker tasks must have ended their attempt with a clear error.
  const bool docker_attempt_ended = testing::WaitFor(
      [&] {
        return QueryInt(
                   s.db.conninfo(),
                   "SELECT count(DISTINCT task_id) FROM events WHERE kind IN "
                   "('task.retrying','task.failed') AND task_id IN (SELECT id FROM tasks WHERE "
                   "isolation = 'docker')") == docker_tasks;
      },
      30s, 100ms);
  std::string errors;
  {
    pqxx::connection c(s.db.conninfo());
    pqxx::nontransaction tx(c);
    for (const auto& row :
         tx.exec("SELECT DISTINCT COALESCE(data->>'error', '') FROM events WHERE kind IN"
                 " ('task.retrying','task.failed') AND task_id IN (SELECT id FROM tasks WHERE"
                 " isolation = 'docker')")) {
      errors += row[0].as<std::string>() + " ";
    }
  }
  // Keep Docker away for a while: retries of the interrupted tasks meet the outage.
  while (SecondsSince(cut) < Pick(6.0, 15.0)) std::this_thread::sleep_for(100ms);
  const bool up_during = HttpGet(node.port(), "/healthz").status == 200;
  const double down_s = SecondsSince(cut);

  auto restore = Clock::now();
  proxy.Open();
  const bool back = testing::WaitFor(
      [&] {
        return JsonField(HttpGet(node.port(), "/api/v1/status").body, "docker.available") == "true";
      },
      20s, 100ms);
  const double back_s = SecondsSince(restore);
  std::vector<std::string> after;
  for (int i = 0; i < 5; ++i) {
    TaskOpts o;
    o.isolation = "auto";
    o.command = {"sh", "-c", "echo after"};
    std::string id = Submit(node.port(), TaskJson(o));
    REQUIRE(!id.empty());
    ids.push_back(id);
    after.push_back(id);
  }
  const bool all_final = s.WaitAllFinal(60s);
  sampler.Stop();

  int during_process = 0, after_docker = 0, docker_succeeded = 0;
  for (const auto& id : during)
    during_process += GetTask(s.db.conninfo(), id).isolation_used == "process";
  for (const auto& id : after)
    after_docker += GetTask(s.db.conninfo(), id).isolation_used == "docker";
  for (const auto& id : docker_ids)
    docker_succeeded += GetTask(s.db.conninfo(), id).state == "succeeded";
  Invariants inv = CheckInvariants(s.db.conninfo(), ids);
  inv.observed_overlaps = static_cast<int>(sampler.overlapping_tasks().size());

  std::ostringstream md;
  md << "## 2. Docker Engine unavailable mid-run\n\n"
     << "One node, `--mode auto`, `--docker-host` pointing at a unix-socket proxy to the shared "
        "dockerd; the proxy is cut while "
     << docker_tasks << " Docker tasks (`sleep 4`, max_attempts 3) run, and restored after "
     << down_s << " s.\n\n"
     << "| measure | value |\n|---|---|\n"
     << "| Docker loss noticed in /api/v1/status | " << (noticed ? "yes" : "NO") << " after "
     << notice_s << " s |\n"
     << "| running Docker tasks whose attempt ended with an error | "
     << (docker_attempt_ended ? docker_tasks : 0) << " / " << docker_tasks << " (errors: " << errors
     << ") |\n"
     << "| `auto` tasks run as processes while Docker was away | " << during_process << " / "
     << during.size() << " |\n"
     << "| node answered /healthz during the outage | " << (up_during ? "yes" : "NO") << " |\n"
     << "| Docker back in /api/v1/status after restore | " << (back ? "yes" : "NO") << " after "
     << back_s << " s |\n"
     << "| `auto` tasks in Docker again after restore | " << after_docker << " / " << after.size()
     << " |\n"
     << "| interrupted Docker tasks that succeeded on retry | " << docker_succeeded << " / "
     << docker_tasks << " |\n"
     << "| tasks submitted / final / lost / ended twice | " << inv.submitted << " / "
     << inv.final_tasks << " / " << inv.lost << " / " << inv.multi_final << " |\n"
     << "| tasks seen with two running containers at once | " << inv.observed_overlaps << " |\n";
  ReportSection("2-docker-outage", md.str());
  INFO(md.str());
  INFO(inv.Summary());
  INFO(node.LogTail(3000));

  CHECK(noticed);
  CHECK(docker_attempt_ended);
  CHECK(during_done);
  CHECK(during_process == static_cast<int>(during.size()));
  CHECK(up_during);
  CHECK(back);
  CHECK(after_docker == static_cast<int>(after.size()));
  CHECK(docker_succeeded == docker_tasks);
  CHECK(all_final);
  CHECK(inv.lost == 0);
  CHECK(inv.multi_final == 0);
  CHECK(inv.event_overlaps == 0);
  CHECK(inv.observed_overlaps == 0);
  CHECK(node.Running());
}

}  // namespace runner::chaos
