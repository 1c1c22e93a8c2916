#pragma once

// A real node (PostgreSQL store, process isolation, real pool) behind the real
// ApiServer on a free loopback port, for driving the API over HTTP. Every
// answer http() gets is checked against docs/openapi.yaml (ContractClient).

#include <httplib.h>

#include <boost/json.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "api/server.h"
#include "runner/config.h"
#include "runner/metrics/registry.h"
#include "runner/node/node.h"
#include "tests/support/contract_client.h"
#include "tests/support/services.h"

namespace runner::testing {

class ApiFixture {
 public:
  // `tune` adjusts the server's options (limits, timeouts) before it starts.
  explicit ApiFixture(std::optional<std::string> token = std::nullopt,
                      const std::function<void(api::ApiOptions&)>& tune = {}) {
    Config config;
    config.workers = 2;
    config.max_workers = 8;
    config.mode = isolation::IsolationMode::kProcess;
    config.poll_interval = 0.1;
    config.lease = 6;
    config.drain_timeout = 5;
    // 100 disables the host pressure checks: other builds share this host.
    config.pressure = PressureThresholds{100, 99, 100, 99, 100, 99};
    config.data_dir = dir_.path().string();
    auto node = node::Node::Create(config, db_.conninfo(), registry_);
    if (!node) throw std::runtime_error("node: " + node.error().message);
    node_ = std::move(*node);
    if (auto st = node_->Start(); !st) throw std::runtime_error("start: " + st.error().message);
    api::ApiOptions options;
    options.listen = "127.0.0.1:0";
    options.api_token = token;
    options.heartbeat = std::chrono::milliseconds(300);
    options.events_poll = std::chrono::milliseconds(50);
    options.logs_poll = std::chrono::milliseconds(50);
    if (tune) tune(options);
    server_ = std::make_unique<api::ApiServer>(options, node_->store(), *node_, registry_);
    server_->SetSchedules(&node_->schedules());
    if (auto st = server_->Start(); !st) throw std::runtime_error("api: " + st.error().message);
    client_ = std::make_unique<ContractClient>("127.0.0.1", server_->port());
    client_->raw().set_read_timeout(std::chrono::seconds(30));
    if (token) client_->raw().set_bearer_token_auth(*token);
  }
  ~ApiFixture() {
    server_->Stop();
    node_->Shutdown(StopOptions{true, std::chrono::seconds(0)});
  }

  ContractClient& http() { return *client_; }
  int port() const { return server_->port(); }
  node::Node& node() { return *node_; }
  const TestDatabase& db() const { return db_; }
  std::string base() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }

  boost::json::value Json(const httplib::Result& res) {
    if (!res) throw std::runtime_error("no response");
    return boost::json::parse(res->body);
  }
  std::string ErrorCode(const httplib::Result& res) {
    return std::string(Json(res).at("error").at("code").as_string());
  }
  std::string Submit(const std::string& body) {
    auto res = client_->Post("/api/v1/tasks", body, "application/json");
    if (!res || res->status != 201) {
      throw std::runtime_error("submit failed: " + (res ? res->body : std::string("no response")));
    }
    return std::string(Json(res).at("id").as_string());
  }
  std::string StateOf(const std::string& id) {
    auto res = client_->Get(("/api/v1/tasks/" + id).c_str());
    return std::string(Json(res).at("state").as_string());
  }

 private:
  TempDir dir_;
  TestDatabase db_;
  metrics::Registry registry_;
  std::unique_ptr<node::Node> node_;
  std::unique_ptr<api::ApiServer> server_;
  std::unique_ptr<ContractClient> client_;
};

}  // namespace runner::testing
