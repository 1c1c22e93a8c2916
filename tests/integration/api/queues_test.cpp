// The queue routes (issue #18) over HTTP, every answer checked against
// docs/openapi.yaml, on a real node: a paused queue's task waits, resume runs it.

#include <catch2/catch.hpp>
#include <chrono>

#include "tests/integration/api/api_fixture.h"

using runner::testing::ApiFixture;
using runner::testing::WaitFor;
using namespace std::chrono_literals;

TEST_CASE("queues: pause holds a task, resume runs it, the group is kept and filtered",
          "[api][queues]") {
  ApiFixture f;
  auto put = f.http().Put("/api/v1/queues/q1", R"({"paused": true, "max_running": 2})",
                          "application/json");
  REQUIRE(put);
  REQUIRE(put->status == 200);
  auto q = f.Json(put).as_object();
  CHECK(q.at("name").as_string() == "q1");
  CHECK(q.at("paused").as_bool());
  CHECK(q.at("max_running").as_int64() == 2);
  CHECK(q.at("max_running_per_group").is_null());
  CHECK(q.at("rate_limit").is_null());
  CHECK(q.at("throttled").as_string() == "paused");

  auto sub = f.http().Post("/api/v1/tasks",
                           R"({"command":["sh","-c","echo hi"],"queue":"q1","group":"team-a"})",
                           "application/json");
  REQUIRE(sub);
  REQUIRE(sub->status == 201);
  const std::string id(f.Json(sub).at("id").as_string());
  CHECK(f.Json(sub).at("group").as_string() == "team-a");
  auto free_task =
      f.http().Post("/api/v1/tasks", R"({"command":["sh","-c","echo hi"]})", "application/json");
  REQUIRE(free_task->status == 201);
  CHECK(f.Json(free_task).at("group").is_null());
  const std::string free_id(f.Json(free_task).at("id").as_string());
  // The other queue's task runs; the paused one is still queued after it.
  REQUIRE(WaitFor([&] { return f.StateOf(free_id) == "succeeded"; }, 20s));
  CHECK(f.StateOf(id) == "queued");

  auto listed = f.http().Get("/api/v1/queues");
  REQUIRE(listed->status == 200);
  auto queues = f.Json(listed).at("queues").as_array();
  REQUIRE(queues.size() == 1);
  CHECK(queues[0].at("queued").as_int64() == 1);
  CHECK(queues[0].at("groups").as_int64() == 1);

  auto by_group = f.http().Get("/api/v1/tasks?group=team-a");
  REQUIRE(by_group->status == 200);
  REQUIRE(f.Json(by_group).at("tasks").as_array().size() == 1);

  auto resume = f.http().Put("/api/v1/queues/q1", R"({"max_running": 2})", "application/json");
  REQUIRE(resume->status == 200);
  CHECK_FALSE(f.Json(resume).at("paused").as_bool());
  REQUIRE(WaitFor([&] { return f.StateOf(id) == "succeeded"; }, 20s));

  auto del = f.http().Delete("/api/v1/queues/q1");
  REQUIRE(del->status == 204);
  CHECK(f.http().Delete("/api/v1/queues/q1")->status == 404);
  CHECK(f.http().Get("/api/v1/queues/q1")->status == 404);
}

TEST_CASE("queues: bad policies are 400 naming the field", "[api][queues]") {
  ApiFixture f;
  auto bad = [&](const char* body, const std::string& field) {
    auto res = f.http().Put("/api/v1/queues/q1", body, "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    auto err = f.Json(res).at("error").as_object();
    CHECK(err.at("code").as_string() == "validation_failed");
    CHECK(std::string(err.at("message").as_string()).find(field) != std::string::npos);
  };
  bad(R"({"max_running": 0})", "max_running");
  bad(R"({"max_running_per_group": -1})", "max_running_per_group");
  bad(R"({"rate_limit": {"count": 10, "per": 0}})", "rate_limit.per");
  bad(R"({"rate_limit": {"count": 1.5, "per": 1}})", "rate_limit.count");
  bad(R"({"burst": 3})", "burst");
  bad(R"({"paused": "yes"})", "paused");
  auto sub = f.http().Post("/api/v1/tasks", R"({"command":["true"],"group":"bad group"})",
                           "application/json");
  REQUIRE(sub->status == 400);
  CHECK(std::string(f.Json(sub).at("error").at("message").as_string()).find("group") !=
        std::string::npos);
}
