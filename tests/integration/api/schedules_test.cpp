#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "tests/integration/api/api_fixture.h"

namespace json = boost::json;
using namespace std::chrono_literals;
using runner::testing::ApiFixture;
using runner::testing::WaitFor;

namespace {

constexpr const char* kNightly =
    R"({"name":"nightly-report","cron":"30 3 * * *","timezone":"Europe/Berlin",)"
    R"("task":{"command":["sh","-c","echo report"]},"overlap":"skip","catch_up":"none"})";

std::string MessageOf(ApiFixture& f, const httplib::Result& res) {
  return std::string(f.Json(res).at("error").at("message").as_string());
}

}  // namespace

TEST_CASE("a schedule is created, listed, read, replaced and deleted over the API",
          "[api][schedules]") {
  ApiFixture f;
  auto res = f.http().Post("/api/v1/schedules", kNightly, "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  auto made = f.Json(res).as_object();
  CHECK(made.at("name").as_string() == "nightly-report");
  CHECK(made.at("cron").as_string() == "30 3 * * *");
  CHECK(made.at("every").is_null());
  CHECK(made.at("timezone").as_string() == "Europe/Berlin");
  CHECK(made.at("task").at("command").as_array().size() == 3);
  CHECK(made.at("paused").as_bool() == false);
  CHECK(made.at("next_run_at").is_string());
  CHECK(made.at("last_run_at").is_null());
  CHECK(made.at("last_task_id").is_null());

  // The same name again: 409.
  res = f.http().Post("/api/v1/schedules", kNightly, "application/json");
  REQUIRE(res);
  CHECK(res->status == 409);
  CHECK(f.ErrorCode(res) == "conflict");

  res = f.http().Get("/api/v1/schedules");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  CHECK(f.Json(res).at("schedules").as_array().size() == 1);

  res = f.http().Put("/api/v1/schedules/nightly-report",
                     R"({"every":3600,"task":{"command":["true"]},"paused":true})",
                     "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  auto replaced = f.Json(res).as_object();
  CHECK(replaced.at("cron").is_null());
  CHECK(replaced.at("every").as_int64() == 3600);
  CHECK(replaced.at("paused").as_bool());
  CHECK(replaced.at("next_run_at").is_string());  // paused still shows the next slot
  CHECK(replaced.at("created_at") == made.at("created_at"));

  res = f.http().Delete("/api/v1/schedules/nightly-report");
  REQUIRE(res);
  CHECK(res->status == 204);
  res = f.http().Get("/api/v1/schedules/nightly-report");
  REQUIRE(res);
  CHECK(res->status == 404);
  res = f.http().Delete("/api/v1/schedules/nightly-report");
  REQUIRE(res);
  CHECK(res->status == 404);

  // Every change is an event.
  REQUIRE(WaitFor(
      [&] {
        auto events = f.node().store().EventsAfter(0, 1000);
        int seen = 0;
        for (const auto& e : *events) {
          seen += e.kind == "schedule.created" || e.kind == "schedule.updated" ||
                  e.kind == "schedule.deleted";
        }
        return seen == 3;
      },
      5s));
}

TEST_CASE("a bad schedule is refused with a message naming the field", "[api][schedules]") {
  ApiFixture f;
  struct Case {
    const char* body;
    const char* field;
  };
  const Case cases[] = {
      {R"({"name":"x","cron":"61 * * * *","task":{"command":["true"]}})", "cron: minute"},
      {R"({"name":"x","cron":"* * * * *","every":5,"task":{"command":["true"]}})", "cron, every"},
      {R"({"name":"x","task":{"command":["true"]}})", "cron, every"},
      {R"({"name":"x","cron":"@daily","timezone":"Mars/Olympus","task":{"command":["true"]}})",
       "timezone"},
      {R"({"name":"x","every":0.5,"task":{"command":["true"]}})", "every"},
      {R"({"name":"x","every":5,"task":{"command":[]}})", "task.command"},
      {R"({"name":"x","every":5,"task":{"command":["true"],"priority":5000}})", "task.priority"},
      {R"({"name":"x","every":5})", "task"},
      {R"({"name":"bad name!","every":5,"task":{"command":["true"]}})", "name"},
      {R"({"name":"x","every":5,"overlap":"sometimes","task":{"command":["true"]}})", "overlap"},
      {R"({"name":"x","every":5,"catch_up":"some","task":{"command":["true"]}})", "catch_up"},
      {R"({"name":"x","every":5,"colour":"red","task":{"command":["true"]}})", "colour"},
      // The rules of a task's secrets hold for a schedule's.
      {R"({"name":"x","every":5,"task":{"command":["true"],"secrets":{"1X":"hunter2-x"}}})",
       "task.secrets"},
  };
  for (const auto& c : cases) {
    INFO(c.body);
    auto res = f.http().Post("/api/v1/schedules", c.body, "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(f.ErrorCode(res) == "validation_failed");
    CHECK(MessageOf(f, res).rfind(c.field, 0) == 0);
  }
  auto res = f.http().Get("/api/v1/schedules");
  CHECK(f.Json(res).at("schedules").as_array().empty());
}

TEST_CASE("a schedule's tasks carry its name and slot and can be listed by schedule",
          "[api][schedules]") {
  ApiFixture f;
  auto res =
      f.http().Post("/api/v1/schedules",
                    R"({"name":"tick","every":1,"overlap":"allow","task":{"command":["true"]}})",
                    "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  // The node's own scheduler fires it.
  REQUIRE(WaitFor(
      [&] {
        auto page = f.Json(f.http().Get("/api/v1/tasks?schedule=tick"));
        return page.at("tasks").as_array().size() >= 2;
      },
      10s));
  auto page = f.Json(f.http().Get("/api/v1/tasks?schedule=tick"));
  for (const auto& t : page.at("tasks").as_array()) {
    CHECK(t.at("schedule").as_string() == "tick");
    CHECK(t.at("scheduled_for").is_string());
  }
  // Manual trigger: a task now, carrying the schedule.
  res = f.http().Post("/api/v1/schedules/tick/trigger", "", "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  CHECK(f.Json(res).at("schedule").as_string() == "tick");
  res = f.http().Post("/api/v1/schedules/nope/trigger", "", "application/json");
  REQUIRE(res);
  CHECK(res->status == 404);
  // Other tasks say null, and are not in the schedule's list.
  std::string id = f.Submit(R"({"command":["true"]})");
  auto plain = f.Json(f.http().Get(("/api/v1/tasks/" + id).c_str()));
  CHECK(plain.at("schedule").is_null());
  CHECK(plain.at("scheduled_for").is_null());
  auto listed = f.http().Get("/api/v1/tasks?schedule=tick");
  REQUIRE(listed);
  CHECK(listed->body.find(id) == std::string::npos);
  CHECK(f.Json(f.http().Get("/api/v1/tasks?schedule=nope")).at("tasks").as_array().empty());
  REQUIRE(f.http().Delete("/api/v1/schedules/tick"));
  auto metrics = f.http().Get("/metrics");
  REQUIRE(metrics);
  CHECK(metrics->body.find("runner_schedule_fired_total") != std::string::npos);
  CHECK(metrics->body.find("runner_schedule_lag_seconds") != std::string::npos);
}

TEST_CASE("a schedule's secrets reach its tasks but never an answer", "[api][schedules][secrets]") {
  ApiFixture f;
  const std::string value = "hunter2-scheduled";
  const std::string body =
      R"({"name":"deploy","every":3600,"overlap":"allow","task":{"command":["sh","-c",)"
      R"("echo \"t:$TOKEN\""],"secrets":{"TOKEN":")" +
      value + R"("}}})";
  auto res = f.http().Post("/api/v1/schedules", body, "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  CHECK(res->body.find(value) == std::string::npos);
  CHECK(f.Json(res).at("task").at("secrets").as_array() == json::array{"TOKEN"});
  res = f.http().Get("/api/v1/schedules/deploy");
  REQUIRE(res);
  CHECK(res->body.find(value) == std::string::npos);
  CHECK(f.Json(res).at("task").at("secrets").as_array() == json::array{"TOKEN"});
  // Sealed at rest: the value is nowhere in the schedule's row.
  {
    pqxx::connection c(f.db().conninfo());
    pqxx::nontransaction tx(c);
    CHECK(tx.exec1("SELECT count(*) FROM schedules WHERE schedules::text LIKE '%" + value + "%'")[0]
              .as<int>() == 0);
  }
  res = f.http().Post("/api/v1/schedules/deploy/trigger", "", "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  CHECK(res->body.find(value) == std::string::npos);
  const auto task = f.Json(res).as_object();
  CHECK(task.at("secrets").as_array() == json::array{"TOKEN"});
  const std::string id(task.at("id").as_string());
  REQUIRE(WaitFor([&] { return f.StateOf(id) == "succeeded"; }, 30s));
  // The task had the value (masked in its output), not an empty variable.
  auto logs = f.http().Get(("/api/v1/tasks/" + id + "/logs").c_str());
  REQUIRE(logs);
  CHECK(logs->body.find("t:***") != std::string::npos);
  CHECK(logs->body.find(value) == std::string::npos);
  // Read and written back (as `runner schedule pause` and the dashboard do):
  // the names keep the stored values.
  auto shown = f.Json(f.http().Get("/api/v1/schedules/deploy")).as_object();
  json::object back;
  for (const char* key : {"cron", "every", "timezone", "task", "overlap", "catch_up"}) {
    back[key] = shown.at(key);
  }
  back["paused"] = true;
  res = f.http().Put("/api/v1/schedules/deploy", json::serialize(back), "application/json");
  REQUIRE(res);
  INFO(res->body);
  REQUIRE(res->status == 200);
  CHECK(f.Json(res).at("task").at("secrets").as_array() == json::array{"TOKEN"});
  res = f.http().Post("/api/v1/schedules/deploy/trigger", "", "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  const std::string kept_id(f.Json(res).at("id").as_string());
  REQUIRE(WaitFor([&] { return f.StateOf(kept_id) == "succeeded"; }, 30s));
  logs = f.http().Get(("/api/v1/tasks/" + kept_id + "/logs").c_str());
  REQUIRE(logs);
  CHECK(logs->body.find("t:***") != std::string::npos);
  // A name with no stored value, and names on POST, are refused.
  res = f.http().Put("/api/v1/schedules/deploy",
                     R"({"every":3600,"task":{"command":["true"],"secrets":["OTHER"]}})",
                     "application/json");
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(MessageOf(f, res).rfind("task.secrets: OTHER has no stored value", 0) == 0);
  res = f.http().Post("/api/v1/schedules",
                      R"({"name":"y","every":60,"task":{"command":["true"],"secrets":["TOKEN"]}})",
                      "application/json");
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(MessageOf(f, res).rfind("task.secrets", 0) == 0);
  // PUT replaces them (a PUT without secrets drops them).
  res = f.http().Put("/api/v1/schedules/deploy", R"({"every":3600,"task":{"command":["true"]}})",
                     "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  CHECK_FALSE(f.Json(res).at("task").as_object().contains("secrets"));
  res = f.http().Post("/api/v1/schedules/deploy/trigger", "", "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  CHECK(f.Json(res).at("secrets").as_array().empty());
}

TEST_CASE("hostile and mistaken schedule requests get a clear 400, 404 or 409 and change nothing",
          "[api][schedules]") {
  ApiFixture f;
  auto res = f.http().Post("/api/v1/schedules",
                           R"({"name":"keep","every":3600,"task":{"command":["true"]}})",
                           "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  const std::string before = f.http().Get("/api/v1/schedules/keep")->body;

  std::string huge_list = "0";
  for (int i = 0; i < 100000; ++i) huge_list += ",0";
  const std::string task = R"("task":{"command":["true"]})";
  struct Case {
    std::string body;
    std::string code;
    std::string message;  // the start of the message
  };
  const std::vector<Case> cases = {
      {R"({"name":"x","cron":"*/0 * * * *",)" + task + "}", "validation_failed",
       "cron: minute: step 0 is out of range 1-59"},
      {R"({"name":"x","cron":"60 * * * *",)" + task + "}", "validation_failed",
       "cron: minute: 60 is out of range 0-59"},
      {R"({"name":"x","cron":")" + huge_list + R"( * * * *",)" + task + "}", "validation_failed",
       "cron: " + std::to_string(huge_list.size() + 8) + " characters; at most 1000"},
      {R"({"name":"x","every":1e300,)" + task + "}", "validation_failed", "every:"},
      {R"({"name":"x","every":0,)" + task + "}", "validation_failed", "every:"},
      {R"({"name":"x","every":-1,)" + task + "}", "validation_failed", "every:"},
      {R"({"name":"x","every":"5",)" + task + "}", "validation_failed", "every: must be a number"},
      {R"({"name":"x","every":true,)" + task + "}", "validation_failed", "every: must be a number"},
      {R"({"name":"a/b","every":5,)" + task + "}", "validation_failed", "name:"},
      {R"({"name":")" + std::string(200, 'n') + R"(","every":5,)" + task + "}", "validation_failed",
       "name:"},
      {R"({"name":5,"every":5,)" + task + "}", "validation_failed", "name: must be a string"},
      {R"({"name":"..","every":5,)" + task + "}", "validation_failed", "name: '..' cannot"},
      {R"({"name":"x","every":5,"retries":3,)" + task + "}", "validation_failed", "retries:"},
      {R"({"name":"x","every":5,"task":{"command":["true"],"bogus":1}})", "validation_failed",
       "task.bogus: unknown field"},
      {R"({"name":"x","every":5,"timezone":")" + std::string(5000, 'Z') + R"(",)" + task + "}",
       "validation_failed", "timezone: 5000 characters"},
      {R"({"name":"x","every":5,"paused":"yes",)" + task + "}", "validation_failed", "paused:"},
      {"not json", "bad_request", "the body must be a JSON object"},
      {"[]", "bad_request", "the body must be a JSON object"},
      // The name exists: 409, whatever else the body says.
      {R"({"name":"keep","cron":"@daily",)" + task + "}", "conflict", "a schedule named keep"},
  };
  for (const auto& c : cases) {
    INFO(c.body.substr(0, 200));
    res = f.http().Post("/api/v1/schedules", c.body, "application/json");
    REQUIRE(res);
    CHECK(res->status == (c.code == "conflict" ? 409 : 400));
    CHECK(f.ErrorCode(res) == c.code);
    CHECK(MessageOf(f, res).rfind(c.message, 0) == 0);
    CHECK(res->body.size() < 2000);  // nothing huge is echoed back
  }

  // PUT: a body that disagrees with the path, a bad one, and a missing schedule.
  res = f.http().Put("/api/v1/schedules/keep", R"({"name":"other","every":5,)" + task + "}",
                     "application/json");
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(MessageOf(f, res).rfind("name: must match the name in the path", 0) == 0);
  res = f.http().Put("/api/v1/schedules/keep", R"({"cron":"61 * * * *",)" + task + "}",
                     "application/json");
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(MessageOf(f, res).rfind("cron: minute: 61", 0) == 0);
  res = f.http().Put("/api/v1/schedules/keep", R"({"cron":"@daily","every":5,)" + task + "}",
                     "application/json");
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(MessageOf(f, res).rfind("cron, every:", 0) == 0);
  res =
      f.http().Put("/api/v1/schedules/missing", R"({"every":5,)" + task + "}", "application/json");
  REQUIRE(res);
  CHECK(res->status == 404);
  CHECK(f.ErrorCode(res) == "not_found");
  // Names that cannot exist are simply not found.
  for (const std::string& path :
       {std::string("/api/v1/schedules/a%2Fb"), "/api/v1/schedules/" + std::string(200, 'n'),
        std::string("/api/v1/schedules/nope")}) {
    INFO(path);
    CHECK(f.http().Get(path.c_str())->status == 404);
    CHECK(f.http().Delete(path.c_str())->status == 404);
    CHECK(f.http().Post((path + "/trigger").c_str(), "", "application/json")->status == 404);
  }
  // None of it changed the schedule, made another or made a task.
  CHECK(f.http().Get("/api/v1/schedules/keep")->body == before);
  CHECK(f.Json(f.http().Get("/api/v1/schedules")).at("schedules").as_array().size() == 1);
  CHECK(f.Json(f.http().Get("/api/v1/tasks")).at("tasks").as_array().empty());

  // every -> cron and back: the timing changes, the rest and created_at stay.
  res = f.http().Put("/api/v1/schedules/keep",
                     R"({"cron":"0 3 * * mon-fri","timezone":"America/New_York",)" + task + "}",
                     "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  CHECK(f.Json(res).at("every").is_null());
  CHECK(f.Json(res).at("cron").as_string() == "0 3 * * mon-fri");
  CHECK(f.Json(res).at("created_at") ==
        f.Json(f.http().Get("/api/v1/schedules/keep")).at("created_at"));

  // A paused schedule can still be run by hand: a task now, and it stays paused
  // with the same next slot.
  res = f.http().Put(
      "/api/v1/schedules/keep",
      R"({"cron":"0 3 * * mon-fri","timezone":"America/New_York","paused":true,)" + task + "}",
      "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  const auto paused = f.Json(res).as_object();
  CHECK(paused.at("next_run_at").is_string());
  res = f.http().Post("/api/v1/schedules/keep/trigger", "", "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  CHECK(f.Json(res).at("schedule").as_string() == "keep");
  CHECK(f.Json(res).at("scheduled_for").is_string());
  const auto after = f.Json(f.http().Get("/api/v1/schedules/keep")).as_object();
  CHECK(after.at("paused").as_bool());
  CHECK(after.at("next_run_at") == paused.at("next_run_at"));
  CHECK(after.at("last_task_id") == f.Json(res).at("id"));
  CHECK(f.Json(f.http().Get("/api/v1/tasks?schedule=keep")).at("tasks").as_array().size() == 1);
}
