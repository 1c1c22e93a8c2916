#include <catch2/catch.hpp>
#include <pqxx/pqxx>

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
