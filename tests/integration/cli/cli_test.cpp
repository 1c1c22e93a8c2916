#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>
#include <sstream>

#include "runner/queue/migrations.h"
#include "tests/integration/api/api_fixture.h"

using namespace std::chrono_literals;
using runner::testing::ApiFixture;
using runner::testing::WaitFor;

namespace {

struct Run {
  int code = -1;
  std::string out;
  std::string err;
};

// Runs the built `runner` binary with args (a shell fragment) against `server`.
Run Runner(const std::string& server, const std::string& args, const std::string& token = "") {
  runner::testing::TempDir dir;
  auto out = dir.path() / "out";
  auto err = dir.path() / "err";
  std::string cmd = "RUNNER_SERVER=" + server + " RUNNER_API_TOKEN='" + token + "' timeout 60 " +
                    runner::testing::RunnerBinary() + " " + args + " >" + out.string() + " 2>" +
                    err.string();
  int rc = std::system(cmd.c_str());
  Run r;
  r.code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  std::stringstream o, e;
  o << std::ifstream(out).rdbuf();
  e << std::ifstream(err).rdbuf();
  r.out = o.str();
  r.err = e.str();
  return r;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

TEST_CASE("submit --wait exits with the task's exit code", "[cli]") {
  ApiFixture f;
  auto r = Runner(f.base(), "submit --wait -- sh -c 'exit 3'");
  INFO(r.err);
  CHECK(r.code == 3);
  CHECK(Trim(r.out).size() == 26);  // the task id
  auto ok = Runner(f.base(), "submit --wait -- true");
  CHECK(ok.code == 0);
}

TEST_CASE("submit prints the id and logs -f follows the output to the end", "[cli]") {
  ApiFixture f;
  auto submitted =
      Runner(f.base(),
             "submit --env GREETING=hello -- sh -c 'for i in 1 2; do echo $GREETING$i; sleep "
             "0.2; done'");
  REQUIRE(submitted.code == 0);
  std::string id = Trim(submitted.out);
  auto logs = Runner(f.base(), "logs -f " + id);
  INFO(logs.err);
  CHECK(logs.code == 0);
  CHECK(logs.out == "hello1\nhello2\n");
  auto plain = Runner(f.base(), "logs " + id);
  CHECK(plain.out == "hello1\nhello2\n");
}

TEST_CASE("--json prints the API's JSON and tables are the default", "[cli]") {
  ApiFixture f;
  auto submitted = Runner(f.base(), "submit --json --queue cli --delay 3600 -- true");
  REQUIRE(submitted.code == 0);
  auto task = boost::json::parse(submitted.out);
  CHECK(task.at("queue").as_string() == "cli");
  auto list = Runner(f.base(), "list --json --queue cli");
  REQUIRE(list.code == 0);
  CHECK(boost::json::parse(list.out).at("tasks").as_array().size() == 1);
  auto table = Runner(f.base(), "list --queue cli");
  CHECK(table.out.rfind("ID", 0) == 0);
  CHECK(table.out.find(std::string(task.at("id").as_string())) != std::string::npos);
  auto status = Runner(f.base(), "status --json");
  REQUIRE(status.code == 0);
  CHECK(boost::json::parse(status.out).at("pool").at("target").as_int64() == 2);
  CHECK(Runner(f.base(), "workers").out.find("NODE") != std::string::npos);
  CHECK(Runner(f.base(), "scale 3").code == 0);
  CHECK(
      Runner(f.base(), "cancel " + std::string(task.at("id").as_string())).out.find("cancelled") !=
      std::string::npos);
}

TEST_CASE("a server error is printed as its message with a non-zero exit", "[cli]") {
  ApiFixture f;
  auto missing = Runner(f.base(), "cancel 01ARZ3NDEKTSV4RRFFQ69G5FAV");
  CHECK(missing.code == 1);
  CHECK(missing.err.find("no task with id 01ARZ3NDEKTSV4RRFFQ69G5FAV") != std::string::npos);
  auto too_many = Runner(f.base(), "scale 999");
  CHECK(too_many.code == 1);
  CHECK(too_many.err.find("count") != std::string::npos);
  auto down = Runner("http://127.0.0.1:1", "status");
  CHECK(down.code == 1);
  CHECK(down.err.find("cannot reach") != std::string::npos);
}

TEST_CASE("the token is sent from --token or RUNNER_API_TOKEN", "[cli][auth]") {
  ApiFixture f("tok");
  auto denied = Runner(f.base(), "status");
  CHECK(denied.code == 1);
  CHECK(denied.err.find("token") != std::string::npos);
  CHECK(Runner(f.base(), "status", "tok").code == 0);
  CHECK(Runner(f.base(), "status --token tok").code == 0);
}

TEST_CASE("every command has --help and bad usage exits 2", "[cli]") {
  for (const char* cmd : {"serve", "submit", "status", "list", "workers", "scale", "stop", "start",
                          "logs", "cancel", "migrate"}) {
    auto r = Runner("http://127.0.0.1:1", std::string(cmd) + " --help");
    INFO(cmd);
    CHECK(r.code == 0);
    CHECK(r.out.find("--help") != std::string::npos);
  }
  CHECK(Runner("http://127.0.0.1:1", "serve --workers many").code == 2);
  CHECK(Runner("http://127.0.0.1:1", "serve --workers many").err.find("--workers") !=
        std::string::npos);
}

TEST_CASE("serve refuses a public listen without a token", "[cli][auth]") {
  runner::testing::TestDatabase db;
  auto r = Runner("http://127.0.0.1:1",
                  "serve --listen 0.0.0.0:0 --mode process --database-url '" + db.url() + "'");
  CHECK(r.code == 1);
  CHECK(r.err.find("--api-token") != std::string::npos);
  // Refused before it touched the database: no schema, so no node, worker or claim.
  pqxx::connection conn(db.conninfo());
  pqxx::work tx(conn);
  CHECK(tx.exec1("SELECT to_regclass('schema_migrations') IS NULL")[0].as<bool>());
  CHECK(tx.exec1("SELECT to_regclass('tasks') IS NULL")[0].as<bool>());
}

TEST_CASE("migrate applies the schema and exits", "[cli]") {
  runner::testing::TestDatabase db;
  auto r = Runner("http://127.0.0.1:1", "migrate --database-url '" + db.url() + "'");
  INFO(r.err);
  CHECK(r.code == 0);
  // Every migration is recorded, and the queue's tables are there to use.
  pqxx::connection conn(db.conninfo());
  pqxx::work tx(conn);
  std::vector<int> applied;
  for (const auto& row : tx.exec("SELECT version FROM schema_migrations ORDER BY version")) {
    applied.push_back(row[0].as<int>());
  }
  std::vector<int> expected;
  for (const auto& m : runner::queue::Migrations()) expected.push_back(m.version);
  CHECK(applied == expected);
  for (const char* table : {"tasks", "task_logs", "nodes", "workers", "events"}) {
    INFO(table);
    CHECK(tx.exec_params1("SELECT to_regclass($1) IS NOT NULL", table)[0].as<bool>());
  }
  CHECK(tx.exec1("SELECT count(*) FROM tasks")[0].as<int>() == 0);
}

TEST_CASE("schedule add, schedules, pause, resume, trigger and rm drive a schedule", "[cli]") {
  ApiFixture f;
  auto add = Runner(f.base(),
                    "schedule add nightly --cron '30 3 * * *' --timezone Europe/Berlin "
                    "--queue reports -- sh -c 'echo report'");
  INFO(add.err);
  REQUIRE(add.code == 0);
  CHECK(add.out.find("nightly: next run 20") == 0);
  auto list = Runner(f.base(), "schedules");
  CHECK(list.code == 0);
  CHECK(list.out.find("30 3 * * *") != std::string::npos);
  CHECK(list.out.find("Europe/Berlin") != std::string::npos);

  auto pause = Runner(f.base(), "schedule pause nightly");
  CHECK(pause.code == 0);
  auto got = f.Json(f.http().Get("/api/v1/schedules/nightly"));
  CHECK(got.at("paused").as_bool());
  CHECK(got.at("task").at("queue").as_string() == "reports");
  CHECK(Runner(f.base(), "schedule resume nightly").code == 0);
  CHECK_FALSE(f.Json(f.http().Get("/api/v1/schedules/nightly")).at("paused").as_bool());

  auto trigger = Runner(f.base(), "schedule trigger nightly");
  CHECK(trigger.code == 0);
  const std::string id = Trim(trigger.out);
  REQUIRE(id.size() == 26);
  auto task = f.Json(f.http().Get(("/api/v1/tasks/" + id).c_str()));
  CHECK(task.at("schedule").as_string() == "nightly");

  auto both = Runner(f.base(), "schedule add x --cron '@daily' --every 5 -- true");
  CHECK(both.code == 2);
  CHECK(both.err.find("exactly one of --cron") != std::string::npos);
  auto bad = Runner(f.base(), "schedule add x --cron '61 * * * *' -- true");
  CHECK(bad.code == 1);
  CHECK(bad.err.find("cron: minute") != std::string::npos);
  // The API's refusals reach the user with the field named, and change nothing.
  struct Refused {
    const char* args;
    const char* says;
  };
  for (const auto& r :
       {Refused{"schedule add x --every 0 -- true", "every:"},
        Refused{"schedule add x --cron '*/0 * * * *' -- true", "step 0"},
        Refused{"schedule add a/b --every 5 -- true", "name:"},
        Refused{"schedule add x --cron '@daily' --timezone Mars/Base -- true", "timezone:"},
        Refused{"schedule add nightly --every 5 -- true", "a schedule named nightly"},
        Refused{"schedule pause missing", "no schedule named missing"},
        Refused{"schedule trigger missing", "no schedule named missing"}}) {
    INFO(r.args);
    auto out = Runner(f.base(), r.args);
    CHECK(out.code == 1);
    CHECK(out.err.find(r.says) != std::string::npos);
  }
  auto not_number = Runner(f.base(), "schedule add x --every soon -- true");
  CHECK(not_number.code != 0);
  CHECK(f.Json(f.http().Get("/api/v1/schedules")).at("schedules").as_array().size() == 1);

  // A schedule's secret survives pause and resume (which write the schedule
  // back with its secrets' names) and reaches the task it makes.
  auto secret = Runner(f.base(),
                       "schedule add deploy --every 3600 --secret TOKEN=hunter2-cli -- "
                       "sh -c 'echo t:$TOKEN'");
  INFO(secret.err);
  REQUIRE(secret.code == 0);
  CHECK(Runner(f.base(), "schedule pause deploy").code == 0);
  CHECK(Runner(f.base(), "schedule resume deploy").code == 0);
  auto deploy = f.http().Get("/api/v1/schedules/deploy");
  REQUIRE(deploy);
  CHECK(deploy->body.find("hunter2") == std::string::npos);
  CHECK(f.Json(deploy).at("task").at("secrets").as_array() == boost::json::array{"TOKEN"});
  auto fired = Runner(f.base(), "schedule trigger deploy");
  REQUIRE(fired.code == 0);
  const std::string deploy_id = Trim(fired.out);
  REQUIRE(WaitFor([&] { return f.StateOf(deploy_id) == "succeeded"; }, 30s));
  auto logs = f.http().Get(("/api/v1/tasks/" + deploy_id + "/logs").c_str());
  REQUIRE(logs);
  CHECK(logs->body.find("t:***") != std::string::npos);

  CHECK(Runner(f.base(), "schedule rm nightly").code == 0);
  auto gone = Runner(f.base(), "schedule rm nightly");
  CHECK(gone.code == 1);
  CHECK(gone.err.find("no schedule named nightly") != std::string::npos);
}

TEST_CASE("a refused start creates nothing: no data dir, no database, no pool", "[cli][auth]") {
  runner::testing::TempDir dir;
  const auto data_dir = dir.path() / "fresh";
  auto r = Runner("http://127.0.0.1:1",
                  "serve --listen 0.0.0.0:0 --mode process --data-dir " + data_dir.string());
  CHECK(r.code == 1);
  CHECK(r.err.find("--api-token") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(data_dir));
  // An empty token file is refused as bad configuration, before anything starts.
  std::ofstream(dir.path() / "token") << "\n";
  auto empty =
      Runner("http://127.0.0.1:1", "serve --listen 127.0.0.1:0 --data-dir " + data_dir.string() +
                                       " --api-token-file " + (dir.path() / "token").string());
  CHECK(empty.code == 2);
  CHECK(empty.err.find("empty") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(data_dir));
}

TEST_CASE("a listen address in use fails the start before the pool or the scheduler starts",
          "[cli][serve]") {
  // Another process holds the port (say, a second runner on this host).
  int held = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(held >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(held, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(held, 8) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(held, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  const std::string port = std::to_string(ntohs(addr.sin_port));
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_held{held};

  runner::testing::TestDatabase db;
  runner::testing::TempDir dir;
  REQUIRE(Runner("http://127.0.0.1:1", "migrate --database-url '" + db.url() + "'").code == 0);
  auto r = Runner("http://127.0.0.1:1", "serve --listen 127.0.0.1:" + port +
                                            " --mode process --data-dir " + dir.path().string() +
                                            " --database-url '" + db.url() + "'");
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK(r.err.find("cannot listen on 127.0.0.1:" + port) != std::string::npos);
  // On a shared database a started pool could have claimed a task first.
  CHECK((r.out + r.err).find("pool started") == std::string::npos);
  pqxx::connection conn(db.conninfo());
  pqxx::work tx(conn);
  CHECK(tx.exec1("SELECT count(*) FROM events WHERE kind = 'worker.started'")[0].as<int>() == 0);
  CHECK(tx.exec1("SELECT count(*) FROM workers")[0].as<int>() == 0);
}

TEST_CASE("queue and schedule output prints numbers as plain decimals", "[cli][json]") {
  ApiFixture f;
  auto set = Runner(f.base(), "queue set q1 --rate 10/0.5");
  INFO(set.out << set.err);
  REQUIRE(set.code == 0);
  CHECK(set.out.find("10/0.5s") != std::string::npos);
  auto queues = Runner(f.base(), "--json queues");
  CHECK(queues.out.find("\"per\":0.5") != std::string::npos);
  REQUIRE(Runner(f.base(), "schedule add half --every 1.5 -- true").code == 0);
  auto schedules = Runner(f.base(), "--json schedules");
  CHECK(schedules.out.find("\"every\":1.5") != std::string::npos);
  for (const auto& out : {set.out, queues.out, schedules.out}) {
    CHECK(out.find("E-1") == std::string::npos);
    CHECK(out.find("E0") == std::string::npos);
  }
}

TEST_CASE("--server, --token and --json work before the subcommand too", "[cli]") {
  ApiFixture f("tok");
  auto r = Runner("http://127.0.0.1:1", "--server " + f.base() + " --token tok --json status");
  INFO(r.err);
  CHECK(r.code == 0);
  CHECK(r.out.rfind("{", 0) == 0);
  auto after = Runner("http://127.0.0.1:1", "status --server " + f.base() + " --token=tok");
  CHECK(after.code == 0);
  // A nested subcommand takes them after its last word (`queue` has no --server).
  auto nested = Runner("http://127.0.0.1:1",
                       "--server " + f.base() + " --token tok queue set cli-front --max-running 2");
  INFO(nested.err);
  CHECK(nested.code == 0);
  auto shown = Runner("http://127.0.0.1:1", "--server " + f.base() + " --token tok --json queues");
  CHECK(shown.code == 0);
  CHECK(shown.out.find("\"cli-front\"") != std::string::npos);
}

TEST_CASE("submit --secret takes NAME=VALUE or the value of an environment variable",
          "[cli][secrets]") {
  ApiFixture f;
  auto r = Runner(f.base(),
                  "submit --wait --json --secret A=hunter2-alpha --secret B -- sh -c "
                  "'echo \"$A $B\"'",
                  "");
  // B comes from the CLI's own environment.
  auto with_env = Runner(f.base(),
                         "submit --wait --json --secret A=hunter2-alpha --secret HOME -- sh -c "
                         "'echo \"$A\"; test -n \"$HOME\"'");
  INFO(with_env.err);
  CHECK(with_env.code == 0);
  CHECK(with_env.out.find("hunter2-alpha") == std::string::npos);
  CHECK(with_env.out.find("\"secrets\":[\"A\",\"HOME\"]") != std::string::npos);
  CHECK(r.code == 2);  // B is not set in the CLI's environment
  CHECK(r.err.find("--secret B") != std::string::npos);
}

TEST_CASE("the CLI shows a task's secret names and never a value: list, logs -f, the end event",
          "[cli][secrets]") {
  ApiFixture f;
  // The value printed whole, and split across two writes 0.3 s apart (cut
  // from $TOKEN: the command is shown back, so it must not hold the value).
  auto sub = Runner(f.base(),
                    "submit --json --secret TOKEN=hunter2-cli-value -- sh -c "
                    "'echo \"a:$TOKEN\"; printf \"b:%.8s\" \"$TOKEN\"; sleep 0.3; "
                    "echo \"${TOKEN#????????}\"'");
  INFO(sub.err);
  REQUIRE(sub.code == 0);
  const std::string id(boost::json::parse(sub.out).at("id").as_string());
  auto follow = Runner(f.base(), "logs -f " + id);
  INFO(follow.err);
  CHECK(follow.code == 0);
  CHECK(follow.out == "a:***\nb:***\n");
  auto follow_json = Runner(f.base(), "--json logs -f " + id);
  CHECK(follow_json.code == 0);
  CHECK(follow_json.out.find("hunter2") == std::string::npos);
  // The last line is the end event: the task, its secrets by name.
  std::string end = follow_json.out;
  while (!end.empty() && end.back() == '\n') end.pop_back();
  end = end.substr(end.rfind('\n') + 1);
  CHECK(boost::json::parse(end).at("secrets").as_array() == boost::json::array{"TOKEN"});
  CHECK(Runner(f.base(), "logs " + id).out == "a:***\nb:***\n");
  for (const std::string& args : {std::string("--json list"), std::string("list"),
                                  "--json logs " + id, std::string("--json status")}) {
    INFO(args);
    auto r = Runner(f.base(), args);
    CHECK(r.code == 0);
    CHECK(r.out.find("hunter2") == std::string::npos);
    CHECK(r.err.find("hunter2") == std::string::npos);
  }
  auto list = Runner(f.base(), "--json list");
  CHECK(list.out.find("\"secrets\":[\"TOKEN\"]") != std::string::npos);
}
