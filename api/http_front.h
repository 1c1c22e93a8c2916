#pragma once

// The connection side of the API server: an Asio acceptor and one small state
// machine per connection, on one I/O thread. A connection holds no thread
// while it is idle or its client is still sending: the request head and a
// body of plausible length are read asynchronously, each under a deadline,
// and only a complete request is handed to a worker (HttpFront::Serve, which
// runs cpp-httplib's route table on a buffered stream). After the answer the
// connection returns to the I/O thread for its next request (keep-alive).
//
// Limits (docs/api.md, "Limits"):
// - head: at most max_head_bytes, complete within header_timeout of the
//   first wait (keep_alive_timeout for the 2nd and later requests);
// - body: read before dispatch when Content-Length is at most max_body_bytes,
//   complete within body_timeout (`Expect: 100-continue` is answered here and
//   removed from the head). A longer Content-Length gets 413 here and its
//   body is read and dropped (up to 64 MiB, within body_timeout) before the
//   close; a chunked body gets 400. Only a bogus Content-Length reaches a
//   worker without its body, and the server answers it 400 before reading
//   any: no worker ever waits for a client's bytes;
// - connections: at most max_connections (and never more than the open-files
//   limit allows); a new connection past the cap closes the connection that
//   has waited longest for bytes. When every connection is busy in a
//   handler, the new one gets 503.
//
// Thread-safety: Bind/Start/Stop from one owning thread; Serve runs on the
// worker queue; open_connections() from any thread.

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "base/result.h"

namespace runner::api {

struct FrontOptions {
  std::size_t max_connections = 16384;
  std::size_t max_head_bytes = 64 * 1024;
  std::size_t max_body_bytes = 1 << 20;
  std::chrono::milliseconds header_timeout{10000};
  std::chrono::milliseconds body_timeout{30000};
  std::chrono::milliseconds keep_alive_timeout{5000};
  std::chrono::milliseconds read_timeout{10000};   // per read inside a handler
  std::chrono::milliseconds write_timeout{10000};  // per write (SSE backpressure)
};

class HttpFront {
 public:
  // Answers one request from `stream` (its head, and its body when read,
  // are already buffered). Returns true to keep the connection for another.
  using Serve = std::function<bool(httplib::Stream& stream, bool close_connection)>;

  HttpFront(FrontOptions options, Serve serve, httplib::TaskQueue& workers);
  ~HttpFront();
  HttpFront(const HttpFront&) = delete;
  HttpFront& operator=(const HttpFront&) = delete;

  // Binds host:port (0 = any free port) with a backlog of 1024; the bound port.
  Result<int> Bind(const std::string& host, int port);
  void Start();
  // Stops accepting and closes every connection waiting for bytes; connections
  // in a handler close when it returns. Joins the I/O thread once the
  // workers are done (call after the worker queue's shutdown()).
  void StopAccepting();
  void Join();

  std::size_t open_connections() const { return open_.load(); }
  std::size_t connection_cap() const { return cap_; }
  int listen_fd() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  std::atomic<std::size_t> open_{0};
  std::size_t cap_ = 0;
  std::thread io_thread_;
};

}  // namespace runner::api
