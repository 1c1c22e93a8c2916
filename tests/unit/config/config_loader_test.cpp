#include "runner/config_loader.h"

#include <catch2/catch.hpp>
#include <fstream>

#include "tests/support/services.h"

using runner::ConfigSources;
using runner::LoadConfig;

namespace {
ConfigSources With(std::map<std::string, std::string> flags, std::map<std::string, std::string> env,
                   std::optional<std::string> path = std::nullopt) {
  ConfigSources s;
  s.flags = std::move(flags);
  s.env = [env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  s.config_path = std::move(path);
  return s;
}
}  // namespace

TEST_CASE("defaults apply when nothing is given", "[api][config]") {
  auto c = LoadConfig(With({}, {}));
  REQUIRE(c.ok());
  CHECK(c->listen == "127.0.0.1:8080");
  CHECK(c->max_workers == 256);
  CHECK_FALSE(c->database_url.has_value());
  CHECK(c->drain_timeout == 60);
  CHECK(c->kill_grace == 5);  // seconds from SIGTERM to SIGKILL, both isolations
}

TEST_CASE("flags beat the environment, which beats YAML, which beats defaults", "[api][config]") {
  runner::testing::TempDir dir;
  auto path = (dir.path() / "runner.yaml").string();
  std::ofstream(path) << "listen: 127.0.0.1:7000\n"
                         "workers:\n  count: 4\n  mode: process\n  pollIntervalMs: 250\n"
                         "  drainTimeoutSeconds: 30\n  limits: {memoryMb: 512, cpuPercent: 50}\n"
                         "  resources: {overLimitAction: kill}\n";
  auto yaml_only = LoadConfig(With({}, {}, path));
  REQUIRE(yaml_only.ok());
  CHECK(yaml_only->listen == "127.0.0.1:7000");
  CHECK(yaml_only->workers == 4);
  CHECK(yaml_only->mode == runner::isolation::IsolationMode::kProcess);
  CHECK(yaml_only->poll_interval == Approx(0.25));
  CHECK(yaml_only->drain_timeout == 30);
  CHECK(yaml_only->default_limits.memory == 512LL * 1024 * 1024);
  CHECK(yaml_only->default_limits.cpus == Approx(0.5));
  CHECK(yaml_only->over_limit.action == runner::isolation::OverLimitAction::kKill);

  auto env =
      LoadConfig(With({}, {{"RUNNER_WORKERS", "6"}, {"RUNNER_LISTEN", "127.0.0.1:7001"}}, path));
  REQUIRE(env.ok());
  CHECK(env->workers == 6);
  CHECK(env->listen == "127.0.0.1:7001");
  CHECK(env->drain_timeout == 30);  // still from YAML

  auto flags = LoadConfig(With({{"workers", "8"}}, {{"RUNNER_WORKERS", "6"}}, path));
  REQUIRE(flags.ok());
  CHECK(flags->workers == 8);
}

TEST_CASE("bad values stop with a message naming the setting and the fix", "[api][config]") {
  auto bad_flag = LoadConfig(With({{"workers", "many"}}, {}));
  REQUIRE_FALSE(bad_flag.ok());
  CHECK(bad_flag.error().message.find("--workers") != std::string::npos);
  CHECK(bad_flag.error().message.find("integer") != std::string::npos);

  auto bad_env = LoadConfig(With({}, {{"RUNNER_MODE", "vm"}}));
  REQUIRE_FALSE(bad_env.ok());
  CHECK(bad_env.error().message.find("RUNNER_MODE") != std::string::npos);
  CHECK(bad_env.error().message.find("auto, docker or process") != std::string::npos);

  runner::testing::TempDir dir;
  auto path = (dir.path() / "c.yaml").string();
  std::ofstream(path) << "workers:\n  cuont: 3\n";
  auto unknown = LoadConfig(With({}, {}, path));
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().message.find("workers.cuont") != std::string::npos);

  auto missing = LoadConfig(With({}, {}, (dir.path() / "nope.yaml").string()));
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("--config") != std::string::npos);

  auto above = LoadConfig(With({{"workers", "10"}, {"max-workers", "4"}}, {}));
  REQUIRE_FALSE(above.ok());
  CHECK(above.error().message.find("--max-workers") != std::string::npos);
}

TEST_CASE("process tasks are sandboxed as nobody unless the operator says otherwise",
          "[api][config][sandbox]") {
  auto d = LoadConfig(With({}, {}));
  REQUIRE(d.ok());
  CHECK(d->process_sandbox);
  CHECK(d->process_uid == 65534);
  CHECK(d->process_gid == 65534);
  auto c = LoadConfig(With({{"process-sandbox", "off"}, {"process-user", "1000:1001"}}, {}));
  REQUIRE(c.ok());
  CHECK_FALSE(c->process_sandbox);
  CHECK(c->process_uid == 1000);
  CHECK(c->process_gid == 1001);
  auto env = LoadConfig(With({}, {{"RUNNER_PROCESS_SANDBOX", "off"}}));
  REQUIRE(env.ok());
  CHECK_FALSE(env->process_sandbox);
  CHECK_FALSE(d->process_prebuilt);  // sandboxes built at each start, unless turned on
  auto pre = LoadConfig(With({}, {{"RUNNER_PROCESS_PREBUILT", "on"}}));
  REQUIRE(pre.ok());
  CHECK(pre->process_prebuilt);
  REQUIRE_FALSE(LoadConfig(With({{"process-prebuilt", "2"}}, {})).ok());
  auto bad = LoadConfig(With({{"process-sandbox", "maybe"}}, {}));
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.error().message, Catch::Contains("on or off"));
  auto root = LoadConfig(With({{"process-user", "0:0"}}, {}));
  REQUIRE_FALSE(root.ok());
  CHECK_THAT(root.error().message, Catch::Contains("UID:GID"));
}

TEST_CASE("the API token and the secret key file can come from files, not the command line",
          "[api][config]") {
  runner::testing::TempDir dir;
  auto token_file = (dir.path() / "token").string();
  std::ofstream(token_file) << "from-a-file\n";
  auto c = LoadConfig(With({{"api-token-file", token_file}}, {}));
  REQUIRE(c.ok());
  CHECK(c->api_token == "from-a-file");
  c = LoadConfig(With({}, {{"RUNNER_API_TOKEN_FILE", token_file}}));
  REQUIRE(c.ok());
  CHECK(c->api_token == "from-a-file");

  auto missing = LoadConfig(With({{"api-token-file", (dir.path() / "nope").string()}}, {}));
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("--api-token-file") != std::string::npos);
  auto empty_file = (dir.path() / "empty").string();
  std::ofstream(empty_file) << "\n";
  auto empty = LoadConfig(With({{"api-token-file", empty_file}}, {}));
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.error().message.find("empty") != std::string::npos);

  auto key = LoadConfig(With({}, {{"RUNNER_SECRET_KEY_FILE", "/etc/runner/secret.key"}}));
  REQUIRE(key.ok());
  CHECK(key->secret_key_file == "/etc/runner/secret.key");
}

TEST_CASE("warm containers default to one per worker and can be turned off or widened",
          "[api][config]") {
  auto defaults = LoadConfig(With({}, {}));
  REQUIRE(defaults.ok());
  CHECK(defaults->warm_containers == -1);  // one per worker, plus one (runner/node/node.cpp)
  CHECK(defaults->warm_images.empty());

  auto off = LoadConfig(With({{"warm-containers", "0"}}, {}));
  REQUIRE(off.ok());
  CHECK(off->warm_containers == 0);

  auto env =
      LoadConfig(With({}, {{"RUNNER_WARM_CONTAINERS", "3"}, {"RUNNER_WARM_IMAGES", "a:1,,b:2"}}));
  REQUIRE(env.ok());
  CHECK(env->warm_containers == 3);
  CHECK(env->warm_images == std::vector<std::string>{"a:1", "b:2"});

  for (const char* bad : {"-1", "many", "1001"}) {
    auto c = LoadConfig(With({{"warm-containers", bad}}, {}));
    REQUIRE_FALSE(c.ok());
    CHECK(c.error().message.find("--warm-containers") != std::string::npos);
  }
}
