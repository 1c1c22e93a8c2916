// The JSON the API's mappers write, checked against docs/openapi.yaml, and
// proof that the contract check fails when the two disagree.
#include "tests/support/openapi_contract.h"

#include <catch2/catch.hpp>

#include "api/openapi.h"
#include "api/schedule_json.h"
#include "api/task_json.h"

namespace json = boost::json;
using runner::testing::OpenApiContract;

namespace {

const OpenApiContract& Contract() { return OpenApiContract::Project(); }

runner::queue::Task FinishedTask() {
  runner::queue::Task t;
  t.id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
  t.state = runner::queue::TaskState::kFailed;
  t.command = {"sh", "-c", "exit 3"};
  t.image = "runner-task:latest";
  t.isolation_used = "process";
  t.env = {{"K", "v"}};
  t.limits.cpus = 0.5;
  t.limits.memory = 268435456;
  t.timeout = 600;
  t.attempt = 1;
  t.labels = {{"team", "a"}};
  t.worker_id = "01ARZ3NDEKTSV4RRFFQ69G5FAW";
  t.node_id = "01ARZ3NDEKTSV4RRFFQ69G5FAX";
  t.exit_code = 3;
  t.error = runner::queue::TaskError{"nonzero_exit", "exit code 3"};
  t.usage = runner::isolation::Usage{0.01, 1048576, 0.42};
  t.created_at = runner::queue::Clock::now();
  t.started_at = t.created_at;
  t.finished_at = t.created_at;
  return t;
}

}  // namespace

TEST_CASE("tasks as the server writes them match the contract's Task", "[api][openapi]") {
  CHECK(Contract().CheckSchema("Task", runner::api::TaskToJson(FinishedTask())) == "");
  runner::queue::Task queued;  // every optional field unset: nulls
  queued.id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
  queued.command = {"true"};
  CHECK(Contract().CheckSchema("Task", runner::api::TaskToJson(queued)) == "");
}

TEST_CASE("a task that drifts from the contract fails the check, naming the field",
          "[api][openapi]") {
  json::object task = runner::api::TaskToJson(FinishedTask());

  json::object extra = task;
  extra["secret_field"] = 1;  // the server grew a field the contract lacks
  CHECK_THAT(Contract().CheckSchema("Task", extra),
             Catch::Contains("'secret_field' is not in the contract"));

  json::object missing = task;
  missing.erase("cancel_requested");  // the server dropped one
  CHECK_THAT(Contract().CheckSchema("Task", missing),
             Catch::Contains("required field 'cancel_requested' is missing"));

  json::object wrong_type = task;
  wrong_type["timeout"] = "600";
  CHECK_THAT(Contract().CheckSchema("Task", wrong_type), Catch::Contains("$.timeout"));

  json::object bad_state = task;
  bad_state["state"] = "done";
  CHECK_THAT(Contract().CheckSchema("Task", bad_state), Catch::Contains("$.state"));

  json::object bad_limit = task;
  bad_limit["limits"].as_object()["memory"] = 1.5;  // an integer in the contract
  CHECK_THAT(Contract().CheckSchema("Task", bad_limit), Catch::Contains("$.limits.memory"));

  json::object bad_time = task;
  bad_time["created_at"] = "yesterday";
  CHECK_THAT(Contract().CheckSchema("Task", bad_time), Catch::Contains("date-time"));
}

TEST_CASE("status, workers, nodes and events as written match the contract", "[api][openapi]") {
  runner::NodeStatus node;
  node.node_id = "n1";
  node.mode = "process";
  node.pool.state = runner::PoolState::kRunning;
  node.pool.target = 2;
  node.pool.max = 8;
  node.resources.cpu_percent = 12.5;
  runner::queue::StateCounts counts{{runner::queue::TaskState::kQueued, 3}};
  json::object status = runner::api::StatusToJson(node, counts, 1);
  CHECK(Contract().CheckSchema("Status", status) == "");
  status["pool"].as_object().erase("max");
  CHECK_THAT(Contract().CheckSchema("Status", status), Catch::Contains("'max' is missing"));

  runner::queue::WorkerInfo w;
  w.id = "w1";
  w.node_id = "n1";
  CHECK(Contract().CheckSchema("Worker", runner::api::WorkerToJson(w)) == "");
  runner::queue::NodeInfo n;
  n.id = "n1";
  n.host = "h";
  n.mode = "docker";
  CHECK(Contract().CheckSchema("Node", runner::api::NodeToJson(n)) == "");
  runner::queue::Event e;
  e.id = 7;
  e.kind = "task.queued";
  e.task_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
  e.data_json = R"({"queue":"default"})";
  CHECK(Contract().CheckSchema("Event", runner::api::EventToJson(e)) == "");
  e.kind = "task.exploded";  // a kind the contract does not list
  CHECK_THAT(Contract().CheckSchema("Event", runner::api::EventToJson(e)),
             Catch::Contains("$.kind"));
}

TEST_CASE("schedules and their tasks as written match the contract", "[api][openapi]") {
  runner::schedule::Schedule s;
  s.spec.name = "nightly";
  s.spec.cron = "30 3 * * *";
  s.spec.timezone = "Europe/Berlin";
  s.spec.task_json = R"({"command":["true"]})";
  s.created_at = runner::queue::TimePoint(std::chrono::seconds(1700000000));
  s.next_run_at = s.created_at + std::chrono::hours(1);
  CHECK(Contract().CheckSchema("Schedule", runner::api::ScheduleToJson(s)) == "");
  s.spec.cron.reset();
  s.spec.every = 2.5;
  s.spec.paused = true;
  s.last_run_at = s.created_at;
  s.last_task_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
  CHECK(Contract().CheckSchema("Schedule", runner::api::ScheduleToJson(s)) == "");
  runner::queue::Task t;
  t.id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
  t.schedule = "nightly";
  t.scheduled_for = s.created_at;
  CHECK(Contract().CheckSchema("Task", runner::api::TaskToJson(t)) == "");
  runner::queue::Event e;
  e.id = 8;
  e.kind = "schedule.skipped";
  e.data_json = R"({"schedule":"nightly","reason":"overlap"})";
  CHECK(Contract().CheckSchema("Event", runner::api::EventToJson(e)) == "");
}

TEST_CASE("answers are checked by route, status and content type", "[api][openapi]") {
  const auto& c = Contract();
  std::string task = json::serialize(runner::api::TaskToJson(FinishedTask()));
  CHECK(c.CheckResponse("GET", "/api/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV", 200, "application/json",
                        task) == "");
  CHECK(c.CheckResponse("POST", "/api/v1/tasks", 201, "application/json", task) == "");
  // A status the route does not document.
  CHECK_THAT(c.CheckResponse("GET", "/api/v1/tasks/x", 418, "application/json", task),
             Catch::Contains("not among the contract's responses"));
  // The right status with the wrong body.
  CHECK_THAT(c.CheckResponse("GET", "/api/v1/status?x=1", 200, "application/json", task),
             Catch::Contains("GET /api/v1/status?x=1 -> 200"));
  // Errors must be the Error object with a known code.
  std::string err = runner::api::ErrorBody(runner::MakeError("not_found", "no task"));
  CHECK(c.CheckResponse("GET", "/api/v1/tasks/x", 404, "application/json", err) == "");
  std::string odd = runner::api::ErrorBody(runner::MakeError("timeout", "slow"));
  CHECK_THAT(c.CheckResponse("GET", "/api/v1/tasks/x", 503, "application/json", odd),
             Catch::Contains("$.error.code"));
  // A media type the response does not have.
  CHECK_THAT(c.CheckResponse("GET", "/healthz", 200, "text/plain", "ok"),
             Catch::Contains("Content-Type"));
  // Literal paths win over the dashboard's /{file}; unknown paths must be 404 errors.
  CHECK(c.CheckResponse("GET", "/healthz", 200, "application/json", R"({"status":"ok"})") == "");
  CHECK(c.CheckResponse("GET", "/app.js", 200, "text/javascript", "x") == "");
  CHECK(c.CheckResponse("GET", "/api/v1/nothing/here", 404, "application/json", err) == "");
  CHECK_THAT(c.CheckResponse("GET", "/api/v1/nothing/here", 200, "application/json", "{}"),
             Catch::Contains("no operation in the contract"));
  CHECK(c.CheckResponse("GET", "/api/v1/openapi.yaml", 200, "application/yaml; charset=utf-8",
                        std::string(runner::api::OpenApiYaml())) == "");
}

TEST_CASE("a contract keyword the checker does not know is an error, not a pass",
          "[api][openapi]") {
  OpenApiContract c(R"(
openapi: 3.1.0
paths: {}
components:
  schemas:
    Odd: {type: string, contentEncoding: base64}
)");
  CHECK_THAT(c.CheckSchema("Odd", json::string("x")), Catch::Contains("contentEncoding"));
}

TEST_CASE("the embedded contract is docs/openapi.yaml", "[api][openapi]") {
  CHECK(OpenApiContract(runner::api::OpenApiYaml()).document() == Contract().document());
}
