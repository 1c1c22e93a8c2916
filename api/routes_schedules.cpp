#include "api/routes_schedules.h"

#include <boost/json.hpp>

#include "api/http_reply.h"
#include "api/schedule_json.h"
#include "api/task_json.h"
#include "base/clock.h"
#include "base/error_codes.h"

namespace runner::api {
namespace {

namespace json = boost::json;
using httplib::Request;
using httplib::Response;

constexpr const char* kNamePath = R"(/api/v1/schedules/([^/]+))";

}  // namespace

void ScheduleRoutes(httplib::Server& s, const RouteWrap& wrap, schedule::ScheduleStore* store,
                    queue::QueueStore& tasks) {
  // Each handler: the store, or 503 when this server has none.
  auto with_store = [store, &wrap](auto fn) {
    return wrap([store, fn](const Request& req, Response& res) {
      if (store == nullptr) {
        return SendError(res, MakeError("unavailable", "this server does not serve schedules"));
      }
      fn(*store, req, res);
    });
  };
  auto now = [] { return SystemClock().SystemNow(); };

  s.Post("/api/v1/schedules",
         with_store([now](schedule::ScheduleStore& st, const Request& req, Response& res) {
           auto spec = ParseScheduleSpec(req.body);
           if (!spec) return SendError(res, spec.error());
           auto made = st.Create(*spec, now());
           if (!made) return SendError(res, made.error());
           SendJson(res, 201, ScheduleToJson(*made));
         }));

  s.Get("/api/v1/schedules",
        with_store([](schedule::ScheduleStore& st, const Request&, Response& res) {
          auto all = st.List();
          if (!all) return SendError(res, all.error());
          json::array out;
          for (const auto& sc : *all) out.emplace_back(ScheduleToJson(sc));
          SendJson(res, 200, json::object{{"schedules", std::move(out)}});
        }));

  s.Get(kNamePath, with_store([](schedule::ScheduleStore& st, const Request& req, Response& res) {
          auto sc = st.Get(req.matches[1]);
          if (!sc) return SendError(res, sc.error());
          SendJson(res, 200, ScheduleToJson(*sc));
        }));

  s.Put(kNamePath,
        with_store([now](schedule::ScheduleStore& st, const Request& req, Response& res) {
          auto spec = ParseScheduleSpec(req.body, std::string(req.matches[1]));
          if (!spec) return SendError(res, spec.error());
          auto sc = st.Replace(*spec, now());
          if (!sc) return SendError(res, sc.error());
          SendJson(res, 200, ScheduleToJson(*sc));
        }));

  s.Delete(kNamePath,
           with_store([](schedule::ScheduleStore& st, const Request& req, Response& res) {
             auto done = st.Delete(req.matches[1]);
             if (!done) return SendError(res, done.error());
             res.status = 204;
           }));

  s.Post(R"(/api/v1/schedules/([^/]+)/trigger)",
         with_store([now, &tasks](schedule::ScheduleStore& st, const Request& req, Response& res) {
           auto id = st.Trigger(req.matches[1], now());
           if (!id) return SendError(res, id.error());
           auto task = tasks.Get(*id);
           if (!task) return SendError(res, task.error());
           SendJson(res, 201, TaskToJson(*task));
         }));
}

}  // namespace runner::api
