// The routes for operators and the browser, most of them public: /metrics,
// /healthz, /readyz, /api/v1/openapi.yaml and the dashboard's files.

#include <httplib.h>

#include <boost/json.hpp>
#include <cstdio>
#include <map>
#include <string>

#include "api/http_front.h"
#include "api/http_reply.h"
#include "api/openapi.h"
#include "api/routes_queues.h"
#include "api/server.h"
#include "api/web_assets.h"

namespace runner::api {

namespace json = boost::json;
using httplib::Request;
using httplib::Response;

namespace {

std::string_view ContentTypeFor(std::string_view path) {
  static const std::map<std::string, std::string, std::less<>> kTypes = {
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".map", "application/json"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".woff2", "font/woff2"},
      {".txt", "text/plain; charset=utf-8"},
  };
  auto dot = path.rfind('.');
  if (dot != std::string_view::npos) {
    auto it = kTypes.find(path.substr(dot));
    if (it != kTypes.end()) return it->second;
  }
  return "application/octet-stream";
}

struct StaticFile {
  std::string_view content;
  std::string_view type;
  std::string etag;
};

const std::map<std::string, StaticFile, std::less<>>& StaticFiles() {
  static const auto* files = [] {
    auto* m = new std::map<std::string, StaticFile, std::less<>>();  // NOLINT: immortal
    for (const auto& a : WebAssets()) {
      uint64_t h = 1469598103934665603ull;  // FNV-1a
      for (char c : a.content) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ull;
      }
      char tag[24];
      std::snprintf(tag, sizeof tag, "\"%016llx\"", static_cast<unsigned long long>(h));
      (*m)[std::string(a.path)] = StaticFile{a.content, ContentTypeFor(a.path), tag};
    }
    return m;
  }();
  return *files;
}

}  // namespace

void ApiServer::OpsRoutes() {
  httplib::Server& s = *http_;

  s.Get("/metrics", Guarded(Access::kPublic, [this](const Request&, Response& res) {
          if (auto counts = store_.Counts()) {
            for (const auto& [state, n] : *counts) {
              registry_
                  .GetGauge("runner_tasks", "Tasks in the queue by state",
                            {{"state", std::string(queue::ToString(state))}})
                  .Set(static_cast<double>(n));
            }
          }
          queue_metrics_->Refresh();
          registry_.GetGauge("runner_api_streams", "Open SSE streams")
              .Set(static_cast<double>(open_streams_.load()));
          registry_
              .GetGauge("runner_api_connections",
                        "Open HTTP connections (idle, being read, or in a handler)")
              .Set(static_cast<double>(front_ ? front_->open_connections() : 0));
          res.status = 200;
          res.set_content(registry_.Render(), "text/plain; version=0.0.4; charset=utf-8");
        }));

  s.Get("/healthz", Guarded(Access::kPublic, [](const Request&, Response& res) {
          SendJson(res, 200, json::object{{"status", "ok"}});
        }));

  s.Get("/readyz", Guarded(Access::kPublic, [this](const Request&, Response& res) {
          if (auto ping = store_.Ping(); !ping) {
            return SendError(res, MakeError("unavailable", "the database does not answer: " +
                                                               ping.error().message));
          }
          if (!node_.Running()) {
            return SendError(res, MakeError("unavailable",
                                            "the worker pool is not running; start it with "
                                            "`runner start` or POST /api/v1/pool/start"));
          }
          SendJson(res, 200, json::object{{"status", "ready"}});
        }));

  s.Get("/api/v1/openapi.yaml", Guarded(Access::kPublic, ServeOpenApi));

  // --- the dashboard ------------------------------------------------------------
  // Public: the files hold no data; the page asks for the token and sends it
  // with every API call.
  s.Get(R"(/(.*))", Guarded(Access::kPublic, [](const Request& req, Response& res) {
          std::string path = req.path == "/" ? "/index.html" : req.path;
          const auto& files = StaticFiles();
          auto it = files.find(path);
          if (it == files.end() || path.rfind("/api/", 0) == 0) {
            return SendError(res, MakeError("not_found", "no such page or endpoint: " + req.path));
          }
          const StaticFile& f = it->second;
          // Asset names are not content-hashed, so the browser revalidates each
          // time (cheap: 304 on a matching ETag) and never runs a stale app.
          res.set_header("Cache-Control", "no-cache");
          res.set_header("ETag", f.etag);
          res.set_header("X-Content-Type-Options", "nosniff");
          if (req.get_header_value("If-None-Match") == f.etag) {
            res.status = 304;
            return;
          }
          res.status = 200;
          res.set_content(std::string(f.content), std::string(f.type));
        }));
}

}  // namespace runner::api
