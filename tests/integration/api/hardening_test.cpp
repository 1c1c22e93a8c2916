#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <regex>

#include "api/json_text.h"
#include "tests/integration/api/api_fixture.h"

namespace json = boost::json;
using namespace std::chrono_literals;
using runner::testing::ApiFixture;
using runner::testing::WaitFor;

namespace {

// Sends `request` on a fresh loopback connection and reads the answer's
// status line (at most 5 s). Returns the status line and how long it took.
std::pair<std::string, std::chrono::milliseconds> RawRequest(int port, const std::string& request) {
  const auto t0 = std::chrono::steady_clock::now();
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string got;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    char buf[512];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) got.assign(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return {got.substr(0, got.find("\r\n")), std::chrono::duration_cast<std::chrono::milliseconds>(
                                               std::chrono::steady_clock::now() - t0)};
}

}  // namespace

TEST_CASE("a bogus Content-Length is answered at once, not held", "[api][errors]") {
  ApiFixture f;
  const std::string head =
      "POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: "
      "application/json\r\nContent-Length: ";
  auto [huge, huge_ms] = RawRequest(f.port(), head + "99999999999999\r\n\r\n{");
  CHECK(huge == "HTTP/1.1 413 Payload Too Large");
  CHECK(huge_ms < std::chrono::milliseconds(2000));
  auto [negative, negative_ms] = RawRequest(f.port(), head + "-1\r\n\r\n{");
  CHECK(negative == "HTTP/1.1 400 Bad Request");
  CHECK(negative_ms < std::chrono::milliseconds(2000));
  auto [junk, junk_ms] = RawRequest(f.port(), head + "12abc\r\n\r\n{");
  CHECK(junk == "HTTP/1.1 400 Bad Request");
  CHECK(junk_ms < std::chrono::milliseconds(2000));
  // Two lengths that disagree: which one ends the body is ambiguous (smuggling).
  auto [twice, twice_ms] =
      RawRequest(f.port(),
                 "POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 2\r\nContent-Length: 20\r\n\r\n{}");
  CHECK(twice == "HTTP/1.1 400 Bad Request");
  CHECK(twice_ms < std::chrono::milliseconds(2000));
  // The same length twice is one length.
  auto [same, same_ms] =
      RawRequest(f.port(),
                 "POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 20\r\nContent-Length: 20\r\n\r\n{\"command\":[\"true\"]}");
  CHECK(same == "HTTP/1.1 201 Created");
}

TEST_CASE("unknown query parameters are a 400 on every route that reads them", "[api][errors]") {
  ApiFixture f;
  auto events = f.http().Get("/api/v1/events?last_event=3");
  REQUIRE(events->status == 400);
  CHECK(f.ErrorCode(events) == "validation_failed");
  CHECK(f.Json(events).at("error").at("message").as_string().find("last_event") == 0);
  std::string id = f.Submit(R"({"command":["true"]})");
  auto logs = f.http().Get(("/api/v1/tasks/" + id + "/logs?strem=stdout").c_str());
  REQUIRE(logs->status == 400);
  CHECK(f.ErrorCode(logs) == "validation_failed");
  CHECK(f.http().Get(("/api/v1/tasks/" + id + "/logs?stream=stdout").c_str())->status == 200);
  auto list = f.http().Get("/api/v1/tasks?stat=queued");
  REQUIRE(list->status == 400);
  CHECK(f.Json(list).at("error").at("message").as_string().find("stat") == 0);
  // Routes that read no parameter refuse any, schedules and queues included.
  for (const std::string& path :
       {std::string("/api/v1/status?verbose=1"), "/api/v1/tasks/" + id + "?x=1",
        std::string("/api/v1/workers?all=1"), std::string("/api/v1/schedules?limit=5"),
        std::string("/api/v1/queues?name=q1")}) {
    INFO(path);
    auto res = f.http().Get(path.c_str());
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(f.ErrorCode(res) == "validation_failed");
    CHECK(res->body.find("unknown query parameter (allowed: none)") != std::string::npos);
  }
  CHECK(f.http()
            .Post(("/api/v1/tasks/" + id + "/cancel?now=1").c_str(), "", "application/json")
            ->status == 400);
  CHECK(f.http().Get("/healthz?probe=1")->status == 200);  // public probes take what they get
}

TEST_CASE("JSON numbers are written as plain decimals, never 5E-1", "[api][json]") {
  CHECK(runner::api::WriteJson(json::value(0.5)) == "0.5");
  CHECK(runner::api::WriteJson(json::value(2.006296383)) == "2.006296383");
  CHECK(runner::api::WriteJson(json::value(600.0)) == "600");
  // Where scientific is the shorter text: std::to_chars alone wrote 1e-04,
  // 5e-05 and 1e+16 (a task's cpu_seconds of 0.0001 went out so).
  CHECK(runner::api::WriteJson(json::value(0.0001)) == "0.0001");
  CHECK(runner::api::WriteJson(json::value(0.00005)) == "0.00005");
  CHECK(runner::api::WriteJson(json::value(-0.0003)) == "-0.0003");
  CHECK(runner::api::WriteJson(json::value(1e16)) == "10000000000000000");
  CHECK(runner::api::WriteJson(json::value(1.5e-7)) == "0.00000015");
  CHECK(json::parse(runner::api::WriteJson(json::value(2.2250738585072014e-308))).as_double() ==
        2.2250738585072014e-308);
  CHECK(runner::api::WriteJson(json::parse(R"({"a":[1,0.25,"x\"y"],"b":null})")) ==
        R"({"a":[1,0.25,"x\"y"],"b":null})");

  ApiFixture f;
  auto res = f.http().Post("/api/v1/tasks", R"({"command":["true"],"limits":{"cpus":0.5}})",
                           "application/json");
  REQUIRE(res->status == 201);
  CHECK(res->body.find("\"cpus\":0.5") != std::string::npos);
  std::string id(f.Json(res).at("id").as_string());
  REQUIRE(WaitFor([&] { return f.StateOf(id) == "succeeded"; }, 20s));
  // Schedules and queue policies carry doubles too (every, timeout, rate_limit.per).
  REQUIRE(f.http()
              .Post("/api/v1/schedules",
                    R"({"name":"half","every":1.5,"task":{"command":["true"],"timeout":600}})",
                    "application/json")
              ->status == 201);
  REQUIRE(
      f.http()
          .Put("/api/v1/queues/q1", R"({"rate_limit":{"count":10,"per":0.5}})", "application/json")
          ->status == 200);
  const auto schedule = f.http().Get("/api/v1/schedules/half")->body;
  CHECK(schedule.find("\"every\":1.5") != std::string::npos);
  CHECK(schedule.find("\"timeout\":600") != std::string::npos);
  CHECK(f.http().Get("/api/v1/queues/q1")->body.find("\"per\":0.5") != std::string::npos);
  for (const std::string& path :
       {"/api/v1/tasks/" + id, std::string("/api/v1/tasks"), std::string("/api/v1/status"),
        std::string("/api/v1/schedules"), std::string("/api/v1/schedules/half"),
        std::string("/api/v1/queues"), std::string("/api/v1/queues/q1")}) {
    auto body = f.http().Get(path.c_str())->body;
    INFO(path << ": " << body);
    // A number token (after ':', ',' or '[', not inside a string) with an exponent.
    CHECK_FALSE(std::regex_search(body, std::regex(R"([:,\[]-?[0-9][0-9.]*[eE])")));
  }
}

TEST_CASE("pool commands apply in the order given: a force stop after a held start wins",
          "[api][pool]") {
  ApiFixture f;
  std::string id = f.Submit(R"({"command":["sleep","30"]})");
  REQUIRE(WaitFor([&] { return f.StateOf(id) == "running"; }, 20s));
  // A graceful stop drains the running task; the start is held behind it.
  REQUIRE(
      f.http().Post("/api/v1/pool/stop", R"({"drain_timeout":60})", "application/json")->status ==
      202);
  REQUIRE(f.http().Post("/api/v1/pool/start", "", "application/json")->status == 202);
  REQUIRE(f.http().Post("/api/v1/pool/stop", R"({"force":true})", "application/json")->status ==
          202);
  REQUIRE(f.node().AwaitControl(30s));
  auto status = f.Json(f.http().Get("/api/v1/status"));
  CHECK(status.at("pool").at("state").as_string() == "stopped");
  // And a start given after the force stop applies.
  REQUIRE(f.http().Post("/api/v1/pool/start", "", "application/json")->status == 202);
  REQUIRE(f.node().AwaitControl(30s));
  CHECK(f.Json(f.http().Get("/api/v1/status")).at("pool").at("state").as_string() == "running");
}
