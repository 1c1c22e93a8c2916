// The node and pool routes: GET /api/v1/status, /api/v1/workers and
// /api/v1/nodes; POST /api/v1/pool/scale, /api/v1/pool/stop and
// /api/v1/pool/start.

#include <httplib.h>

#include <boost/json.hpp>
#include <map>
#include <string>

#include "api/http_reply.h"
#include "api/server.h"
#include "api/task_json.h"

namespace runner::api {

namespace json = boost::json;
using httplib::Request;
using httplib::Response;

void ApiServer::PoolRoutes() {
  httplib::Server& s = *http_;

  auto status_json = [this]() -> Result<json::object> {
    auto counts = store_.Counts();
    if (!counts) return counts.error();
    auto nodes = store_.ListNodes();
    if (!nodes) return nodes.error();
    return StatusToJson(node_.Status(), *counts, nodes->size());
  };

  s.Get("/api/v1/status", Guarded(Access::kToken, [status_json](const Request&, Response& res) {
          auto body = status_json();
          if (!body) return SendError(res, body.error());
          SendJson(res, 200, *body);
        }));

  s.Get("/api/v1/workers", Guarded(Access::kToken, [this](const Request&, Response& res) {
          auto workers = store_.ListWorkers();
          if (!workers) return SendError(res, workers.error());
          // This node's own workers as they are now, over the table's rows,
          // which lag by up to a heartbeat; other nodes' rows as they are.
          std::map<std::string, queue::WorkerInfo> live;
          for (auto& w : node_.LiveWorkers()) live.emplace(w.id, std::move(w));
          const std::string self = live.empty() ? std::string() : live.begin()->second.node_id;
          json::array a;
          for (const auto& w : *workers) {
            auto it = live.find(w.id);
            if (it == live.end()) {
              if (self.empty() || w.node_id != self) a.emplace_back(WorkerToJson(w));
              continue;  // else ours but gone: it stopped, its row goes next
            }
            queue::WorkerInfo now = w;
            now.state = it->second.state;
            now.task_id = it->second.task_id;
            a.emplace_back(WorkerToJson(now));
            live.erase(it);
          }
          for (const auto& [id, w] : live) a.emplace_back(WorkerToJson(w));  // not in the table yet
          SendJson(res, 200, json::object{{"workers", std::move(a)}});
        }));

  s.Get("/api/v1/nodes", Guarded(Access::kToken, [this](const Request&, Response& res) {
          auto nodes = store_.ListNodes();
          if (!nodes) return SendError(res, nodes.error());
          json::array a;
          for (const auto& n : *nodes) a.emplace_back(NodeToJson(n));
          SendJson(res, 200, json::object{{"nodes", std::move(a)}});
        }));

  s.Post("/api/v1/pool/scale",
         Guarded(Access::kToken, [this, status_json](const Request& req, Response& res) {
           auto body = ParseScaleRequest(req.body);
           if (!body) return SendError(res, body.error());
           int max = node_.Status().pool.max;
           if (body->count < 1 || (max > 0 && body->count > max)) {
             return SendError(res,
                              MakeError("validation_failed", "count: must be between 1 and " +
                                                                 std::to_string(max > 0 ? max : 1) +
                                                                 " (--max-workers)"));
           }
           if (auto st = node_.Scale(body->count); !st) return SendError(res, st.error());
           auto out = status_json();
           if (!out) return SendError(res, out.error());
           SendJson(res, 202, *out);
         }));

  s.Post("/api/v1/pool/stop",
         Guarded(Access::kToken, [this, status_json](const Request& req, Response& res) {
           auto body = ParseStopRequest(req.body);
           if (!body) return SendError(res, body.error());
           StopOptions opts;
           opts.force = body->force;
           opts.drain_timeout =
               body->drain_timeout
                   ? std::chrono::seconds(static_cast<int64_t>(*body->drain_timeout))
                   : options_.default_drain_timeout;
           node_.StopPool(opts);
           auto out = status_json();
           if (!out) return SendError(res, out.error());
           SendJson(res, 202, *out);
         }));

  s.Post("/api/v1/pool/start",
         Guarded(Access::kToken, [this, status_json](const Request& req, Response& res) {
           if (auto body = ParseStopRequest(req.body); !body) {
             return SendError(res, body.error());
           } else if (body->force || body->drain_timeout) {
             return SendError(res, MakeError("validation_failed",
                                             "pool/start takes no fields; send {} or no body"));
           }
           node_.StartPool();
           auto out = status_json();
           if (!out) return SendError(res, out.error());
           SendJson(res, 202, *out);
         }));
}

}  // namespace runner::api
