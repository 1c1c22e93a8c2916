#include "api/server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <initializer_list>
#include <map>
#include <optional>
#include <stdexcept>
#include <unordered_map>

#include "api/auth.h"
#include "api/elastic_task_queue.h"
#include "api/event_hub.h"
#include "api/http_front.h"
#include "api/json_text.h"
#include "api/openapi.h"
#include "api/routes_queues.h"
#include "api/routes_schedules.h"
#include "api/sse.h"
#include "api/task_json.h"
#include "api/web_assets.h"
#include "base/error_codes.h"
#include "base/ulid.h"

namespace runner::api {
namespace {

namespace json = boost::json;
using httplib::Request;
using httplib::Response;
using queue::QueueStore;

constexpr const char* kJson = "application/json";

void SendError(Response& res, const Error& error) {
  res.status = errc::HttpStatusFor(error.code);
  res.set_content(ErrorBody(error), kJson);
}

// docs/api.md: an unknown query parameter is a 400, like an unknown field.
std::optional<Error> UnknownParam(const Request& req,
                                  std::initializer_list<std::string_view> allowed) {
  for (const auto& [key, value] : req.params) {
    if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
    std::string list;
    for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    return MakeError("validation_failed", key + ": unknown query parameter (allowed: " +
                                              (list.empty() ? std::string("none") : list) + ")");
  }
  return std::nullopt;
}

// The API routes that read query parameters (each checks its own list).
bool ReadsQueryParams(const Request& req) {
  if (req.method != "GET") return false;
  const std::string_view path = req.path;
  return path == "/api/v1/tasks" || path == "/api/v1/events" ||
         (path.starts_with("/api/v1/tasks/") && path.ends_with("/logs"));
}

void SendJson(Response& res, int status, const json::value& value) {
  res.status = status;
  res.set_content(WriteJson(value), kJson);
}

// For statuses httplib produces itself (no route, body too large, bad request line).
Error ErrorForStatus(int status) {
  switch (status) {
    case 400:
      return MakeError("bad_request", "the request could not be parsed");
    case 404:
      return MakeError("not_found",
                       "no such endpoint; see docs/api.md for the routes under /api/v1");
    case 405:
      return MakeError("bad_request", "method not allowed on this endpoint");
    case 413:
      return MakeError("payload_too_large", "the request body is larger than 1 MiB");
    case 414:
      return MakeError("bad_request", "the request URI is too long");
    case 416:
      return MakeError("bad_request", "the requested range is not satisfiable");
    case 503:
      return MakeError("unavailable", "the server is busy; retry later");
    default:
      break;
  }
  return MakeError(status >= 500 ? "internal" : "bad_request", "HTTP " + std::to_string(status));
}

std::optional<int64_t> ParseInt64(std::string_view text) {
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return v;
}

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

// Set by the logger when an answer says `Connection: close` (a bogus
// Content-Length): the connection is then closed, not read for another request.
thread_local bool t_close_after = false;

// cpp-httplib's route table, handlers and response writer, fed by HttpFront:
// the connections, their deadlines and the cap are HttpFront's, so
// httplib's own listen loop (a thread per connection) never runs.
class Http : public httplib::Server {
 public:
  // One request from `stream`; true when the connection may serve another.
  bool Serve(httplib::Stream& stream, bool close_connection) {
    bool connection_closed = false;
    t_close_after = false;
    bool ok = process_request(stream, close_connection, connection_closed, nullptr);
    return ok && !connection_closed && !t_close_after;
  }
  // httplib ends chunked (SSE) responses once this is INVALID_SOCKET.
  void SetListening(int fd) { svr_sock_ = fd; }
};

// Routes by who may call them.
enum class Access {
  kPublic,        // health, readiness, metrics, the dashboard's files
  kToken,         // Authorization: Bearer
  kTokenOrQuery,  // SSE: Bearer, or ?token= (EventSource cannot set headers)
};

// Releases an SSE slot and the subscription when httplib drops the response.
struct StreamSlot {
  std::atomic<int>* open = nullptr;
  std::function<void()> release;
  ~StreamSlot() {
    if (release) release();
    if (open != nullptr) open->fetch_sub(1);
  }
};

}  // namespace

// Every connection is a socket: 10,000 idle clients and 1,000 SSE subscribers
// exceed the usual soft limit of 1,024 descriptors, so take what the hard
// limit allows (as Go's runtime does).
void RaiseOpenFilesLimit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  const rlim_t want = lim.rlim_max == RLIM_INFINITY ? rlim_t{1} << 20 : lim.rlim_max;
  if (lim.rlim_cur >= want) return;
  lim.rlim_cur = want;
  if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) {
    spdlog::warn("could not raise the open files limit to {}: {}", want, std::strerror(errno));
  }
}

ApiServer::ApiServer(ApiOptions options, QueueStore& store, NodeControl& node,
                     metrics::Registry& registry)
    : options_(std::move(options)),
      store_(store),
      node_(node),
      registry_(registry),
      queue_metrics_(std::make_unique<QueueMetrics>(store, registry)) {}

ApiServer::~ApiServer() { Stop(); }

bool ApiServer::WaitStopping(std::chrono::milliseconds wait) {
  std::unique_lock lock(stop_mu_);
  return stop_cv_.wait_for(lock, wait, [&] { return stopping_.load(); });
}

Status ApiServer::Listen() {
  if (listening_) return {};
  auto addr = ParseListen(options_.listen);
  if (!addr) return addr.error();
  if (options_.api_token && options_.api_token->empty()) options_.api_token.reset();
  if (auto st = CheckListen(options_.listen, options_.api_token); !st) return st;
  if (options_.max_streams == 0 || options_.http_threads == 0) {
    return MakeError("validation_failed", "http_threads and max_streams must be at least 1");
  }
  if (options_.max_connections < options_.http_threads + options_.max_streams + 256) {
    return MakeError("validation_failed",
                     "max_connections must leave at least 256 threads beyond http_threads + "
                     "max_streams for slow and ordinary clients");
  }
  RaiseOpenFilesLimit();
  http_ = std::make_unique<Http>();
  http_->set_payload_max_length(options_.max_body_bytes);
  http_->set_keep_alive_max_count(100);  // announced in Keep-Alive; HttpFront enforces both
  http_->set_keep_alive_timeout(options_.keep_alive_timeout.count());
  // cpp-httplib 0.11 reads a POST, PUT, PATCH or DELETE that has neither
  // Content-Length nor Transfer-Encoding as "body until the connection
  // closes", and answers 400 when it does not close. RFC 9112 (6.3) says
  // such a request has no body, and `curl -X POST URL` sends exactly that, so
  // it gets the Content-Length: 0 it means. (The handler runs before the body
  // is read; the request is the server's own, not a const object.)
  //
  // A bogus Content-Length (not a number, negative, or absurdly large) is
  // answered at once, before any body is read, and the connection closed:
  // cpp-httplib would parse "-1" as 2^64-1 and try to skip that many bytes.
  // (HttpFront reads a body first only when its length is at most
  // max_body_bytes, so such a request reaches this handler after its head.)
  const std::size_t max_body = options_.max_body_bytes;
  http_->set_pre_routing_handler([max_body](const httplib::Request& req, httplib::Response& res) {
    if (!req.has_header("Content-Length") && !req.has_header("Transfer-Encoding")) {
      const_cast<httplib::Request&>(req).headers.emplace("Content-Length", "0");
      return httplib::Server::HandlerResponse::Unhandled;
    }
    if (!req.has_header("Content-Length")) return httplib::Server::HandlerResponse::Unhandled;
    const std::string length = req.get_header_value("Content-Length");
    uint64_t n = 0;
    auto [end, ec] = std::from_chars(length.data(), length.data() + length.size(), n);
    std::optional<Error> bad;
    if (length.empty() || ec != std::errc() || end != length.data() + length.size()) {
      bad = MakeError("bad_request", "Content-Length: must be a whole number of bytes, got '" +
                                         length.substr(0, 32) + "'");
    } else if (n > std::max<uint64_t>(uint64_t{max_body} * 16, uint64_t{64} << 20)) {
      // Only absurd lengths: a plausible body just over the limit is read and
      // answered 413 by httplib, so an honest client that is still sending
      // gets its answer instead of a reset.
      bad = MakeError("payload_too_large", "the body is over " + std::to_string(max_body) +
                                               " bytes (Content-Length: " + length + ")");
    }
    if (!bad) return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("Connection", "close");
    SendError(res, *bad);
    return httplib::Server::HandlerResponse::Handled;
  });

  EventHubOptions hub_options;
  hub_options.poll_interval = options_.events_poll;
  hub_options.buffer_events = options_.stream_buffer_events;
  hub_options.max_subscribers = options_.max_streams;
  hub_ = std::make_unique<EventHub>(store_, hub_options);

  Routes();

  // Workers run complete requests; SSE streams hold one for their life, so
  // the pool grows past http_threads up to max_streams + 256 more.
  workers_ = std::make_unique<ElasticTaskQueue>(options_.http_threads,
                                                options_.http_threads + options_.max_streams + 256,
                                                options_.max_connections + 16);
  FrontOptions front;
  front.max_connections = options_.max_connections;
  front.max_body_bytes = options_.max_body_bytes;
  front.header_timeout = options_.header_timeout;
  front.body_timeout = options_.body_timeout;
  front.keep_alive_timeout = options_.keep_alive_timeout;
  front.read_timeout = options_.read_timeout;
  front.write_timeout = options_.write_timeout;
  Http* http = static_cast<Http*>(http_.get());
  front_ = std::make_unique<HttpFront>(
      front, [http](httplib::Stream& s, bool close) { return http->Serve(s, close); }, *workers_);
  auto bound = front_->Bind(addr->host, addr->port);
  if (!bound) {
    Stop();
    if (addr->port == 0) {
      return MakeError("unavailable", "cannot bind " + addr->host + " on any port");
    }
    return MakeError("unavailable", "cannot listen on " + options_.listen +
                                        " (in use, or not an address of this host); pick "
                                        "another with --listen");
  }
  port_ = *bound;
  http->SetListening(front_->listen_fd());
  listening_ = true;
  return {};
}

Status ApiServer::Start() {
  if (auto st = Listen(); !st) return st;
  hub_->Start();
  front_->Start();
  spdlog::info("api: listening listen={}:{} auth={}", ParseListen(options_.listen)->host, port_,
               options_.api_token ? "token" : "none");
  return {};
}

void ApiServer::Stop() {
  if (!http_) return;
  {
    std::lock_guard lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (hub_) hub_->Stop();               // event streams see kClosed and finish
  if (front_) front_->StopAccepting();  // and idle connections close
  static_cast<Http*>(http_.get())->SetListening(INVALID_SOCKET);  // log streams end
  if (workers_) workers_->shutdown();                             // in-flight requests finish
  if (front_) front_->Join();
  workers_.reset();
  front_.reset();
  http_.reset();
  hub_.reset();
  spdlog::info("api: stopped");
}

void ApiServer::Routes() {
  httplib::Server& s = *http_;
  const std::optional<std::string> token = options_.api_token;

  // The one place where exceptions become HTTP responses, and where auth runs.
  auto wrap = [this, token](Access access, httplib::Server::Handler fn) {
    return [this, token, access, fn = std::move(fn)](const Request& req, Response& res) {
      try {
        if (token && access != Access::kPublic) {
          bool ok = BearerMatches(req.get_header_value("Authorization"), *token);
          if (!ok && access == Access::kTokenOrQuery && req.has_param("token")) {
            ok = ConstantTimeEquals(req.get_param_value("token"), *token);
          }
          if (!ok) {
            res.set_header("WWW-Authenticate", "Bearer");
            SendError(res, MakeError("unauthorized",
                                     "missing or wrong API token: send 'Authorization: Bearer "
                                     "<token>' (runner --token / RUNNER_API_TOKEN)"));
            return;
          }
        }
        // docs/api.md: an unknown query parameter is a 400, never ignored. The
        // routes that read parameters check their own list; the others take none.
        if (access != Access::kPublic && !req.params.empty() && !ReadsQueryParams(req)) {
          return SendError(res, *UnknownParam(req, {}));
        }
        fn(req, res);
      } catch (const std::exception& e) {
        spdlog::error("api: handler failed method={} path={} what={}", req.method, req.path,
                      e.what());
        res.content_provider_ = nullptr;
        res.is_chunked_content_provider_ = false;
        SendError(res, MakeError("internal", std::string("internal error: ") + e.what()));
      }
    };
  };

  s.set_error_handler([](const Request&, Response& res) {
    if (!res.body.empty() || res.content_provider_) return;
    SendError(res, ErrorForStatus(res.status));
  });
  s.set_logger([this](const Request& req, const Response& res) {
    if (res.get_header_value("Connection") == "close") t_close_after = true;
    registry_
        .GetCounter("runner_http_requests_total", "HTTP requests served, by status code",
                    {{"code", std::to_string(res.status)}})
        .Inc();
    spdlog::debug("api: request method={} path={} status={}", req.method, req.path, res.status);
  });

  ScheduleRoutes(
      s, [&](httplib::Server::Handler fn) { return wrap(Access::kToken, std::move(fn)); },
      schedules_, store_);
  QueueRoutes(
      s, [&](httplib::Server::Handler h) { return wrap(Access::kToken, std::move(h)); }, store_);

  // --- tasks ------------------------------------------------------------------
  s.Post("/api/v1/tasks", wrap(Access::kToken, [this](const Request& req, Response& res) {
           auto task = ParseNewTask(req.body);
           if (!task) return SendError(res, task.error());
           auto out = store_.Submit(*task);
           if (!out) return SendError(res, out.error());
           SendJson(res, out->created ? 201 : 200, TaskToJson(out->task));
         }));

  s.Get("/api/v1/tasks", wrap(Access::kToken, [this](const Request& req, Response& res) {
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

  auto task_not_found = [](const std::string& id) {
    return MakeError("not_found", "no task with id " + id);
  };

  s.Get(R"(/api/v1/tasks/([^/]+))",
        wrap(Access::kToken, [this, task_not_found](const Request& req, Response& res) {
          std::string id = req.matches[1];
          if (!IsUlid(id)) return SendError(res, task_not_found(id));
          auto task = store_.Get(id);
          if (!task) return SendError(res, task.error());
          SendJson(res, 200, TaskToJson(*task));
        }));

  s.Post(R"(/api/v1/tasks/([^/]+)/cancel)",
         wrap(Access::kToken, [this, task_not_found](const Request& req, Response& res) {
           std::string id = req.matches[1];
           if (!IsUlid(id)) return SendError(res, task_not_found(id));
           auto task = store_.Cancel(id);
           if (!task) return SendError(res, task.error());
           SendJson(res, 202, TaskToJson(*task));
         }));

  // Logs: text, or SSE when follow=1. Token via query only for the SSE form.
  s.Get(
      R"(/api/v1/tasks/([^/]+)/logs)",
      wrap(Access::kTokenOrQuery, [this, token, task_not_found](const Request& req, Response& res) {
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
        if (!IsUlid(id)) return SendError(res, task_not_found(id));
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
                    bool ok = write(SseEvent(std::nullopt, "end", WriteJson(TaskToJson(*current))));
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

  // --- pool, workers, nodes ---------------------------------------------------
  auto status_json = [this]() -> Result<json::object> {
    auto counts = store_.Counts();
    if (!counts) return counts.error();
    auto nodes = store_.ListNodes();
    if (!nodes) return nodes.error();
    return StatusToJson(node_.Status(), *counts, nodes->size());
  };

  s.Get("/api/v1/status", wrap(Access::kToken, [status_json](const Request&, Response& res) {
          auto body = status_json();
          if (!body) return SendError(res, body.error());
          SendJson(res, 200, *body);
        }));

  s.Get("/api/v1/workers", wrap(Access::kToken, [this](const Request&, Response& res) {
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

  s.Get("/api/v1/nodes", wrap(Access::kToken, [this](const Request&, Response& res) {
          auto nodes = store_.ListNodes();
          if (!nodes) return SendError(res, nodes.error());
          json::array a;
          for (const auto& n : *nodes) a.emplace_back(NodeToJson(n));
          SendJson(res, 200, json::object{{"nodes", std::move(a)}});
        }));

  s.Post("/api/v1/pool/scale",
         wrap(Access::kToken, [this, status_json](const Request& req, Response& res) {
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
         wrap(Access::kToken, [this, status_json](const Request& req, Response& res) {
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
         wrap(Access::kToken, [this, status_json](const Request& req, Response& res) {
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

  // --- events -----------------------------------------------------------------
  s.Get("/api/v1/events", wrap(Access::kTokenOrQuery, [this](const Request& req, Response& res) {
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

  // --- operations -------------------------------------------------------------
  s.Get("/metrics", wrap(Access::kPublic, [this](const Request&, Response& res) {
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

  s.Get("/healthz", wrap(Access::kPublic, [](const Request&, Response& res) {
          SendJson(res, 200, json::object{{"status", "ok"}});
        }));

  s.Get("/readyz", wrap(Access::kPublic, [this](const Request&, Response& res) {
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

  s.Get("/api/v1/openapi.yaml", wrap(Access::kPublic, ServeOpenApi));

  // --- the dashboard ------------------------------------------------------------
  // Public: the files hold no data; the page asks for the token and sends it
  // with every API call.
  s.Get(R"(/(.*))", wrap(Access::kPublic, [](const Request& req, Response& res) {
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
