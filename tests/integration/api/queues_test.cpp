// The queue routes (issue #18) over HTTP, every answer checked against
// docs/openapi.yaml, on a real node: a paused queue's task waits, resume runs it.

#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>

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

namespace {

// The value of one series in a /metrics scrape ("name{labels}"), nullopt when
// it is absent.
std::optional<double> Sample(const std::string& text, const std::string& series) {
  const std::string key = "\n" + series + " ";
  auto pos = text.find(key);
  if (pos == std::string::npos) return std::nullopt;
  pos += key.size();
  return std::stod(text.substr(pos, text.find('\n', pos) - pos));
}

}  // namespace

TEST_CASE("queues: /metrics has each queue's queued, running, throttled by reason and starts",
          "[api][queues][metrics]") {
  ApiFixture f;
  auto scrape = [&] {
    auto res = f.http().Get("/metrics");
    if (!res || res->status != 200) throw std::runtime_error("no /metrics");
    return res->body;
  };
  auto put = [&](const char* path, const char* body) {
    auto res = f.http().Put(path, body, "application/json");
    REQUIRE(res);
    REQUIRE(res->status == 200);
  };
  auto tasks = [](const std::string& q, const std::string& state) {
    return "runner_queue_tasks{queue=\"" + q + "\",state=\"" + state + "\"}";
  };
  auto throttled = [](const std::string& q, const std::string& reason) {
    return "runner_queue_throttled{queue=\"" + q + "\",reason=\"" + reason + "\"}";
  };
  auto starts = [](const std::string& q) {
    return "runner_queue_starts_total{queue=\"" + q + "\"}";
  };
  put("/api/v1/queues/held", R"({"paused": true})");
  put("/api/v1/queues/rated", R"({"rate_limit": {"count": 1, "per": 600}})");
  put("/api/v1/queues/capped", R"({"max_running": 1})");

  f.Submit(R"({"command":["true"],"queue":"held"})");
  const std::string rated_first = f.Submit(R"({"command":["true"],"queue":"rated"})");
  REQUIRE(WaitFor([&] { return f.StateOf(rated_first) == "succeeded"; }, 20s));
  f.Submit(R"({"command":["true"],"queue":"rated"})");
  // Both workers busy: one capped task runs and holds back the other; the
  // queue without a policy runs its task.
  const std::string long_one = f.Submit(R"({"command":["sleep","3"],"queue":"capped"})");
  const std::string waiting = f.Submit(R"({"command":["true"],"queue":"capped"})");
  const std::string plain = f.Submit(R"({"command":["sleep","3"],"queue":"plain"})");
  std::string text;
  const bool seen = WaitFor(
      [&] {
        text = scrape();
        return Sample(text, tasks("capped", "running")) == 1.0 &&
               Sample(text, tasks("capped", "queued")) == 1.0 &&
               Sample(text, tasks("plain", "running")) == 1.0;
      },
      10s, 20ms);
  INFO(text);
  REQUIRE(seen);
  CHECK(Sample(text, throttled("capped", "max_running")) == 1.0);
  CHECK(Sample(text, throttled("capped", "rate_limit")) == 0.0);
  CHECK(Sample(text, throttled("capped", "paused")) == 0.0);
  CHECK(Sample(text, throttled("rated", "rate_limit")) == 1.0);
  CHECK(Sample(text, tasks("rated", "queued")) == 1.0);
  CHECK(Sample(text, throttled("held", "paused")) == 1.0);
  CHECK(Sample(text, throttled("plain", "max_running")) == 0.0);

  REQUIRE(WaitFor([&] { return f.StateOf(waiting) == "succeeded"; }, 20s));
  REQUIRE(WaitFor([&] { return f.StateOf(plain) == "succeeded"; }, 20s));
  CHECK(f.StateOf(long_one) == "succeeded");
  text = scrape();
  INFO(text);
  CHECK(Sample(text, tasks("capped", "running")) == 0.0);
  CHECK(Sample(text, tasks("capped", "queued")) == 0.0);
  CHECK(Sample(text, throttled("capped", "max_running")) == 0.0);
  // The queue without a policy left the list: it reads 0, not its last value.
  CHECK(Sample(text, tasks("plain", "running")) == 0.0);
  CHECK(Sample(text, throttled("held", "paused")) == 1.0);
  CHECK(Sample(text, tasks("held", "queued")) == 1.0);
  CHECK(Sample(text, throttled("rated", "rate_limit")) == 1.0);
  CHECK(Sample(text, starts("capped")) == 2.0);
  CHECK(Sample(text, starts("plain")) == 1.0);
  CHECK(Sample(text, starts("rated")) == 1.0);
  CHECK_FALSE(Sample(text, starts("held")).has_value());
  CHECK(text.find("# TYPE runner_queue_starts_total counter") != std::string::npos);
}
