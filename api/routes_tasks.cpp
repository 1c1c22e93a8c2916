// The task routes: POST and GET /api/v1/tasks, GET /api/v1/tasks/{id},
// POST /api/v1/tasks/{id}/cancel and GET /api/v1/tasks/{id}/logs (text, or
// SSE with follow=1).

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <boost/json.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "api/auth.h"
#include "api/http_reply.h"
#include "api/json_text.h"
#include "api/server.h"
#include "api/sse.h"
#include "api/task_json.h"
#include "base/ulid.h"

namespace runner::api {

namespace json = boost::json;
using httplib::Request;
using httplib::Response;

namespace {

Error TaskNotFound(const std::string& id) {
  return MakeError("not_found", "no task with id " + id);
}

}  // namespace

void ApiServer::TaskRoutes() {
  httplib::Server& s = *http_;
  const std::optional<std::string> token = options_.api_token;

  s.Post("/api/v1/tasks", Guarded(Access::kToken, [this](const Request& req, Response& res) {
           auto task = ParseNewTask(req.body);
           if (!task) return SendError(res, task.error());
           auto out = store_.Submit(*task);
           if (!out) return SendError(res, out.error());
           SendJson(res, out->created ? 201 : 200, TaskToJson(out->task));
         }));

  s.Get("/api/v1/tasks", Guarded(Access::kToken, [this](const Request& req, Response& res) {
          queue::TaskFilter filter;
          for (const auto& [key, value] : req.params) {
            if (key != "state" && key != "queue" && key != "group" && key != "limit" &&
                key != "cursor" && key != "schedule") {
              return SendError(res, MakeError("validation_failed",
                                              key + ": unknown query parameter (allowed: state, "
                                                    "queue, group, schedule, limit, cursor)"));
            }
          }
          if (req.has_param("state") && !req.get_param_value("state").empty()) {
            auto st = queue::ParseTaskState(req.get_param_value("state"));
            if (!st) {
              return SendError(res, MakeError("validation_failed",
                                              "state: must be one of queued, running, succeeded, "
                                              "failed, cancelled, timed_out"));
            }
            filter.state = st;
          }
          if (req.has_param("queue") && !req.get_param_value("queue").empty()) {
            filter.queue = req.get_param_value("queue");
          }
          if (req.has_param("schedule") && !req.get_param_value("schedule").empty()) {
            filter.schedule = req.get_param_value("schedule");
          }
          if (req.has_param("group") && !req.get_param_value("group").empty()) {
            filter.group = req.get_param_value("group");
          }
          if (req.has_param("limit")) {
            auto n = ParseInt64(req.get_param_value("limit"));
            if (!n || *n < 1 || *n > 1000) {
              return SendError(res,
                               MakeError("validation_failed", "limit: must be an integer 1..1000"));
            }
            filter.limit = static_cast<int>(*n);
          }
          if (req.has_param("cursor") && !req.get_param_value("cursor").empty()) {
            filter.cursor = req.get_param_value("cursor");
          }
          auto page = store_.List(filter);
          if (!page) return SendError(res, page.error());
          json::array tasks;
          for (const auto& t : page->tasks) tasks.emplace_back(TaskToJson(t));
          json::object body{{"tasks", std::move(tasks)}};
          if (page->next_cursor) {
            body["next_cursor"] = *page->next_cursor;
          } else {
            body["next_cursor"] = nullptr;
          }
          SendJson(res, 200, body);
        }));

  s.Get(R"(/api/v1/tasks/([^/]+))",
        Guarded(Access::kToken, [this](const Request& req, Response& res) {
          std::string id = req.matches[1];
          if (!IsUlid(id)) return SendError(res, TaskNotFound(id));
          auto task = store_.Get(id);
          if (!task) return SendError(res, task.error());
          SendJson(res, 200, TaskToJson(*task));
        }));

  s.Post(R"(/api/v1/tasks/([^/]+)/cancel)",
         Guarded(Access::kToken, [this](const Request& req, Response& res) {
           std::string id = req.matches[1];
           if (!IsUlid(id)) return SendError(res, TaskNotFound(id));
           auto task = store_.Cancel(id);
           if (!task) return SendError(res, task.error());
           SendJson(res, 202, TaskToJson(*task));
         }));
}

// Logs: text, or SSE when follow=1. Token via query only for the SSE form.
void ApiServer::TaskLogRoutes() {
  httplib::Server& s = *http_;
  const std::optional<std::string> token = options_.api_token;
  s.Get(R"(/api/v1/tasks/([^/]+)/logs)",
        Guarded(Access::kTokenOrQuery, [this, token](const Request& req, Response& res) {
          std::string id = req.matches[1];
          if (auto e = UnknownParam(req, {"stream", "follow", "token"})) return SendError(res, *e);
          bool follow = req.has_param("follow") && req.get_param_value("follow") != "0" &&
                        req.get_param_value("follow") != "false";
          if (token && !follow && !BearerMatches(req.get_header_value("Authorization"), *token)) {
            return SendError(res, MakeError("unauthorized",
                                            "missing or wrong API token: send 'Authorization: "
                                            "Bearer <token>'"));
          }
          queue::LogStream stream = queue::LogStream::kAll;
          if (req.has_param("stream")) {
            std::string v = req.get_param_value("stream");
            if (v == "stdout") {
              stream = queue::LogStream::kStdout;
            } else if (v == "stderr") {
              stream = queue::LogStream::kStderr;
            } else if (v != "all") {
              return SendError(
                  res, MakeError("validation_failed", "stream: must be stdout, stderr or all"));
            }
          }
          if (!IsUlid(id)) return SendError(res, TaskNotFound(id));
          auto task = store_.Get(id);
          if (!task) return SendError(res, task.error());

          if (!follow) {
            std::string text;
            int64_t after = 0;
            bool truncated = false;
            for (int pages = 0; pages < 1024; ++pages) {
              auto page = store_.Logs(id, stream, after, 1 << 20);
              if (!page) return SendError(res, page.error());
              truncated = truncated || page->truncated;
              if (page->chunks.empty()) break;
              for (const auto& c : page->chunks) text += c.data;
              after = page->chunks.back().seq;
            }
            if (truncated) res.set_header("X-Runner-Logs-Truncated", "true");
            res.status = 200;
            res.set_content(std::move(text), "text/plain; charset=utf-8");
            return;
          }

          if (open_streams_.fetch_add(1) >= static_cast<int>(options_.max_streams)) {
            open_streams_.fetch_sub(1);
            return SendError(res, MakeError("unavailable", "too many streams are open"));
          }
          auto slot = std::make_shared<StreamSlot>();
          slot->open = &open_streams_;
          int64_t after = 0;
          if (auto last = ParseInt64(req.get_header_value("Last-Event-ID"))) after = *last;
          struct FollowState {
            int64_t after = 0;
            bool started = false;
            std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();
          };
          auto st = std::make_shared<FollowState>();
          st->after = after;
          res.set_header("Cache-Control", "no-cache");
          res.set_header("X-Accel-Buffering", "no");
          res.set_chunked_content_provider(
              "text/event-stream",
              [this, id, stream, st, slot](size_t, httplib::DataSink& sink) {
                try {
                  auto write = [&](const std::string& text) {
                    st->last_write = std::chrono::steady_clock::now();
                    return sink.write(text.data(), text.size());
                  };
                  if (!st->started) {
                    st->started = true;
                    return write(SseRetry(3000));
                  }
                  for (;;) {
                    if (stopping_) {
                      sink.done();
                      return true;
                    }
                    // State first, then logs: a task seen final has written all its output.
                    auto current = store_.Get(id);
                    if (!current) {
                      sink.done();
                      return true;
                    }
                    auto page = store_.Logs(id, stream, st->after, 256 * 1024);
                    if (page && !page->chunks.empty()) {
                      std::string out;
                      for (const auto& c : page->chunks) {
                        json::object data{
                            {"stream",
                             c.stream == isolation::OutputStream::kStdout ? "stdout" : "stderr"},
                            {"data", c.data}};
                        out += SseEvent(c.seq, "log", WriteJson(data));
                        st->after = c.seq;
                      }
                      return write(out);
                    }
                    if (queue::IsFinal(current->state)) {
                      bool ok =
                          write(SseEvent(std::nullopt, "end", WriteJson(TaskToJson(*current))));
                      sink.done();
                      return ok;
                    }
                    if (std::chrono::steady_clock::now() - st->last_write >= options_.heartbeat) {
                      return write(SseComment("ping"));
                    }
                    WaitStopping(options_.logs_poll);
                  }
                } catch (const std::exception& e) {
                  spdlog::error("api: log stream failed task_id={} what={}", id, e.what());
                  return false;
                }
              },
              [slot](bool) {});
        }));
}

}  // namespace runner::api
