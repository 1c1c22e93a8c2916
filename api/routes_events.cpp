// The event stream: GET /api/v1/events (SSE), live from the EventHub, with a
// replay from the events table after Last-Event-ID.

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <boost/json.hpp>
#include <memory>
#include <string>
#include <vector>

#include "api/event_hub.h"
#include "api/http_reply.h"
#include "api/json_text.h"
#include "api/server.h"
#include "api/sse.h"
#include "api/task_json.h"

namespace runner::api {

namespace json = boost::json;
using httplib::Request;
using httplib::Response;

void ApiServer::EventRoutes() {
  httplib::Server& s = *http_;

  s.Get("/api/v1/events", Guarded(Access::kTokenOrQuery, [this](const Request& req, Response& res) {
          if (auto e = UnknownParam(req, {"last_event_id", "token"})) return SendError(res, *e);
          std::optional<int64_t> resume;
          std::string last = req.get_header_value("Last-Event-ID");
          if (last.empty() && req.has_param("last_event_id")) {
            last = req.get_param_value("last_event_id");
          }
          if (!last.empty()) {
            resume = ParseInt64(last);
            if (!resume || *resume < 0) {
              return SendError(res, MakeError("validation_failed",
                                              "Last-Event-ID: must be an event id (an integer)"));
            }
          }
          if (open_streams_.fetch_add(1) >= static_cast<int>(options_.max_streams)) {
            open_streams_.fetch_sub(1);
            return SendError(res, MakeError("unavailable", "too many streams are open"));
          }
          auto slot = std::make_shared<StreamSlot>();
          slot->open = &open_streams_;
          auto sub = hub_->Subscribe();
          if (!sub) return SendError(res, sub.error());
          std::shared_ptr<EventSubscription> subscription = *sub;
          EventHub* hub = hub_.get();
          slot->release = [hub, subscription] { hub->Unsubscribe(subscription); };

          struct EventsState {
            bool started = false;
            bool replaying = false;
            int64_t last_sent = 0;
          };
          auto st = std::make_shared<EventsState>();
          if (resume) {
            st->replaying = true;
            st->last_sent = *resume;
          }
          res.set_header("Cache-Control", "no-cache");
          res.set_header("X-Accel-Buffering", "no");
          res.set_chunked_content_provider(
              "text/event-stream",
              [this, st, subscription, slot](size_t, httplib::DataSink& sink) {
                try {
                  auto send = [&](const std::vector<queue::Event>& events) {
                    std::string out;
                    for (const auto& e : events) {
                      if (e.id <= st->last_sent) continue;  // replay and live overlap
                      out += SseEvent(e.id, e.kind, WriteJson(EventToJson(e)));
                      st->last_sent = e.id;
                    }
                    return out.empty() || sink.write(out.data(), out.size());
                  };
                  if (!st->started) {
                    st->started = true;
                    std::string hello = SseRetry(3000) + SseComment("connected");
                    return sink.write(hello.data(), hello.size());
                  }
                  if (st->replaying) {
                    auto page = store_.EventsAfter(st->last_sent, 500);
                    if (!page) {
                      spdlog::warn("api: event replay failed code={} message={}", page.error().code,
                                   page.error().message);
                      return false;
                    }
                    if (page->size() < 500) st->replaying = false;
                    return send(*page);
                  }
                  std::vector<queue::Event> batch;
                  switch (subscription->Next(batch, options_.heartbeat)) {
                    case EventSubscription::Wake::kEvents:
                      return send(batch);
                    case EventSubscription::Wake::kTimeout: {
                      std::string ping = SseComment("ping");
                      return sink.write(ping.data(), ping.size());
                    }
                    case EventSubscription::Wake::kClosed:
                      sink.done();
                      return true;
                    case EventSubscription::Wake::kOverflow:
                      // Too slow: drop it; EventSource reconnects with Last-Event-ID.
                      spdlog::warn("api: dropping a slow event stream last_event_id={}",
                                   st->last_sent);
                      sink.done();
                      return true;
                  }
                  return false;
                } catch (const std::exception& e) {
                  spdlog::error("api: event stream failed what={}", e.what());
                  return false;
                }
              },
              [slot](bool) {});
        }));
}

}  // namespace runner::api
