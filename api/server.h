#pragma once

// The REST + SSE server of docs/api.md (Asio connections, cpp-httplib routes): tasks, pool,
// workers, nodes, events, /metrics, /healthz, /readyz, the contract (/api/v1/openapi.yaml) and the
// embedded dashboard at `/`.
//
// Contract:
// - Listen() checks the options and binds (port 0 picks a free port, see
//   port()) without serving: connections wait in the backlog. `serve` calls
//   it before the node starts, so a port in use fails the start before the
//   pool could claim a task. Start() listens when Listen() was not called,
//   then serves on a background thread; Stop() ends every SSE stream, stops
//   accepting, waits for in-flight requests and joins. Stop() is idempotent
//   and called by the destructor.
// - A listen address that is not loopback needs a token: Start() refuses with
//   a `validation_failed` error otherwise.
// - With a token every endpoint but /healthz, /readyz, /metrics,
//   /api/v1/openapi.yaml and the dashboard's files needs
//   `Authorization: Bearer <token>` (401 `unauthorized`). Because browsers
//   cannot set headers on EventSource, the two SSE endpoints (events, and logs
//   with follow=1) also accept `?token=<token>`; nothing else does.
// - Every error is {"error":{"code","message"}}; exceptions thrown by a handler
//   are translated to 500 `internal` in one place (the handler wrapper).
// - Connections (HttpFront, Asio): one I/O thread holds every connection
//   while it is idle or its client is still sending, so 10,000 idle or
//   half-sent connections cost no thread each. The request head must arrive
//   within header_timeout (keep_alive_timeout between requests) and a body
//   of at most max_body_bytes within body_timeout, else the connection is
//   closed. At max_connections (bounded by the open-files limit, which
//   Start() raises to the hard limit) a new connection closes the one that
//   has waited longest for bytes.
// - Threads: a complete request runs on a worker (cpp-httplib's route table
//   and response writer). The pool keeps `http_threads` and grows on demand
//   by max_streams + 256: an SSE stream holds a worker for its life, written
//   incrementally with write_timeout per write as its backpressure. Stream
//   number max_streams+1 gets 503 `unavailable`.
//
// Thread-safety: Start()/Stop() from one owning thread; handlers run on the
// server's pool and only use thread-safe collaborators (QueueStore,
// NodeControl, Registry are all safe from any thread).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "base/result.h"
#include "runner/metrics/registry.h"
#include "runner/node/node_control.h"
#include "runner/queue/queue_store.h"
#include "runner/schedule/schedule_store.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace runner::api {

class EventHub;
class HttpWorkers;
class HttpFront;
class QueueMetrics;

struct ApiOptions {
  std::string listen = "127.0.0.1:8080";  // HOST:PORT; port 0 = any free port
  std::optional<std::string> api_token;
  std::size_t max_body_bytes = 1 << 20;            // larger bodies: 413 payload_too_large
  std::chrono::seconds default_drain_timeout{60};  // pool/stop without drain_timeout
  // SSE
  std::chrono::milliseconds heartbeat{15000};  // ": ping" comment interval
  std::chrono::milliseconds events_poll{250};  // shared poller of the events table
  std::chrono::milliseconds logs_poll{200};    // log follow polling of task_logs
  std::size_t stream_buffer_events = 1024;     // per subscriber; slower clients are dropped
  std::size_t max_streams = 1024;              // open SSE streams at once
  // HTTP
  std::size_t http_threads = 16;  // workers kept for ordinary requests
  // Open connections at most (also bounded by the open-files limit);
  // >= http_threads + max_streams + 256.
  std::size_t max_connections = 16384;
  std::chrono::seconds header_timeout{10};     // the request head, from the first wait
  std::chrono::seconds body_timeout{30};       // a body read before its handler runs
  std::chrono::seconds keep_alive_timeout{5};  // idle between requests
  std::chrono::seconds read_timeout{10};       // per read inside a handler (chunked bodies)
  std::chrono::seconds write_timeout{10};      // per write of an answer or SSE chunk
};

// Raises the process's open-files soft limit to its hard limit (each
// connection is a descriptor). `runner serve` calls it first thing;
// ApiServer::Start() calls it too.
void RaiseOpenFilesLimit();

class ApiServer {
 public:
  ApiServer(ApiOptions options, queue::QueueStore& store, NodeControl& node,
            metrics::Registry& registry);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // The schedules served under /api/v1/schedules (set before Start()).
  void SetSchedules(schedule::ScheduleStore* schedules) { schedules_ = schedules; }

  Status Listen();
  Status Start();
  void Stop();
  // The bound port (after Listen() or Start()).
  int port() const { return port_; }

 private:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  // Routes by who may call them.
  enum class Access {
    kPublic,        // health, readiness, metrics, the dashboard's files
    kToken,         // Authorization: Bearer
    kTokenOrQuery,  // SSE: Bearer, or ?token= (EventSource cannot set headers)
  };
  // `fn` behind the token check, the unknown-parameter check and the guard
  // that turns an exception into a 500.
  Handler Guarded(Access access, Handler fn);

  // The route table, one file per part of the API: server.cpp (the error
  // handler, the request log, and the files below in order), routes_tasks.cpp,
  // routes_pool.cpp, routes_events.cpp, routes_ops.cpp (metrics, health, the
  // OpenAPI document and the dashboard's catch-all, last); routes_queues.cpp
  // and routes_schedules.cpp are free functions over the store.
  void Routes();
  void TaskRoutes();
  void TaskLogRoutes();
  void PoolRoutes();
  void EventRoutes();
  void OpsRoutes();
  // Sleeps up to `wait`; returns early (true) once Stop() began.
  bool WaitStopping(std::chrono::milliseconds wait);

  ApiOptions options_;
  queue::QueueStore& store_;
  NodeControl& node_;
  metrics::Registry& registry_;
  schedule::ScheduleStore* schedules_ = nullptr;
  std::unique_ptr<httplib::Server> http_;
  std::unique_ptr<EventHub> hub_;
  std::unique_ptr<HttpWorkers> workers_;
  std::unique_ptr<HttpFront> front_;
  std::unique_ptr<QueueMetrics> queue_metrics_;
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;  // notified when stopping_ turns true
  std::atomic<int> open_streams_{0};
  int port_ = 0;
  bool listening_ = false;  // Listen() succeeded; Start() serves what it bound
};

}  // namespace runner::api
