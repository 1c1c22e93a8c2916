#include <catch2/catch.hpp>
#include <mutex>
#include <sstream>
#include <thread>

#include "app/client/api_client.h"
#include "tests/integration/api/api_fixture.h"
#include "tests/support/log_capture.h"
#include "tests/support/openapi_contract.h"

namespace json = boost::json;
using namespace std::chrono_literals;
using runner::testing::ApiFixture;
using runner::testing::LogCapture;
using runner::testing::OpenApiContract;
using runner::testing::WaitFor;

namespace {

constexpr char kValue[] = "hunter2-swordfish";

// All SSE events of /api/v1/events, read on a thread.
struct EventsReader {
  std::mutex mu;
  std::string raw;  // guarded by mu
  std::atomic<bool> done{false};
  std::atomic<bool> connected{false};
  std::thread thread;
  explicit EventsReader(const std::string& base) {
    thread = std::thread([this, base] {
      httplib::Client c(base);
      c.set_read_timeout(std::chrono::seconds(10));
      c.Get("/api/v1/events", [&](const char* data, size_t len) {
        connected = true;
        std::lock_guard lock(mu);
        raw.append(data, len);
        return !done.load();
      });
    });
  }
  ~EventsReader() {
    done = true;
    thread.join();
  }
  std::string Text() {
    std::lock_guard lock(mu);
    return raw;
  }
};

}  // namespace

TEST_CASE(
    "a task's secrets reach it as env but never an answer, a stream, an event, the output or the "
    "log",
    "[api][secrets]") {
  LogCapture log;
  ApiFixture f;
  EventsReader events(f.base());
  REQUIRE(WaitFor([&] { return events.connected.load(); }, 10s));
  // The value printed whole on both streams, and split across two writes
  // 0.5 s apart (two chunks for the isolator and the masker).
  const std::string body = std::string(R"({"command":["sh","-c",)") +
                           R"("printf 'a:%s\n' \"$TOKEN\"; printf 'b:hunter2-'; sleep 0.5; )" +
                           R"(printf 'swordfish\n'; echo \"e:$TOKEN\" >&2; echo \"p:$PLAIN\""],)" +
                           R"("env":{"PLAIN":"shown"},"secrets":{"TOKEN":")" + kValue + R"("}})";
  auto submitted = f.http().Post("/api/v1/tasks", body, "application/json");
  REQUIRE(submitted->status == 201);
  CHECK(submitted->body.find(kValue) == std::string::npos);
  auto task = f.Json(submitted).as_object();
  const std::string id(task.at("id").as_string());
  CHECK(task.at("secrets").as_array() == json::array{"TOKEN"});

  // Streamed while it runs: the follower sees masked chunks and the end event.
  runner::app::ClientOptions opts;
  opts.server = f.base();
  runner::app::ApiClient client(opts);
  std::string streamed, stderr_streamed, end_data;
  auto st = client.Stream(
      "/api/v1/tasks/" + id + "/logs?follow=1", [&](const runner::app::SseMessage& m) {
        auto v = json::parse(m.data);
        if (m.event == "log") {
          auto& s = v.at("stream").as_string();
          (s == "stdout" ? streamed : stderr_streamed) += std::string(v.at("data").as_string());
        } else if (m.event == "end") {
          end_data = m.data;
          CHECK(OpenApiContract::Project().CheckSchema("Task", v) == "");
        }
        return true;
      });
  REQUIRE(st.ok());
  CHECK(streamed == "a:***\nb:***\np:shown\n");
  CHECK(stderr_streamed == "e:***\n");
  REQUIRE_FALSE(end_data.empty());
  CHECK(end_data.find(kValue) == std::string::npos);
  CHECK(json::parse(end_data).at("secrets").as_array() == json::array{"TOKEN"});
  CHECK(json::parse(end_data).at("state").as_string() == "succeeded");

  // Stored: masked, both streams, and in the tails.
  auto logs = f.http().Get(("/api/v1/tasks/" + id + "/logs").c_str());
  REQUIRE(logs->status == 200);
  CHECK(logs->body.find(kValue) == std::string::npos);
  CHECK(logs->body.find("hunter2") == std::string::npos);
  CHECK(logs->body.find("a:***\n") != std::string::npos);
  CHECK(logs->body.find("b:***\n") != std::string::npos);
  CHECK(logs->body.find("e:***\n") != std::string::npos);

  auto got = f.http().Get(("/api/v1/tasks/" + id).c_str());
  CHECK(got->body.find(kValue) == std::string::npos);
  CHECK(f.Json(got).at("secrets").as_array() == json::array{"TOKEN"});
  CHECK(f.Json(got).at("env").as_object().count("TOKEN") == 0);
  auto list = f.http().Get("/api/v1/tasks");
  CHECK(list->body.find(kValue) == std::string::npos);
  CHECK(list->body.find("\"TOKEN\"") != std::string::npos);

  REQUIRE(WaitFor([&] { return events.Text().find("task.succeeded") != std::string::npos; }, 10s));
  CHECK(events.Text().find(kValue) == std::string::npos);
  const std::string logged = log.Text();
  CHECK(logged.find(id) != std::string::npos);  // the capture saw this task's lines
  CHECK(logged.find(kValue) == std::string::npos);
  CHECK(logged.find("hunter2") == std::string::npos);
}

TEST_CASE("a bad secret is a 400 that names it but never shows the value", "[api][secrets]") {
  ApiFixture f;
  auto res = f.http().Post(
      "/api/v1/tasks", std::string(R"({"command":["true"],"secrets":{"1X":")") + kValue + R"("}})",
      "application/json");
  REQUIRE(res->status == 400);
  CHECK(f.ErrorCode(res) == "validation_failed");
  CHECK(res->body.find(kValue) == std::string::npos);
  auto not_string = f.http().Post("/api/v1/tasks", R"({"command":["true"],"secrets":{"X":1}})",
                                  "application/json");
  REQUIRE(not_string->status == 400);
}
