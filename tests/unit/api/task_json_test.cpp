#include "api/task_json.h"

#include <catch2/catch.hpp>

namespace json = boost::json;
using runner::api::ParseNewTask;

namespace {
std::string CodeOf(std::string_view body) {
  auto r = ParseNewTask(body);
  return r.ok() ? "ok" : r.error().code;
}
std::string MessageOf(std::string_view body) {
  auto r = ParseNewTask(body);
  return r.ok() ? "" : r.error().message;
}
}  // namespace

TEST_CASE("a full submission is parsed into every field", "[api][json]") {
  auto r = ParseNewTask(R"({"command":["sh","-c","echo hi"],"image":"img:1","isolation":"docker",
    "env":{"K":"v"},"limits":{"cpus":0.5,"memory":268435456,"disk":104857600,"pids":128},
    "timeout":600,"priority":5,"queue":"q1","max_attempts":3,"delay":2,
    "depends_on":["01ARZ3NDEKTSV4RRFFQ69G5FAV"],"idempotency_key":"k1","labels":{"team":"a"}})");
  REQUIRE(r.ok());
  const auto& t = *r;
  CHECK(t.command == std::vector<std::string>{"sh", "-c", "echo hi"});
  CHECK(t.image == "img:1");
  CHECK(t.isolation == runner::isolation::IsolationMode::kDocker);
  CHECK(t.env.at("K") == "v");
  CHECK(t.limits.cpus == 0.5);
  CHECK(t.limits.memory == 268435456);
  CHECK(t.limits.disk == 104857600);
  CHECK(t.limits.pids == 128);
  CHECK(t.timeout == 600);
  CHECK(t.priority == 5);
  CHECK(t.queue == "q1");
  CHECK(t.max_attempts == 3);
  CHECK(t.delay == 2);
  CHECK(t.depends_on.size() == 1);
  CHECK(t.idempotency_key == "k1");
  CHECK(t.labels.at("team") == "a");
}

TEST_CASE("only command is required and null means absent", "[api][json]") {
  auto r = ParseNewTask(R"({"command":["true"],"image":null,"timeout":null})");
  REQUIRE(r.ok());
  CHECK_FALSE(r->image.has_value());
  CHECK_FALSE(r->timeout.has_value());
  CHECK(r->queue == "default");
}

TEST_CASE("a body that is not JSON is bad_request", "[api][json]") {
  CHECK(CodeOf("{") == "bad_request");
  CHECK(CodeOf("") == "bad_request");
  CHECK(CodeOf("[1,2]") == "bad_request");
  CHECK(CodeOf("\"x\"") == "bad_request");
}

TEST_CASE("wrong types, unknown fields and out-of-range values name the field", "[api][json]") {
  CHECK(CodeOf(R"({"image":"x"})") == "validation_failed");
  CHECK(MessageOf(R"({"image":"x"})").rfind("command", 0) == 0);
  CHECK(CodeOf(R"({"command":[]})") == "validation_failed");
  CHECK(CodeOf(R"({"command":"echo hi"})") == "validation_failed");
  CHECK(MessageOf(R"({"command":["a",1]})").rfind("command[1]", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"privileged":true})").rfind("privileged", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"limits":{"gpus":1}})").rfind("limits.gpus", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"limits":{"memory":-1}})").rfind("limits.memory", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"limits":{"memory":1.5}})").rfind("limits.memory", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"timeout":-3})").rfind("timeout", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"timeout":"10"})").rfind("timeout", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"max_attempts":0})").rfind("max_attempts", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"priority":1e30})").rfind("priority", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"isolation":"vm"})").rfind("isolation", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"env":{"A=B":"x"}})").rfind("env", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"env":{"A":1}})").rfind("env.A", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"depends_on":["nope"]})").rfind("depends_on[0]", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"queue":"a b"})").rfind("queue", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"idempotency_key":""})").rfind("idempotency_key", 0) == 0);
  CHECK(MessageOf(R"({"command":["a"],"limits":{"memory":18446744073709551615}})")
            .rfind("limits.memory", 0) == 0);
}

TEST_CASE("a task is written with exactly the fields of docs/api.md", "[api][json]") {
  runner::queue::Task t;
  t.id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
  t.command = {"echo", "hi"};
  t.created_at = runner::queue::TimePoint(std::chrono::milliseconds(1700000000123));
  t.exit_code = 0;
  t.usage = runner::isolation::Usage{0.01, 1048576, 0.42};
  auto o = runner::api::TaskToJson(t);
  for (const char* key :
       {"id",       "state",         "queue",          "priority",    "command",
        "image",    "isolation",     "isolation_used", "env",         "limits",
        "timeout",  "attempt",       "max_attempts",   "depends_on",  "idempotency_key",
        "labels",   "worker_id",     "node_id",        "exit_code",   "error",
        "usage",    "created_at",    "started_at",     "finished_at", "cancel_requested",
        "schedule", "scheduled_for", "group",          "secrets"}) {
    CHECK(o.contains(key));
  }
  CHECK(o.size() == 29);
  CHECK(o.at("created_at").as_string() == "2023-11-14T22:13:20.123Z");
  CHECK(o.at("isolation_used").is_null());
  CHECK(o.at("error").is_null());
  CHECK(o.at("finished_at").is_null());
  CHECK(o.at("usage").as_object().at("peak_memory").as_int64() == 1048576);
  CHECK(o.at("state").as_string() == "queued");
  t.timeout = 600;
  t.limits.cpus = 0.5;
  auto text = json::serialize(runner::api::TaskToJson(t));
  CHECK(text.find("\"timeout\":600,") != std::string::npos);  // an integer, not 6E2
  CHECK(json::parse(text).at("limits").at("cpus").as_double() == 0.5);

  auto back = runner::api::TaskFromJson(json::value(o));
  REQUIRE(back.ok());
  CHECK(back->id == t.id);
  CHECK(back->created_at == t.created_at);
  CHECK(back->exit_code == 0);
}

TEST_CASE("status has every section of docs/api.md with zero counts filled in", "[api][json]") {
  runner::NodeStatus s;
  s.node_id = "n";
  s.mode = "process";
  runner::queue::StateCounts counts{{runner::queue::TaskState::kQueued, 12}};
  auto o = runner::api::StatusToJson(s, counts, 1);
  CHECK(o.at("queue").as_object().at("queued").as_int64() == 12);
  CHECK(o.at("queue").as_object().at("timed_out").as_int64() == 0);
  CHECK(o.at("pool").as_object().at("state").as_string() == "stopped");
  CHECK(o.at("backpressure").as_object().at("reason").is_null());
  CHECK(o.at("docker").as_object().at("version").is_null());
  CHECK(o.at("nodes").as_int64() == 1);
}

TEST_CASE("pool bodies are strict too", "[api][json]") {
  CHECK(runner::api::ParseScaleRequest(R"({"count":3})")->count == 3);
  CHECK(runner::api::ParseScaleRequest(R"({})").error().code == "validation_failed");
  CHECK(runner::api::ParseScaleRequest(R"({"count":"3"})").error().code == "validation_failed");
  CHECK(runner::api::ParseScaleRequest(R"({"count":3,"x":1})").error().code == "validation_failed");
  auto stop = runner::api::ParseStopRequest("");
  REQUIRE(stop.ok());
  CHECK_FALSE(stop->force);
  CHECK(runner::api::ParseStopRequest(R"({"force":true,"drain_timeout":5})")->drain_timeout == 5);
  CHECK(runner::api::ParseStopRequest(R"({"force":1})").error().code == "validation_failed");
}

TEST_CASE("secrets are parsed like env and written back as their names only", "[api][json]") {
  auto r = ParseNewTask(R"({"command":["true"],"secrets":{"TOKEN":"hunter2-swordfish"}})");
  REQUIRE(r.ok());
  CHECK(r->secrets.at("TOKEN") == "hunter2-swordfish");
  CHECK(CodeOf(R"({"command":["true"],"secrets":["TOKEN"]})") == "validation_failed");
  CHECK(MessageOf(R"({"command":["true"],"secrets":{"A=B":"hunter2"}})").find("hunter2") ==
        std::string::npos);

  runner::queue::Task t;
  t.id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
  t.secret_names = {"TOKEN"};
  t.secrets = {{"TOKEN", "hunter2-swordfish"}};  // as a claim fills it: still never written
  auto text = json::serialize(runner::api::TaskToJson(t));
  CHECK(text.find("hunter2") == std::string::npos);
  CHECK(json::parse(text).at("secrets").as_array() == json::array{"TOKEN"});
}
