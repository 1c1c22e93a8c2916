#include "runner/queue/validation.h"

#include <catch2/catch.hpp>

#include "base/ulid.h"

using runner::queue::NewTask;
using runner::queue::ValidateNewTask;

namespace {

NewTask Good() {
  NewTask t;
  t.command = {"sh", "-c", "echo hi"};
  return t;
}

// The error message must name the field the user got wrong.
void ExpectInvalid(const NewTask& t, const std::string& field) {
  auto e = ValidateNewTask(t);
  REQUIRE(e.has_value());
  CHECK(e->code == "validation_failed");
  CHECK(e->message.rfind(field, 0) == 0);
}

}  // namespace

TEST_CASE("a minimal task with only a command is valid", "[queue][validation]") {
  CHECK_FALSE(ValidateNewTask(Good()).has_value());
}

TEST_CASE("an empty command is refused, naming the command field", "[queue][validation]") {
  NewTask t = Good();
  t.command.clear();
  ExpectInvalid(t, "command");
  t.command = {""};
  ExpectInvalid(t, "command[0]");
}

TEST_CASE("absurd or negative limits are refused with the limit named", "[queue][validation]") {
  NewTask t = Good();
  t.limits.cpus = -1;
  ExpectInvalid(t, "limits.cpus");
  t = Good();
  t.limits.cpus = 2000;
  ExpectInvalid(t, "limits.cpus");
  t = Good();
  t.limits.memory = 1024;  // below 4 MiB
  ExpectInvalid(t, "limits.memory");
  t = Good();
  t.limits.memory = -5;
  ExpectInvalid(t, "limits.memory");
  t = Good();
  t.limits.disk = -1;
  ExpectInvalid(t, "limits.disk");
  t = Good();
  t.limits.pids = -1;
  ExpectInvalid(t, "limits.pids");
  t = Good();
  t.limits = {0.5, 256LL << 20, 100LL << 20, 128};
  CHECK_FALSE(ValidateNewTask(t).has_value());
}

TEST_CASE("timeouts must be positive and at most seven days", "[queue][validation]") {
  NewTask t = Good();
  t.timeout = 0;
  ExpectInvalid(t, "timeout");
  t.timeout = -3;
  ExpectInvalid(t, "timeout");
  t.timeout = 8 * 24 * 3600;
  ExpectInvalid(t, "timeout");
  t.timeout = 600;
  CHECK_FALSE(ValidateNewTask(t).has_value());
}

TEST_CASE("attempts, priority, delay and backoff stay in range", "[queue][validation]") {
  NewTask t = Good();
  t.max_attempts = 0;
  ExpectInvalid(t, "max_attempts");
  t.max_attempts = 101;
  ExpectInvalid(t, "max_attempts");
  t = Good();
  t.priority = 5000;
  ExpectInvalid(t, "priority");
  t = Good();
  t.delay = -1;
  ExpectInvalid(t, "delay");
  t.delay = 1e9;
  ExpectInvalid(t, "delay");
  t = Good();
  t.backoff = -1;
  ExpectInvalid(t, "backoff");
}

TEST_CASE("queue names are limited to a safe character set", "[queue][validation]") {
  NewTask t = Good();
  t.queue = "";
  ExpectInvalid(t, "queue");
  t.queue = "has space";
  ExpectInvalid(t, "queue");
  t.queue = std::string(65, 'a');
  ExpectInvalid(t, "queue");
  t.queue = "builds.fast-lane_2";
  CHECK_FALSE(ValidateNewTask(t).has_value());
}

TEST_CASE("environment keys must be valid variable names", "[queue][validation]") {
  NewTask t = Good();
  t.env["1BAD"] = "x";
  ExpectInvalid(t, "env");
  t.env.clear();
  t.env["A=B"] = "x";
  ExpectInvalid(t, "env");
  t.env.clear();
  t.env["GOOD_KEY"] = std::string("a\0b", 3);
  ExpectInvalid(t, "env.GOOD_KEY");
}

TEST_CASE("too many or too large labels are refused", "[queue][validation]") {
  NewTask t = Good();
  for (int i = 0; i < 65; ++i) t.labels["k" + std::to_string(i)] = "v";
  ExpectInvalid(t, "labels");
  t = Good();
  t.labels["team"] = std::string(300, 'x');
  ExpectInvalid(t, "labels.team");
  t = Good();
  t.labels["bad key"] = "v";
  ExpectInvalid(t, "labels");
}

TEST_CASE("dependencies must be task ids, each once", "[queue][validation]") {
  NewTask t = Good();
  t.depends_on = {"nope"};
  ExpectInvalid(t, "depends_on");
  std::string id = runner::NewUlid();
  t.depends_on = {id, id};
  ExpectInvalid(t, "depends_on");
}

TEST_CASE("idempotency keys must be 1..255 printable characters", "[queue][validation]") {
  NewTask t = Good();
  t.idempotency_key = "";
  ExpectInvalid(t, "idempotency_key");
  t.idempotency_key = std::string(256, 'k');
  ExpectInvalid(t, "idempotency_key");
  t.idempotency_key = "key\n";
  ExpectInvalid(t, "idempotency_key");
  t.idempotency_key = "deploy-42";
  CHECK_FALSE(ValidateNewTask(t).has_value());
}

TEST_CASE("an image name with spaces is refused", "[queue][validation]") {
  NewTask t = Good();
  t.image = "bad image";
  ExpectInvalid(t, "image");
}

TEST_CASE("secrets take env names, stay apart from env and are capped in size",
          "[queue][validation][secrets]") {
  NewTask t = Good();
  t.secrets = {{"DEPLOY_TOKEN", "hunter2-swordfish"}};
  CHECK_FALSE(ValidateNewTask(t).has_value());
  t.secrets = {{"9LIVES", "hunter2-swordfish"}};
  ExpectInvalid(t, "secrets");
  CHECK(ValidateNewTask(t)->message.find("hunter2") == std::string::npos);
  t.secrets = {{"NUL", std::string("a\0b", 3)}};
  ExpectInvalid(t, "secrets.NUL");
  t.env = {{"SAME", "x"}};
  t.secrets = {{"SAME", "hunter2-swordfish"}};
  ExpectInvalid(t, "secrets.SAME");
  t.env.clear();
  t.secrets = {{"BIG", std::string(runner::queue::kMaxSecretsBytes, 'x')}};
  ExpectInvalid(t, "secrets");
  t.secrets.clear();
  for (std::size_t i = 0; i <= runner::queue::kMaxSecrets; ++i)
    t.secrets["S" + std::to_string(i)] = "v";
  ExpectInvalid(t, "secrets");
}
