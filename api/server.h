#pragma once

// The REST + SSE server of docs/api.md (cpp-httplib): tasks, pool, workers, nodes,
// events, /metrics, /healthz, /readyz, the contract (/api/v1/openapi.yaml) and
// the embedded dashboard at `/`.
//
// Contract:
// - Start() binds (port 0 picks a free port, see port()) and serves on a
//   background thread; Stop() ends every SSE stream, stops accepting, waits for
//   in-flight requests and joins. Stop() is idempotent and called by the
//   destructor.
// - A listen address that is not loopback needs a token: Start() refuses with
//   a `validation_failed` error otherwise.
// - With a token every endpoint but /healthz, /readyz, /metrics,
//   /api/v1/openapi.yaml and the dashboard's files needs
//   `Authorization: Bearer <token>` (401 `unauthorized`). Because browsers
//   cannot set headers on EventSource, the two SSE endpoints (events, and logs
//   with follow=1) also accept `?token=<token>`; nothing else does.
// - Every error is {"error":{"code","message"}}; exceptions thrown by a handler
//   are translated to 500 `internal` in one place (the handler wrapper).
// - Threads: cpp-httplib gives every connection a thread from accept to close,
//   including the time a client takes to send its request head (a slowloris
//   client holds one for as long as it drips bytes within read_timeout). The
//   pool keeps `http_threads` and grows on demand up to `max_connections`,
//   which must exceed `max_streams` (SSE streams hold a thread for their life)
//   by a budget for slow and ordinary clients, so neither 1,000 open streams
//   nor hundreds of slow clients starve /healthz. Stream number max_streams+1
//   gets 503 `unavailable`; past max_connections, new connections wait in the
//   listen backlog. The server raises its open-files limit to the hard limit.
//
// Thread-safety: Start()/Stop() from one owning thread; handlers run on the
// server's pool and only use thread-safe collaborators (QueueStore,
// NodeControl, Registry are all safe from any thread).

#include <atomic>
#include <chrono>
#include <condition_variable>
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
}

namespace runner::api {

class EventHub;
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
  std::size_t http_threads = 16;       // kept for ordinary requests
  std::size_t max_connections = 4096;  // threads at most; >= http_threads + max_streams + 256
  std::chrono::seconds read_timeout{10};
  std::chrono::seconds write_timeout{10};
};

class ApiServer {
 public:
  ApiServer(ApiOptions options, queue::QueueStore& store, NodeControl& node,
            metrics::Registry& registry);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // The schedules served under /api/v1/schedules (set before Start()).
  void SetSchedules(schedule::ScheduleStore* schedules) { schedules_ = schedules; }

  Status Start();
  void Stop();
  // The bound port (after Start()).
  int port() const { return port_; }

 private:
  // Bounded wait (5 s) until the listen loop runs, so stop() can reach it.
  void WaitUntilListening();
  void Routes();
  // Sleeps up to `wait`; returns early (true) once Stop() began.
  bool WaitStopping(std::chrono::milliseconds wait);

  ApiOptions options_;
  queue::QueueStore& store_;
  NodeControl& node_;
  metrics::Registry& registry_;
  schedule::ScheduleStore* schedules_ = nullptr;
  std::unique_ptr<httplib::Server> http_;
  std::unique_ptr<EventHub> hub_;
  std::unique_ptr<QueueMetrics> queue_metrics_;
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;  // notified when stopping_ turns true
  std::atomic<int> open_streams_{0};
  int port_ = 0;
  std::thread listener_;
};

}  // namespace runner::api
