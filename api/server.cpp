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
#include "api/event_hub.h"
#include "api/http_front.h"
#include "api/http_reply.h"
#include "api/http_workers.h"
#include "api/routes_queues.h"
#include "api/routes_schedules.h"
#include "api/task_json.h"
#include "base/error_codes.h"

namespace runner::api {
namespace {

namespace json = boost::json;
using httplib::Request;
using httplib::Response;
using queue::QueueStore;

// The API routes that read query parameters (each checks its own list).
bool ReadsQueryParams(const Request& req) {
  if (req.method != "GET") return false;
  const std::string_view path = req.path;
  return path == "/api/v1/tasks" || path == "/api/v1/events" ||
         (path.starts_with("/api/v1/tasks/") && path.ends_with("/logs"));
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
  // A bogus Content-Length (not a number, negative, two that disagree) is
  // answered at once, before any body is read, and the connection closed:
  // cpp-httplib would parse "-1" as 2^64-1 and try to skip that many bytes.
  // (HttpFront reads a body first; a bogus length is the one request that
  // reaches this handler without it. HttpFront answers lengths over
  // max_body_bytes itself; the check below is for callers without it.)
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
    bool disagree = false;
    for (std::size_t i = 1; i < req.get_header_value_count("Content-Length"); ++i) {
      disagree = disagree || req.get_header_value("Content-Length", i) != length;
    }
    if (length.empty() || ec != std::errc() || end != length.data() + length.size()) {
      bad = MakeError("bad_request", "Content-Length: must be a whole number of bytes, got '" +
                                         length.substr(0, 32) + "'");
    } else if (disagree) {
      bad = MakeError("bad_request", "Content-Length: given twice with different values");
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
  workers_ = std::make_unique<HttpWorkers>(options_.http_threads,
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

// The one place where exceptions become HTTP responses, and where auth runs.
ApiServer::Handler ApiServer::Guarded(Access access, Handler fn) {
  const std::optional<std::string> token = options_.api_token;
  return [token, access, fn = std::move(fn)](const Request& req, Response& res) {
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
}

void ApiServer::Routes() {
  httplib::Server& s = *http_;
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

  const auto token_only = [this](Handler fn) { return Guarded(Access::kToken, std::move(fn)); };
  ScheduleRoutes(s, token_only, schedules_, store_);
  QueueRoutes(s, token_only, store_);
  TaskRoutes();
  TaskLogRoutes();
  PoolRoutes();
  EventRoutes();
  OpsRoutes();  // last: it ends with the dashboard's catch-all
}

}  // namespace runner::api
