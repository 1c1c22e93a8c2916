#include "api/http_front.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <future>
#include <list>
#include <optional>
#include <string_view>

#include "api/task_json.h"
#include "base/error_codes.h"

namespace runner::api {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;
using boost::system::error_code;

// Keep-alive connections are closed after this many requests (cpp-httplib's
// Keep-Alive header announces it).
constexpr int kMaxRequestsPerConnection = 100;

// poll() for `events` up to `timeout`; true when the socket is ready (or has
// an error or hang-up the next call will report).
bool PollFor(int fd, short events, std::chrono::milliseconds timeout) {
  pollfd p{fd, events, 0};
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    int r = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count())));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

void AddressOf(const sockaddr_storage& ss, std::string& ip, int& port) {
  char text[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
    ::inet_ntop(AF_INET, &a.sin_addr, text, sizeof text);
    port = ntohs(a.sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
    ::inet_ntop(AF_INET6, &a.sin6_addr, text, sizeof text);
    port = ntohs(a.sin6_port);
  }
  ip = text;
}

// The stream cpp-httplib's process_request reads a request from and writes
// its answer to: the bytes the I/O thread already received first, then the
// socket, each read and write bounded by the timeouts (a write that cannot
// proceed for write_timeout fails: that is an SSE stream's backpressure).
class BufferedStream : public httplib::Stream {
 public:
  BufferedStream(int fd, const std::string& buffered, const FrontOptions& options)
      : fd_(fd), buf_(buffered), options_(options) {}

  bool is_readable() const override {
    return pos_ < buf_.size() || PollFor(fd_, POLLIN, options_.read_timeout);
  }
  bool is_writable() const override { return PollFor(fd_, POLLOUT, options_.write_timeout); }

  ssize_t read(char* ptr, size_t size) override {
    if (pos_ < buf_.size()) {
      const std::size_t n = std::min(size, buf_.size() - pos_);
      std::memcpy(ptr, buf_.data() + pos_, n);
      pos_ += n;
      return static_cast<ssize_t>(n);
    }
    for (;;) {
      if (!PollFor(fd_, POLLIN, options_.read_timeout)) return -1;
      ssize_t r = ::recv(fd_, ptr, size, MSG_DONTWAIT);
      if (r >= 0) return r;
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
    }
  }

  ssize_t write(const char* ptr, size_t size) override {
    std::size_t done = 0;
    while (done < size) {
      ssize_t w = ::send(fd_, ptr + done, size - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) {
        done += static_cast<std::size_t>(w);
        continue;
      }
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        if (!PollFor(fd_, POLLOUT, options_.write_timeout)) return -1;
        continue;
      }
      return -1;
    }
    return static_cast<ssize_t>(size);
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getpeername(fd_, reinterpret_cast<sockaddr*>(&ss), &len) == 0) AddressOf(ss, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len) == 0) AddressOf(ss, ip, port);
  }
  socket_t socket() const override { return fd_; }

  // Bytes of the buffer the request used; the rest is the next request.
  std::size_t consumed() const { return pos_; }

 private:
  int fd_;
  const std::string& buf_;
  std::size_t pos_ = 0;
  const FrontOptions& options_;
};

// What the I/O thread needs from a request head to know where the request ends.
struct HeadInfo {
  std::optional<uint64_t> length;  // a well-formed Content-Length
  bool bogus_length = false;       // present but not a number
  bool transfer_encoding = false;
  bool expect_continue = false;
  std::pair<std::size_t, std::size_t> expect_line{0, 0};  // offset and size, CRLF included
};

bool EqualsNoCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

HeadInfo ScanHead(std::string_view head) {
  HeadInfo info;
  std::size_t pos = head.find("\r\n");  // skip the request line
  while (pos != std::string_view::npos && pos + 2 < head.size()) {
    std::size_t start = pos + 2;
    std::size_t end = head.find("\r\n", start);
    std::string_view line =
        head.substr(start, end == std::string_view::npos ? head.npos : end - start);
    pos = end;
    auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view name = line.substr(0, colon);
    std::string_view value = Trim(line.substr(colon + 1));
    if (EqualsNoCase(name, "Content-Length")) {
      uint64_t n = 0;
      auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (value.empty() || ec != std::errc() || ptr != value.data() + value.size()) {
        info.bogus_length = true;
      } else if (info.length && *info.length != n) {
        // Two lengths that disagree (RFC 9112 6.3): which one ends the body
        // is ambiguous, the classic request-smuggling split.
        info.bogus_length = true;
      } else {
        info.length = n;
      }
    } else if (EqualsNoCase(name, "Transfer-Encoding")) {
      info.transfer_encoding = true;
    } else if (EqualsNoCase(name, "Expect")) {
      info.expect_continue = true;
      info.expect_line = {start, (end == std::string_view::npos ? head.size() : end + 2) - start};
    }
  }
  return info;
}

std::string Answer(int status, std::string_view reason, const Error& error) {
  std::string body = ErrorBody(error);
  return "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

struct Conn {
  explicit Conn(tcp::socket s) : stream(std::move(s)) {}
  beast::tcp_stream stream;
  std::string buf;  // received and not yet used by a request
  std::list<std::shared_ptr<Conn>>::iterator waiting_at;
  bool waiting = false;  // in Impl::waiting (reading, holds no thread)
  bool closed = false;
  bool fresh = true;  // no request served yet
  int served = 0;
};
using ConnPtr = std::shared_ptr<Conn>;

}  // namespace

struct HttpFront::Impl {
  Impl(HttpFront& f, FrontOptions o, Serve s, httplib::TaskQueue& w)
      : front(f), options(std::move(o)), serve(std::move(s)), workers(w) {}

  HttpFront& front;
  const FrontOptions options;
  const Serve serve;
  httplib::TaskQueue& workers;
  net::io_context io{1};
  net::executor_work_guard<net::io_context::executor_type> guard{io.get_executor()};
  tcp::acceptor acceptor{io};
  net::steady_timer retry{io};
  // The I/O thread's own state.
  std::list<ConnPtr> waiting;  // oldest wait first: dropped first at the cap
  bool stopping = false;

  void Accept() {
    acceptor.async_accept([this](error_code ec, tcp::socket socket) {
      if (stopping) return;
      if (ec) {
        if (ec == net::error::operation_aborted) return;
        // Out of descriptors: free one by dropping the longest waiting
        // connection, and try again shortly either way.
        if (ec == net::error::no_descriptors || ec.value() == ENFILE) DropOldest();
        retry.expires_after(std::chrono::milliseconds(20));
        retry.async_wait([this](error_code) {
          if (!stopping) Accept();
        });
        return;
      }
      Admit(std::move(socket));
      Accept();
    });
  }

  void Admit(tcp::socket socket) {
    if (front.open_.load() >= front.cap_ && !DropOldest()) {
      // Every connection is in a handler: say so instead of holding this one.
      std::string busy =
          Answer(503, "Service Unavailable",
                 MakeError("unavailable", "the server is at its connection limit; retry later"));
      ::send(socket.native_handle(), busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      return;  // closed by the socket's destructor
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    front.open_.fetch_add(1);
    ReadHead(std::make_shared<Conn>(std::move(socket)));
  }

  bool DropOldest() {
    if (waiting.empty()) return false;
    ConnPtr c = waiting.front();
    Close(c);
    return true;
  }

  void Wait(const ConnPtr& c) {
    if (c->waiting) return;
    waiting.push_back(c);
    c->waiting_at = std::prev(waiting.end());
    c->waiting = true;
  }
  void Unwait(const ConnPtr& c) {
    if (!c->waiting) return;
    waiting.erase(c->waiting_at);
    c->waiting = false;
  }

  void Close(const ConnPtr& c) {
    if (c->closed) return;
    c->closed = true;
    Unwait(c);
    error_code ignored;
    c->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    c->stream.close();  // pending reads complete with operation_aborted
    front.open_.fetch_sub(1);
  }

  void Reject(const ConnPtr& c, int status, std::string_view reason, const Error& error) {
    Unwait(c);
    auto text = std::make_shared<std::string>(Answer(status, reason, error));
    c->stream.expires_after(options.write_timeout);
    net::async_write(c->stream, net::buffer(*text),
                     [this, c, text](error_code, std::size_t) { Close(c); });
  }

  // Answers `status` and closes, after reading and dropping up to `drain`
  // bytes of the request's body (within body_timeout) so a client that is
  // still sending gets the answer rather than a reset. The connection stays
  // in `waiting` meanwhile: at the cap it is among the first to go.
  void Refuse(const ConnPtr& c, int status, std::string_view reason, const Error& error,
              uint64_t drain) {
    Wait(c);
    auto text = std::make_shared<std::string>(Answer(status, reason, error));
    c->stream.expires_after(options.write_timeout);
    net::async_write(c->stream, net::buffer(*text),
                     [this, c, text, drain](error_code ec, std::size_t) {
                       if (c->closed) return;
                       if (ec || drain == 0 || stopping) return Close(c);
                       const uint64_t buffered = c->buf.size();
                       c->buf.clear();
                       c->stream.expires_after(options.body_timeout);
                       Drain(c, drain > buffered ? drain - buffered : 0);
                     });
  }
  void Drain(const ConnPtr& c, uint64_t left) {
    if (left == 0) return Close(c);
    auto scratch = std::make_shared<std::array<char, 16384>>();
    c->stream.async_read_some(net::buffer(*scratch),
                              [this, c, left, scratch](error_code ec, std::size_t n) {
                                if (c->closed) return;
                                if (ec || stopping) return Close(c);
                                Drain(c, n >= left ? 0 : left - n);
                              });
  }

  void ReadHead(const ConnPtr& c) {
    Wait(c);
    c->stream.expires_after(c->fresh ? options.header_timeout : options.keep_alive_timeout);
    net::async_read_until(
        c->stream, net::dynamic_buffer(c->buf, options.max_head_bytes), "\r\n\r\n",
        [this, c](error_code ec, std::size_t head_bytes) { OnHead(c, ec, head_bytes); });
  }

  void OnHead(const ConnPtr& c, error_code ec, std::size_t head_bytes) {
    if (c->closed) return;
    if (ec == net::error::not_found) {  // the head outgrew max_head_bytes
      return Reject(
          c, 400, "Bad Request",
          MakeError("bad_request", "the request head is larger than " +
                                       std::to_string(options.max_head_bytes) + " bytes"));
    }
    if (ec || stopping) return Close(c);  // timed out, closed by the client, or stopping
    c->stream.expires_never();
    c->fresh = false;
    HeadInfo head = ScanHead(std::string_view(c->buf).substr(0, head_bytes));
    // No worker ever waits for a body: a worker held by each half-sent body
    // (chunked, over the limit, or behind `Expect: 100-continue`) let a
    // flood of them take every thread. A body is read here, without a
    // thread, or refused here; only a bogus length (answered before any
    // body is read) reaches a worker without its body.
    if (head.bogus_length) return Dispatch(c);
    if (head.transfer_encoding) {
      // Up to max_body_bytes of it are read and dropped, so a small chunked
      // request gets this answer rather than a reset.
      return Refuse(c, 400, "Bad Request",
                    MakeError(errc::kBadRequest,
                              "a chunked request body (Transfer-Encoding) is not accepted; send "
                              "the body with a Content-Length"),
                    options.max_body_bytes);
    }
    const uint64_t length = head.length.value_or(0);
    if (length > options.max_body_bytes) {
      // Read and dropped (up to a plausible size) so a client still sending
      // reads the 413 instead of a reset; past that, closed after the answer.
      const uint64_t absurd = std::max<uint64_t>(uint64_t{options.max_body_bytes} * 16, 64u << 20);
      return Refuse(c, 413, "Payload Too Large",
                    MakeError(errc::kPayloadTooLarge,
                              "the body is over " + std::to_string(options.max_body_bytes) +
                                  " bytes (Content-Length: " + std::to_string(length) + ")"),
                    length <= absurd ? length : 0);
    }
    if (head.expect_continue) {
      // Answered here; the handler must not see it and answer it again.
      c->buf.erase(head.expect_line.first, head.expect_line.second);
      head_bytes -= head.expect_line.second;
    }
    const std::size_t have = c->buf.size() - head_bytes;
    if (have >= length) return Dispatch(c);
    const auto need = static_cast<std::size_t>(length - have);
    c->stream.expires_after(options.body_timeout);
    auto read_body = [this, c, need] {
      net::async_read(c->stream, net::dynamic_buffer(c->buf), net::transfer_exactly(need),
                      [this, c](error_code read_ec, std::size_t) {
                        if (c->closed) return;
                        if (read_ec || stopping) return Close(c);
                        c->stream.expires_never();
                        Dispatch(c);
                      });
    };
    if (!head.expect_continue) return read_body();
    static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    net::async_write(c->stream, net::buffer(kContinue.data(), kContinue.size()),
                     [this, c, read_body](error_code write_ec, std::size_t) {
                       if (c->closed) return;
                       if (write_ec || stopping) return Close(c);
                       read_body();
                     });
  }

  void Dispatch(const ConnPtr& c) {
    Unwait(c);
    const bool close_connection = ++c->served >= kMaxRequestsPerConnection;
    workers.enqueue([this, c, close_connection] {
      bool keep = false;
      try {
        BufferedStream stream(c->stream.socket().native_handle(), c->buf, options);
        keep = serve(stream, close_connection) && !close_connection;
        c->buf.erase(0, stream.consumed());
      } catch (const std::exception& e) {
        spdlog::error("api: connection failed what={}", e.what());
      }
      net::post(io, [this, c, keep] {
        if (c->closed) return;
        if (!keep || stopping) return Close(c);
        ReadHead(c);
      });
    });
  }
};

HttpFront::HttpFront(FrontOptions options, Serve serve, httplib::TaskQueue& workers)
    : impl_(std::make_unique<Impl>(*this, std::move(options), std::move(serve), workers)) {
  // Leave descriptors for the database, logs and the tasks' pipes.
  rlimit lim{};
  std::size_t fds = 1024;
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
    fds = static_cast<std::size_t>(lim.rlim_cur);
  } else if (lim.rlim_cur == RLIM_INFINITY) {
    fds = impl_->options.max_connections + 512;
  }
  cap_ = std::min(impl_->options.max_connections, fds > 768 ? fds - 512 : fds / 2);
}

HttpFront::~HttpFront() {
  StopAccepting();
  Join();
}

Result<int> HttpFront::Bind(const std::string& host, int port) {
  error_code ec;
  tcp::resolver resolver(impl_->io);
  auto results = resolver.resolve(host, std::to_string(port),
                                  tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    return MakeError("unavailable", "cannot resolve " + host + ": " + ec.message());
  }
  tcp::endpoint endpoint = results.begin()->endpoint();
  auto& a = impl_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(1024, ec);
  if (ec) {
    error_code ignored;
    a.close(ignored);
    return MakeError("unavailable", ec.message());
  }
  return static_cast<int>(a.local_endpoint().port());
}

int HttpFront::listen_fd() const {
  return impl_->acceptor.is_open() ? impl_->acceptor.native_handle() : -1;
}

void HttpFront::Start() {
  impl_->Accept();
  io_thread_ = std::thread([this] { impl_->io.run(); });
}

void HttpFront::StopAccepting() {
  if (!io_thread_.joinable()) return;
  std::promise<void> done;
  net::post(impl_->io, [this, &done] {
    Impl& i = *impl_;
    if (!i.stopping) {
      i.stopping = true;
      error_code ignored;
      i.acceptor.close(ignored);
      i.retry.cancel();
      while (!i.waiting.empty()) {
        ConnPtr c = i.waiting.front();  // a copy: Close() erases the list entry
        i.Close(c);
      }
    }
    done.set_value();
  });
  done.get_future().wait();
}

void HttpFront::Join() {
  if (!io_thread_.joinable()) return;
  // The workers are done: their last posts close the connections they held.
  impl_->guard.reset();
  io_thread_.join();
}

}  // namespace runner::api
