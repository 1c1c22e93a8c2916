#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include "app/client/api_client.h"
#include "tests/integration/api/api_fixture.h"
#include "tests/support/openapi_contract.h"

namespace json = boost::json;
using namespace std::chrono_literals;
using runner::testing::ApiFixture;
using runner::testing::ContractClient;
using runner::testing::OpenApiContract;
using runner::testing::WaitFor;

TEST_CASE("a submitted task can be fetched, listed and runs to success", "[api][tasks]") {
  ApiFixture f;
  auto res =
      f.http().Post("/api/v1/tasks", R"({"command":["sh","-c","echo hi"],"labels":{"t":"1"}})",
                    "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  auto task = f.Json(res).as_object();
  std::string id(task.at("id").as_string());
  CHECK(task.at("state").as_string() == "queued");
  CHECK(task.at("labels").at("t").as_string() == "1");

  REQUIRE(WaitFor([&] { return f.StateOf(id) == "succeeded"; }, 20s));
  auto got = f.Json(f.http().Get(("/api/v1/tasks/" + id).c_str())).as_object();
  CHECK(got.at("exit_code").as_int64() == 0);
  CHECK(got.at("isolation_used").as_string() == "process");
  CHECK(got.at("finished_at").is_string());

  auto list = f.http().Get("/api/v1/tasks?state=succeeded&limit=10");
  REQUIRE(list->status == 200);
  auto tasks = f.Json(list).at("tasks").as_array();
  REQUIRE(tasks.size() == 1);
  CHECK(tasks[0].at("id").as_string() == id);
  CHECK(f.Json(list).at("next_cursor").is_null());

  auto logs = f.http().Get(("/api/v1/tasks/" + id + "/logs?stream=stdout").c_str());
  REQUIRE(logs->status == 200);
  CHECK(logs->body == "hi\n");
  CHECK(logs->get_header_value("Content-Type").rfind("text/plain", 0) == 0);
}

TEST_CASE("the same idempotency key returns the existing task with 200", "[api][tasks]") {
  ApiFixture f;
  std::string body = R"({"command":["true"],"idempotency_key":"k-1","delay":3600})";
  auto first = f.http().Post("/api/v1/tasks", body, "application/json");
  auto second = f.http().Post("/api/v1/tasks", body, "application/json");
  REQUIRE(first->status == 201);
  REQUIRE(second->status == 200);
  CHECK(f.Json(first).at("id") == f.Json(second).at("id"));
}

TEST_CASE("listing pages with a cursor, newest first, filtered by queue", "[api][tasks]") {
  ApiFixture f;
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i)
    ids.push_back(f.Submit(R"({"command":["true"],"queue":"pages","delay":3600})"));
  f.Submit(R"({"command":["true"],"queue":"other","delay":3600})");
  auto page1 = f.Json(f.http().Get("/api/v1/tasks?queue=pages&limit=3")).as_object();
  REQUIRE(page1.at("tasks").as_array().size() == 3);
  CHECK(page1.at("tasks").as_array()[0].at("id").as_string() == ids[4]);
  REQUIRE(page1.at("next_cursor").is_string());
  std::string cursor(page1.at("next_cursor").as_string());
  auto page2 = f.Json(f.http().Get(("/api/v1/tasks?queue=pages&limit=3&cursor=" + cursor).c_str()))
                   .as_object();
  REQUIRE(page2.at("tasks").as_array().size() == 2);
  CHECK(page2.at("tasks").as_array()[1].at("id").as_string() == ids[0]);
}

TEST_CASE("bad requests get the error codes of docs/api.md", "[api][errors]") {
  ApiFixture f;
  auto& h = f.http();
  auto malformed = h.Post("/api/v1/tasks", "{nope", "application/json");
  CHECK(malformed->status == 400);
  CHECK(f.ErrorCode(malformed) == "bad_request");

  auto unknown =
      h.Post("/api/v1/tasks", R"({"command":["true"],"privileged":true})", "application/json");
  CHECK(unknown->status == 400);
  CHECK(f.ErrorCode(unknown) == "validation_failed");
  CHECK(std::string(f.Json(unknown).at("error").at("message").as_string()).find("privileged") !=
        std::string::npos);

  auto wrong_type = h.Post("/api/v1/tasks", R"({"command":["true"],"limits":{"memory":"1G"}})",
                           "application/json");
  CHECK(wrong_type->status == 400);
  CHECK(f.ErrorCode(wrong_type) == "validation_failed");

  std::string huge = R"({"command":["echo",")" + std::string(1100000, 'x') + R"("]})";
  auto too_big = h.Post("/api/v1/tasks", huge, "application/json");
  REQUIRE(too_big);
  CHECK(too_big->status == 413);
  CHECK(f.ErrorCode(too_big) == "payload_too_large");

  auto missing = h.Get("/api/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV");
  CHECK(missing->status == 404);
  CHECK(f.ErrorCode(missing) == "not_found");
  CHECK(f.ErrorCode(h.Get("/api/v1/tasks/not-an-id")) == "not_found");
  CHECK(f.ErrorCode(h.Get("/api/v1/nothing-here")) == "not_found");

  auto bad_state = h.Get("/api/v1/tasks?state=sleeping");
  CHECK(bad_state->status == 400);
  CHECK(f.ErrorCode(bad_state) == "validation_failed");
  CHECK(f.ErrorCode(h.Get("/api/v1/tasks?limit=0")) == "validation_failed");
  CHECK(f.ErrorCode(h.Get("/api/v1/tasks?color=red")) == "validation_failed");

  std::string id = f.Submit(R"({"command":["true"],"delay":3600})");
  auto bad_stream = h.Get(("/api/v1/tasks/" + id + "/logs?stream=stdin").c_str());
  CHECK(bad_stream->status == 400);
}

TEST_CASE("cancel: a queued task at once (202), a finished one is a conflict (409)",
          "[api][tasks]") {
  ApiFixture f;
  std::string id = f.Submit(R"({"command":["true"],"delay":3600})");
  auto res = f.http().Post(("/api/v1/tasks/" + id + "/cancel").c_str(), "", "application/json");
  REQUIRE(res->status == 202);
  CHECK(f.Json(res).at("state").as_string() == "cancelled");
  auto again = f.http().Post(("/api/v1/tasks/" + id + "/cancel").c_str(), "", "application/json");
  CHECK(again->status == 409);
  CHECK(f.ErrorCode(again) == "conflict");
  auto missing =
      f.http().Post("/api/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel", "", "application/json");
  CHECK(missing->status == 404);
}

TEST_CASE("cancelling a running task kills it and it ends cancelled", "[api][tasks]") {
  ApiFixture f;
  std::string id = f.Submit(R"({"command":["sleep","30"]})");
  REQUIRE(WaitFor([&] { return f.StateOf(id) == "running"; }, 20s));
  auto res = f.http().Post(("/api/v1/tasks/" + id + "/cancel").c_str(), "", "application/json");
  REQUIRE(res->status == 202);
  CHECK(WaitFor([&] { return f.StateOf(id) == "cancelled"; }, 20s));
}

TEST_CASE("following a task's logs streams its output from start to the end event", "[api][sse]") {
  ApiFixture f;
  std::string id = f.Submit(
      R"({"command":["sh","-c","for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.2; done; exit 4"]})");
  runner::app::ClientOptions opts;
  opts.server = f.base();
  runner::app::ApiClient client(opts);
  std::string out, err;
  std::optional<json::value> end;
  auto st = client.Stream("/api/v1/tasks/" + id + "/logs?follow=1",
                          [&](const runner::app::SseMessage& m) {
                            auto v = json::parse(m.data);
                            const char* schema = m.event == "log" ? "LogChunk" : "Task";
                            CHECK(OpenApiContract::Project().CheckSchema(schema, v) == "");
                            if (m.event == "log") {
                              auto& s = v.at("stream").as_string();
                              (s == "stdout" ? out : err) += std::string(v.at("data").as_string());
                            } else if (m.event == "end") {
                              end = v;
                            }
                            return true;
                          });
  REQUIRE(st.ok());
  CHECK(out == "out1\nout2\nout3\n");
  CHECK(err == "err1\nerr2\nerr3\n");
  REQUIRE(end.has_value());
  CHECK(end->at("state").as_string() == "failed");
  CHECK(end->at("exit_code").as_int64() == 4);
}

namespace {
// Reads the events stream on a thread until `stop` says so.
struct EventReader {
  std::mutex mu;
  std::vector<runner::app::SseMessage> seen;  // guarded by mu
  std::atomic<bool> done{false};
  std::atomic<bool> connected{false};  // the server subscribed us and said so
  std::thread thread;
  EventReader(const std::string& base, std::string last_id = "") {
    thread = std::thread([this, base, last_id] {
      httplib::Client c(base);
      c.set_read_timeout(std::chrono::seconds(10));
      runner::app::SseParser parser;
      httplib::Headers headers;
      if (!last_id.empty()) headers.emplace("Last-Event-ID", last_id);
      c.Get("/api/v1/events", headers, [&](const char* data, size_t len) {
        connected = true;
        parser.Feed(std::string_view(data, len), [&](const runner::app::SseMessage& m) {
          std::lock_guard lock(mu);
          seen.push_back(m);
          return true;
        });
        return !done.load();
      });
    });
  }
  ~EventReader() {
    done = true;
    thread.join();
  }
  bool Has(const std::string& kind, const std::string& task_id) {
    std::lock_guard lock(mu);
    for (const auto& m : seen) {
      if (m.event == kind && m.data.find(task_id) != std::string::npos) return true;
    }
    return false;
  }
};
}  // namespace

TEST_CASE("the events stream sees a task's whole life", "[api][sse][events]") {
  ApiFixture f;
  EventReader reader(f.base());
  // The subscription is attached before the task exists.
  REQUIRE(WaitFor([&] { return reader.connected.load(); }, 10s));
  std::string id = f.Submit(R"({"command":["true"]})");
  CHECK(WaitFor([&] { return reader.Has("task.succeeded", id); }, 20s));
  CHECK(reader.Has("task.queued", id));
  CHECK(reader.Has("task.started", id));
  std::lock_guard lock(reader.mu);
  for (std::size_t i = 1; i < reader.seen.size(); ++i) {
    CHECK(std::stoll(reader.seen[i].id) > std::stoll(reader.seen[i - 1].id));
  }
  for (const auto& m : reader.seen) {
    auto data = json::parse(m.data);
    CHECK(OpenApiContract::Project().CheckSchema("Event", data) == "");
    CHECK(data.at("kind").as_string() == m.event);
    CHECK(std::to_string(data.at("id").as_int64()) == m.id);
  }
}

TEST_CASE("Last-Event-ID resumes the events stream from the table", "[api][sse][events]") {
  ApiFixture f;
  std::string a = f.Submit(R"({"command":["true"],"delay":3600})");
  std::string b = f.Submit(R"({"command":["true"],"delay":3600})");
  std::string a_event_id;
  {
    EventReader all(f.base(), "0");
    REQUIRE(WaitFor([&] { return all.Has("task.queued", b); }, 10s));
    std::lock_guard lock(all.mu);
    for (const auto& m : all.seen) {
      if (m.event == "task.queued" && m.data.find(a) != std::string::npos) a_event_id = m.id;
    }
  }
  REQUIRE_FALSE(a_event_id.empty());
  EventReader resumed(f.base(), a_event_id);
  REQUIRE(WaitFor([&] { return resumed.Has("task.queued", b); }, 10s));
  CHECK_FALSE(resumed.Has("task.queued", a));
}

TEST_CASE("status, workers and nodes describe the live node", "[api][pool]") {
  ApiFixture f;
  REQUIRE(WaitFor(
      [&] {
        auto s = f.Json(f.http().Get("/api/v1/status"));
        return s.at("pool").at("active").as_int64() == 2;
      },
      10s));
  auto s = f.Json(f.http().Get("/api/v1/status")).as_object();
  CHECK(s.at("node_id").as_string() == f.node().node_id());
  CHECK(s.at("nodes").as_int64() == 1);
  CHECK(s.at("queue").as_object().contains("timed_out"));
  CHECK(s.at("resources").as_object().at("memory_total").as_int64() > 0);
  // Process tasks run sandboxed by default: as nobody, without a network.
  auto sandbox = s.at("process_sandbox").as_object();
  CHECK(sandbox.at("enabled").as_bool());
  CHECK(sandbox.at("user").as_string() == "65534:65534");
  CHECK_FALSE(sandbox.at("network").as_bool());
  // The workers table follows the pool's registrations a moment later.
  json::array workers;
  CHECK(WaitFor(
      [&] {
        workers = f.Json(f.http().Get("/api/v1/workers")).at("workers").as_array();
        return workers.size() == 2;
      },
      10s));
  REQUIRE_FALSE(workers.empty());
  CHECK(workers[0].at("node_id").as_string() == f.node().node_id());
  auto nodes = f.Json(f.http().Get("/api/v1/nodes")).at("nodes").as_array();
  REQUIRE(nodes.size() == 1);
  CHECK(nodes[0].at("pid").as_int64() > 0);
}

TEST_CASE("workers show what they do now, not at the last heartbeat", "[api][pool]") {
  ApiFixture f;  // lease 6 s: the table hears from the workers every 2 s
  REQUIRE(WaitFor([&] { return f.node().Status().pool.idle == 2; }, 10s));
  auto workers = [&] { return f.Json(f.http().Get("/api/v1/workers")).at("workers").as_array(); };
  // Scaled up: the new workers are listed at once, before any heartbeat.
  REQUIRE(f.http().Post("/api/v1/pool/scale", R"({"count":5})", "application/json")->status == 202);
  REQUIRE(WaitFor([&] { return f.node().Status().pool.active == 5; }, 5s));
  CHECK(workers().size() == 5);
  // A running task's worker says busy, with the task, as soon as it runs.
  auto sub = f.http().Post("/api/v1/tasks", R"({"command":["sleep","5"]})", "application/json");
  REQUIRE(sub->status == 201);
  const std::string id = f.Json(sub).at("id").as_string().c_str();
  REQUIRE(WaitFor([&] { return f.node().Status().pool.busy == 1; }, 5s));
  int busy_with_it = 0;
  for (const auto& w : workers()) {
    const auto& o = w.as_object();
    if (o.at("state").as_string() == "busy" && o.at("task_id").is_string() &&
        o.at("task_id").as_string() == id) {
      ++busy_with_it;
    }
  }
  CHECK(busy_with_it == 1);
  // Scaled down: the idle workers that stopped are gone from the list at once.
  REQUIRE(f.http().Post("/api/v1/pool/scale", R"({"count":1})", "application/json")->status == 202);
  REQUIRE(WaitFor([&] { return f.node().Status().pool.active == 1; }, 5s));
  CHECK(workers().size() == 1);
  f.http().Post("/api/v1/tasks/" + id + "/cancel", "", "application/json");
}

TEST_CASE("the pool scales, stops and starts through the API", "[api][pool]") {
  ApiFixture f;
  auto scaled = f.http().Post("/api/v1/pool/scale", R"({"count":3})", "application/json");
  REQUIRE(scaled->status == 202);
  CHECK(f.Json(scaled).at("pool").at("target").as_int64() == 3);
  auto too_many = f.http().Post("/api/v1/pool/scale", R"({"count":9})", "application/json");
  CHECK(too_many->status == 400);
  CHECK(f.ErrorCode(too_many) == "validation_failed");
  CHECK(f.ErrorCode(f.http().Post("/api/v1/pool/scale", R"({"count":0})", "application/json")) ==
        "validation_failed");

  CHECK(f.http().Get("/readyz")->status == 200);
  auto stopped = f.http().Post("/api/v1/pool/stop", R"({"force":false,"drain_timeout":5})",
                               "application/json");
  REQUIRE(stopped->status == 202);
  REQUIRE(WaitFor([&] { return f.http().Get("/readyz")->status == 503; }, 15s));
  CHECK(f.ErrorCode(f.http().Get("/readyz")) == "unavailable");
  auto started = f.http().Post("/api/v1/pool/start", "", "application/json");
  REQUIRE(started->status == 202);
  CHECK(WaitFor([&] { return f.http().Get("/readyz")->status == 200; }, 15s));
}

TEST_CASE("a POST without a body or Content-Length works, as `curl -X POST` sends it",
          "[api][pool][errors]") {
  ApiFixture f;
  // One request on its own connection, exactly as written; returns the status line.
  auto raw = [&](const std::string& request) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(f.port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(request.size()));
    std::string answer;
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) answer.append(buf, n);
    ::close(fd);
    return answer.substr(0, answer.find("\r\n"));
  };
  CHECK(raw("POST /api/v1/pool/stop HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") ==
        "HTTP/1.1 202 Accepted");
  REQUIRE(WaitFor([&] { return f.http().Get("/readyz")->status == 503; }, 15s));
  CHECK(raw("POST /api/v1/pool/start HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") ==
        "HTTP/1.1 202 Accepted");
  CHECK(WaitFor([&] { return f.http().Get("/readyz")->status == 200; }, 15s));
  // A submit without a body is still refused, with the usual error.
  CHECK(raw("POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") ==
        "HTTP/1.1 400 Bad Request");
}

TEST_CASE("with a token, the API needs it but health and metrics do not", "[api][auth]") {
  ApiFixture f("s3cret");
  ContractClient anon("127.0.0.1", f.port());
  auto denied = anon.Get("/api/v1/status");
  REQUIRE(denied->status == 401);
  CHECK(f.ErrorCode(denied) == "unauthorized");
  ContractClient wrong("127.0.0.1", f.port());
  wrong.raw().set_bearer_token_auth("s3creT");
  CHECK(wrong.Get("/api/v1/tasks")->status == 401);
  CHECK(f.http().Get("/api/v1/status")->status == 200);
  CHECK(anon.Get("/healthz")->status == 200);
  CHECK(anon.Get("/metrics")->status == 200);
  CHECK(anon.Get("/readyz")->status == 200);
  // EventSource cannot send headers: the SSE routes take ?token=, nothing else does.
  CHECK(anon.Get("/api/v1/status?token=s3cret")->status == 401);
  std::string id = f.Submit(R"({"command":["true"]})");
  REQUIRE(WaitFor([&] { return f.StateOf(id) == "succeeded"; }, 20s));
  auto follow = anon.Get(("/api/v1/tasks/" + id + "/logs?follow=1&token=s3cret").c_str());
  REQUIRE(follow->status == 200);
  CHECK(follow->body.find("event: end") != std::string::npos);
  CHECK(anon.Get(("/api/v1/tasks/" + id + "/logs?token=s3cret").c_str())->status == 401);
}

TEST_CASE("/metrics is accepted by promtool and health endpoints answer", "[api][metrics]") {
  ApiFixture f;
  std::string id = f.Submit(R"({"command":["true"]})");
  REQUIRE(WaitFor([&] { return f.StateOf(id) == "succeeded"; }, 20s));
  auto res = f.http().Get("/metrics");
  REQUIRE(res->status == 200);
  CHECK(res->get_header_value("Content-Type").find("version=0.0.4") != std::string::npos);
  CHECK(res->body.find("runner_tasks{state=\"succeeded\"} 1") != std::string::npos);
  runner::testing::TempDir dir;
  auto path = dir.path() / "metrics.txt";
  std::ofstream(path) << res->body;
  std::string cmd = "/usr/bin/promtool check metrics < " + path.string() + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
  int rc = pclose(p);
  INFO(out);
  // promtool exits 3 for lint warnings only (e.g. naming hints), 1 for parse errors.
  CHECK((rc == 0 || WEXITSTATUS(rc) == 3));
  CHECK(out.find("error") == std::string::npos);
  CHECK(f.http().Get("/healthz")->status == 200);
}

TEST_CASE("the dashboard is served from the binary with content types and revalidation",
          "[api][web]") {
  ApiFixture f;
  auto index = f.http().Get("/");
  REQUIRE(index->status == 200);
  CHECK(index->get_header_value("Content-Type").rfind("text/html", 0) == 0);
  CHECK(index->body.find("<html") != std::string::npos);
  std::string etag = index->get_header_value("ETag");
  REQUIRE_FALSE(etag.empty());
  auto again = f.http().Get("/", httplib::Headers{{"If-None-Match", etag}});
  CHECK(again->status == 304);
  // web/app.js is the dashboard's code: the page is dead without it.
  auto js = f.http().Get("/app.js");
  REQUIRE(js->status == 200);
  CHECK(js->get_header_value("Content-Type").rfind("text/javascript", 0) == 0);
  CHECK(js->body.find("/api/v1/") != std::string::npos);
  CHECK(f.http().Get("/no-such-file.js")->status == 404);
}

TEST_CASE("the contract is served as built, without a token, and it lints as the tests use it",
          "[api][openapi]") {
  ApiFixture f("s3cret");
  ContractClient anon("127.0.0.1", f.port());
  auto res = anon.Get("/api/v1/openapi.yaml");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  CHECK(res->get_header_value("Content-Type").rfind("application/yaml", 0) == 0);
  // What the binary serves is the docs/openapi.yaml these tests check answers against.
  CHECK(OpenApiContract(res->body).document() == OpenApiContract::Project().document());
  CHECK(res->body.rfind("openapi: 3.1", 0) == 0);
}
