// ApiServer on fakes (no database, no pool), on a free port: what its routes
// ask of the node, how it guards them, and how it refuses to start.

#include "api/server.h"

#include <catch2/catch.hpp>
#include <stdexcept>

#include "runner/metrics/registry.h"
#include "tests/support/contract_client.h"
#include "tests/support/fakes/node_control_fake.h"
#include "tests/support/fakes/queue_store_fake.h"

using runner::PoolState;
using runner::testing::ContractClient;
using runner::testing::FakeNodeControl;
using runner::testing::FakeQueueStore;

namespace {

// A store whose counts read fails the way a broken handler would: it throws.
class ThrowingCountsStore : public FakeQueueStore {
 public:
  runner::Result<runner::queue::StateCounts> Counts() override {
    throw std::runtime_error("counts exploded");
  }
};

struct Fixture {
  explicit Fixture(std::optional<std::string> token = std::nullopt,
                   FakeQueueStore* store_override = nullptr)
      : store(store_override != nullptr ? *store_override : own_store) {
    runner::NodeStatus status;
    status.node_id = "node-under-test";
    status.mode = "process";
    status.pool.state = PoolState::kRunning;
    status.pool.target = 2;
    status.pool.max = 8;
    node.SetStatus(status);
    runner::api::ApiOptions options;
    options.listen = "127.0.0.1:0";
    options.api_token = std::move(token);
    options.default_drain_timeout = std::chrono::seconds(42);
    server = std::make_unique<runner::api::ApiServer>(options, store, node, registry);
    auto st = server->Start();
    if (!st.ok()) throw std::runtime_error("ApiServer::Start: " + st.error().message);
  }
  ~Fixture() { server->Stop(); }
  ContractClient Client() const { return ContractClient("127.0.0.1", server->port()); }

  FakeQueueStore own_store;
  FakeQueueStore& store;
  FakeNodeControl node;
  runner::metrics::Registry registry;
  std::unique_ptr<runner::api::ApiServer> server;
};

std::string ErrorCode(const httplib::Result& res) {
  auto v = boost::json::parse(res->body);
  return std::string(v.at("error").at("code").as_string());
}

}  // namespace

TEST_CASE("pool routes pass each command to the node, in order, with its options",
          "[api][server]") {
  Fixture f;
  REQUIRE(f.server->port() > 0);
  auto client = f.Client();
  auto scaled = client.Post("/api/v1/pool/scale", R"({"count":5})", "application/json");
  REQUIRE(scaled->status == 202);
  CHECK(boost::json::parse(scaled->body).at("pool").at("target").as_int64() == 5);
  auto drained = client.Post("/api/v1/pool/stop", R"({"drain_timeout":7})", "application/json");
  REQUIRE(drained->status == 202);
  CHECK(boost::json::parse(drained->body).at("pool").at("state").as_string() == "draining");
  REQUIRE(client.Post("/api/v1/pool/start", "{}", "application/json")->status == 202);
  REQUIRE(client.Post("/api/v1/pool/stop", R"({"force":true})", "application/json")->status == 202);

  auto commands = f.node.Commands();
  REQUIRE(commands.size() == 4);
  CHECK(commands[0].what == "scale");
  CHECK(commands[0].count == 5);
  CHECK(commands[1].what == "stop");
  CHECK_FALSE(commands[1].stop.force);
  CHECK(commands[1].stop.drain_timeout == std::chrono::seconds(7));
  CHECK(commands[2].what == "start");
  CHECK(commands[3].what == "stop");
  CHECK(commands[3].stop.force);
  // No drain_timeout: the server's default, not the node's.
  CHECK(commands[3].stop.drain_timeout == std::chrono::seconds(42));
  auto status = client.Get("/api/v1/status");
  REQUIRE(status->status == 200);
  CHECK(boost::json::parse(status->body).at("pool").at("state").as_string() == "stopped");
}

TEST_CASE("a bad pool command is a 400 that never reaches the node", "[api][server]") {
  Fixture f;
  auto client = f.Client();
  auto too_many = client.Post("/api/v1/pool/scale", R"({"count":9})", "application/json");
  REQUIRE(too_many->status == 400);
  CHECK(ErrorCode(too_many) == "validation_failed");
  CHECK(too_many->body.find("--max-workers") != std::string::npos);
  CHECK(client.Post("/api/v1/pool/scale", R"({"count":0})", "application/json")->status == 400);
  CHECK(client.Post("/api/v1/pool/start", R"({"force":true})", "application/json")->status == 400);
  CHECK(client.Post("/api/v1/pool/stop", R"({"drain":1})", "application/json")->status == 400);
  auto unknown_param = client.Post("/api/v1/pool/start?now=1", "{}", "application/json");
  REQUIRE(unknown_param->status == 400);
  CHECK(unknown_param->body.find("now") != std::string::npos);
  CHECK(f.node.Commands().empty());
}

TEST_CASE("with a token every API route needs it, health and metrics do not", "[api][server]") {
  Fixture f("t0ken");
  auto anon = f.Client();
  for (const char* path : {"/api/v1/status", "/api/v1/tasks", "/api/v1/workers", "/api/v1/nodes"}) {
    auto res = anon.Get(path);
    REQUIRE(res->status == 401);
    CHECK(ErrorCode(res) == "unauthorized");
    CHECK(res->get_header_value("WWW-Authenticate") == "Bearer");
  }
  auto scale = anon.Post("/api/v1/pool/scale", R"({"count":3})", "application/json");
  CHECK(scale->status == 401);
  CHECK(f.node.Commands().empty());
  CHECK(anon.Get("/healthz")->status == 200);
  CHECK(anon.Get("/metrics")->status == 200);
  auto authed = f.Client();
  authed.raw().set_bearer_token_auth("t0ken");
  CHECK(authed.Get("/api/v1/status")->status == 200);
  authed.raw().set_bearer_token_auth("t0kem");
  CHECK(authed.Get("/api/v1/status")->status == 401);
}

TEST_CASE("an exception in a route is one 500 internal, and the server keeps serving",
          "[api][server]") {
  ThrowingCountsStore store;
  Fixture f(std::nullopt, &store);
  auto client = f.Client();
  auto res = client.Get("/api/v1/status");
  REQUIRE(res->status == 500);
  CHECK(ErrorCode(res) == "internal");
  CHECK(res->body.find("counts exploded") != std::string::npos);
  CHECK(client.Get("/api/v1/nodes")->status == 200);
  CHECK(client.Get("/healthz")->status == 200);
}

TEST_CASE("a non-loopback listen without a token refuses to start, and binds nothing",
          "[api][server]") {
  FakeQueueStore store;
  FakeNodeControl node;
  runner::metrics::Registry registry;
  runner::api::ApiOptions options;
  options.listen = "0.0.0.0:0";
  runner::api::ApiServer open_server(options, store, node, registry);
  auto st = open_server.Start();
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().code == "validation_failed");
  CHECK(st.error().message.find("--api-token") != std::string::npos);
  CHECK(open_server.port() == 0);
  options.api_token = "t";
  runner::api::ApiServer guarded(options, store, node, registry);
  REQUIRE(guarded.Start().ok());
  CHECK(guarded.port() > 0);
  guarded.Stop();
}
