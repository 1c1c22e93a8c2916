// Boost.Asio's std_fenced_block uses atomic_thread_fence, which GCC flags
// under -fsanitize=thread (-Wtsan, an error with RUNNER_WERROR). The fence only
// orders handler memory that TSan already tracks through the mutexes, so the
// warning is noise here; silenced for this file only, before <atomic> is seen.
#if defined(__SANITIZE_THREAD__)
#pragma GCC diagnostic ignored "-Wtsan"
#endif

#include "isolation/docker/engine_client.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <stdexcept>
#include <utility>

namespace runner::isolation::docker {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using local_stream = asio::local::stream_protocol;

namespace {

constexpr size_t kMaxBodyBytes = 32 * 1024 * 1024;

std::string HowToStart(const std::string& socket_path) {
  return "start the Docker daemon (e.g. `systemctl start docker` or `dockerd &`) or point "
         "--docker-host at a running one (socket " +
         socket_path + ")";
}

// "1.41" -> 41; -1 when not "1.NN".
int ApiMinor(std::string_view v) {
  if (v.size() < 3 || v.substr(0, 2) != "1.") return -1;
  int minor = -1;
  auto tail = v.substr(2);
  auto [p, ec] = std::from_chars(tail.data(), tail.data() + tail.size(), minor);
  if (ec != std::errc() || p != tail.data() + tail.size()) return -1;
  return minor;
}

std::string PercentEncode(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
      out += ch;
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string JsonString(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  return v != nullptr && v->is_string() ? std::string(v->as_string()) : std::string();
}

Result<json::object> ParseObject(const std::string& body, std::string_view what) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec || !v.is_object()) {
    return MakeError("internal",
                     "the Docker daemon answered " + std::string(what) +
                         " with something that is not a JSON object: " + body.substr(0, 200));
  }
  return std::move(v.as_object());
}

std::string BuildHint(std::string_view image) {
  return image == "runner-task:latest" || image == "runner-task"
             ? "build it with docker/task-image/build"
             : "build it or `docker load` it on this host (no registry is pulled from)";
}

}  // namespace

// One HTTP exchange on its own connection and io_context. Every operation is
// started asynchronously and driven by Drive() up to a deadline, so a daemon
// that never answers cannot block the caller.
class HttpExchange {
 public:
  HttpExchange(std::string socket_path, std::string what)
      : socket_path_(std::move(socket_path)), what_(std::move(what)), socket_(ioc_) {
    parser_.body_limit(boost::none);
    parser_.header_limit(64 * 1024);
  }

  ~HttpExchange() { Abort(); }

  Status Connect(std::chrono::milliseconds timeout) {
    StartOp();
    socket_.async_connect(local_stream::endpoint(socket_path_),
                          [this](boost::system::error_code ec) { Done(ec); });
    if (!Drive(Clock::now() + timeout)) {
      Abort();
      return MakeError("isolation_unavailable",
                       "the Docker daemon did not accept a connection on " + socket_path_ +
                           " within " + std::to_string(timeout.count()) +
                           " ms: " + HowToStart(socket_path_));
    }
    if (op_ec_) {
      return MakeError("isolation_unavailable", "cannot connect to the Docker daemon at unix://" +
                                                    socket_path_ + " (" + op_ec_.message() +
                                                    "): " + HowToStart(socket_path_));
    }
    return {};
  }

  Status Write(http::request<http::string_body>& request, Clock::time_point deadline) {
    StartOp();
    http::async_write(socket_, request, [this](boost::system::error_code ec, size_t) { Done(ec); });
    if (!Drive(deadline)) return Timeout("sending the request");
    if (op_ec_) return IoError("sending the request");
    return {};
  }

  // Raw bytes on a hijacked (upgraded) connection, e.g. an attached stdin.
  Status WriteRaw(std::string_view data, Clock::time_point deadline) {
    StartOp();
    asio::async_write(socket_, asio::buffer(data.data(), data.size()),
                      [this](boost::system::error_code ec, size_t) { Done(ec); });
    if (!Drive(deadline)) return Timeout("sending the stream");
    if (op_ec_) return IoError("sending the stream");
    return {};
  }
  // Raw bytes on a hijacked connection: what followed the response header
  // first, then the socket. Like PollBody(): true when a read finished (then
  // TakeRaw() or RawError() tell what came), false while still in flight.
  bool PollRaw(Clock::time_point until) {
    if (!op_in_flight_ && buffer_.size() > 0) {
      const auto data = buffer_.data();
      raw_.assign(static_cast<const char*>(data.data()), data.size());
      buffer_.consume(buffer_.size());
      op_ec_ = {};
      return true;
    }
    if (!op_in_flight_) {
      StartOp();
      op_in_flight_ = true;
      socket_.async_read_some(asio::buffer(chunk_.data(), chunk_.size()),
                              [this](boost::system::error_code ec, size_t n) {
                                raw_n_ = n;
                                Done(ec);
                              });
    }
    if (!Drive(until)) return false;
    op_in_flight_ = false;
    raw_.assign(chunk_.data(), raw_n_);
    return true;
  }
  std::string_view TakeRaw() const { return raw_; }
  // The end of a hijacked stream is EOF (no error); anything else is an error.
  bool RawEnded() const { return op_ec_ == asio::error::eof; }
  Status RawError() const {
    if (!op_ec_ || RawEnded()) return {};
    return IoError("reading the attached stream");
  }

  // Ends what we send (the daemon sees the end of the attached stdin).
  void CloseSend() {
    boost::system::error_code ignored;
    socket_.shutdown(local_stream::socket::shutdown_send, ignored);
  }

  Status ReadHeader(Clock::time_point deadline) {
    StartOp();
    http::async_read_header(socket_, buffer_, parser_,
                            [this](boost::system::error_code ec, size_t) { Done(ec); });
    if (!Drive(deadline)) return Timeout("waiting for the response");
    if (op_ec_) return IoError("reading the response header");
    return {};
  }

  unsigned status() const { return parser_.get().result_int(); }
  std::string header(http::field f) const { return std::string(parser_.get()[f]); }
  std::string header(std::string_view name) const {
    return std::string(parser_.get()[beast::string_view(name.data(), name.size())]);
  }
  bool body_done() const { return parser_.is_done(); }

  // Starts reading the next body bytes (if no read is in flight) and drives it
  // until `until`. Returns true when the read finished; then TakeChunk() or
  // error() tell what came. False: still in flight, call again later.
  bool PollBody(Clock::time_point until) {
    if (!op_in_flight_) {
      StartOp();
      op_in_flight_ = true;
      auto& body = parser_.get().body();
      body.data = chunk_.data();
      body.size = chunk_.size();
      http::async_read_some(socket_, buffer_, parser_,
                            [this](boost::system::error_code ec, size_t) { Done(ec); });
    }
    if (!Drive(until)) return false;
    op_in_flight_ = false;
    if (op_ec_ == http::error::need_buffer) op_ec_ = {};
    return true;
  }
  std::string_view TakeChunk() const {
    return std::string_view(chunk_.data(), chunk_.size() - parser_.get().body().size);
  }
  Status ReadError() const {
    if (!op_ec_) return {};
    if (op_ec_ == asio::error::eof || op_ec_ == http::error::end_of_stream ||
        op_ec_ == http::error::partial_message) {
      return MakeError("isolation_unavailable", "the Docker daemon at unix://" + socket_path_ +
                                                    " closed the connection during " + what_);
    }
    return IoError("reading the response body");
  }

  // Reads the body to the end (or up to the cap) within the deadline.
  Result<std::string> ReadAll(Clock::time_point deadline, std::stop_token stop = {}) {
    std::string out;
    while (!parser_.is_done()) {
      auto slice = std::min(deadline, Clock::now() + std::chrono::milliseconds(100));
      if (!PollBody(slice)) {
        if (stop.stop_requested()) {
          Abort();
          return MakeError("cancelled", "stopped while " + what_);
        }
        if (Clock::now() >= deadline) return Timeout("reading the response body");
        continue;
      }
      if (Status st = ReadError(); !st) return st.error();
      out.append(TakeChunk());
      if (out.size() > kMaxBodyBytes) {
        Abort();
        return MakeError("internal", "the Docker daemon's answer to " + what_ + " exceeds " +
                                         std::to_string(kMaxBodyBytes) + " bytes");
      }
    }
    return out;
  }

  Error Timeout(std::string_view doing) {
    Abort();
    return MakeError("isolation_unavailable",
                     "the Docker daemon at unix://" + socket_path_ + " did not answer " + what_ +
                         " in time (" + std::string(doing) +
                         "): it may be hung or overloaded; check `systemctl status docker`");
  }

  Error IoError(std::string_view doing) const {
    // Beast reports a connection closed before or inside the response in its
    // HTTP category too: that is the daemon going away, not a bad answer.
    const bool cut = op_ec_ == http::error::end_of_stream || op_ec_ == http::error::partial_message;
    if (!cut && op_ec_.category() == http::make_error_code(http::error::bad_version).category()) {
      return MakeError("internal", "the Docker daemon at unix://" + socket_path_ + " answered " +
                                       what_ + " with something that is not HTTP (" +
                                       op_ec_.message() + " while " + std::string(doing) + ")");
    }
    return MakeError("isolation_unavailable",
                     "lost the connection to the Docker daemon at unix://" + socket_path_ +
                         " during " + what_ + " (" + op_ec_.message() + " while " +
                         std::string(doing) + "): " + HowToStart(socket_path_));
  }

  const std::string& what() const { return what_; }

  // Closes the socket and lets the cancelled handler run, so the exchange
  // can be destroyed safely.
  void Abort() {
    boost::system::error_code ignored;
    if (socket_.is_open()) {
      socket_.shutdown(local_stream::socket::shutdown_both, ignored);
      socket_.close(ignored);
    }
    if (op_pending_) {
      ioc_.restart();
      ioc_.run();
      op_pending_ = false;
      op_in_flight_ = false;
    }
  }

 private:
  void StartOp() {
    op_done_ = false;
    op_pending_ = true;
    op_ec_ = {};
  }
  void Done(boost::system::error_code ec) {
    op_done_ = true;
    op_pending_ = false;
    op_ec_ = ec;
  }
  // Runs the io_context until the pending operation finished or `until`.
  bool Drive(Clock::time_point until) {
    while (!op_done_) {
      auto now = Clock::now();
      if (now >= until) return false;
      ioc_.restart();
      ioc_.run_one_for(until - now);
    }
    return true;
  }

  std::string socket_path_;
  std::string what_;
  asio::io_context ioc_;
  local_stream::socket socket_;
  beast::flat_buffer buffer_;
  http::response_parser<http::buffer_body> parser_;
  std::array<char, 16 * 1024> chunk_{};
  std::string raw_;  // the last PollRaw() bytes
  size_t raw_n_ = 0;
  bool op_done_ = false;
  bool op_pending_ = false;
  bool op_in_flight_ = false;
  boost::system::error_code op_ec_;
};

// ---------------------------------------------------------------------------

PendingWait::PendingWait(std::unique_ptr<HttpExchange> exchange) : exchange_(std::move(exchange)) {}
PendingWait::~PendingWait() = default;

Result<std::optional<int64_t>> PendingWait::Poll(std::chrono::milliseconds slice) {
  auto until = Clock::now() + slice;
  while (!exchange_->body_done()) {
    if (!exchange_->PollBody(until)) return std::optional<int64_t>();
    if (Status st = exchange_->ReadError(); !st) return st.error();
    body_.append(exchange_->TakeChunk());
    if (body_.size() > kMaxBodyBytes) return MakeError("internal", "wait response too large");
  }
  auto obj = ParseObject(body_, exchange_->what());
  if (!obj) return obj.error();
  if (const json::value* err = obj->if_contains("Error"); err != nullptr && err->is_object()) {
    std::string msg = JsonString(err->as_object(), "Message");
    if (!msg.empty()) return MakeError("internal", "the Docker daemon failed waiting: " + msg);
  }
  const json::value* code = obj->if_contains("StatusCode");
  if (code == nullptr || !code->is_number()) {
    return MakeError("internal", "the Docker daemon's wait answer lacks StatusCode: " + body_);
  }
  return std::optional<int64_t>(code->to_number<int64_t>());
}

AttachedOutput::AttachedOutput(std::unique_ptr<HttpExchange> exchange)
    : exchange_(std::move(exchange)) {}
AttachedOutput::~AttachedOutput() = default;

Status AttachedOutput::Follow(const FrameSink& sink, std::stop_token stop,
                              Clock::time_point deadline) {
  FrameDemuxer demux;
  while (true) {
    if (stop.stop_requested()) return MakeError("cancelled", "log streaming stopped");
    if (Clock::now() >= deadline) return exchange_->Timeout("streaming the attached output");
    if (!exchange_->PollRaw(std::min(deadline, Clock::now() + std::chrono::milliseconds(100)))) {
      continue;
    }
    if (Status st = exchange_->RawError(); !st) return st;
    if (exchange_->TakeRaw().empty() && exchange_->RawEnded()) return {};
    if (Status st = demux.Feed(exchange_->TakeRaw(), sink); !st) return st;
    if (exchange_->RawEnded()) return {};
  }
}

// ---------------------------------------------------------------------------

std::string SocketPathFromHost(std::string_view docker_host) {
  constexpr std::string_view kScheme = "unix://";
  if (docker_host.substr(0, kScheme.size()) != kScheme || docker_host.size() == kScheme.size()) {
    throw std::invalid_argument("docker host \"" + std::string(docker_host) +
                                "\" is not supported: use unix:///path/to/docker.sock");
  }
  return std::string(docker_host.substr(kScheme.size()));
}

Result<std::string> NegotiateApiVersion(std::string_view daemon_api, std::string_view daemon_min) {
  int server = ApiMinor(daemon_api);
  if (server < 0) {
    return MakeError("internal", "the Docker daemon reports an unreadable API version \"" +
                                     std::string(daemon_api) + "\"");
  }
  int chosen = std::min(server, kMaxApiMinor);
  if (chosen < kMinApiMinor) {
    return MakeError("isolation_unavailable",
                     "the Docker daemon speaks API " + std::string(daemon_api) +
                         " but the runner needs at least 1." + std::to_string(kMinApiMinor) +
                         " (Docker Engine 20.10): upgrade Docker");
  }
  int min = daemon_min.empty() ? 0 : ApiMinor(daemon_min);
  if (min > chosen) {
    return MakeError("isolation_unavailable",
                     "the Docker daemon requires API " + std::string(daemon_min) +
                         " or newer but the runner speaks at most 1." +
                         std::to_string(kMaxApiMinor) + ": upgrade the runner");
  }
  return "1." + std::to_string(chosen);
}

EngineClient::EngineClient(EngineClientOptions options)
    : options_(std::move(options)), socket_path_(SocketPathFromHost(options_.docker_host)) {}

EngineClient::~EngineClient() = default;

Result<std::unique_ptr<HttpExchange>> EngineClient::Open(std::string_view method,
                                                         const std::string& target,
                                                         Clock::time_point deadline,
                                                         const std::string& body, bool upgrade) {
  auto exchange = std::make_unique<HttpExchange>(socket_path_, std::string(method) + " " + target);
  if (Status st = exchange->Connect(options_.connect_timeout); !st) return st.error();
  http::verb verb = method == "POST"     ? http::verb::post
                    : method == "DELETE" ? http::verb::delete_
                                         : http::verb::get;
  http::request<http::string_body> req{verb, target, 11};
  req.set(http::field::host, "docker");
  req.set(http::field::user_agent, "runner");
  req.keep_alive(false);  // one connection per call: nothing to go stale
  if (upgrade) {
    // attach: the daemon answers 101 and the connection becomes a raw stream.
    req.set(http::field::connection, "Upgrade");
    req.set(http::field::upgrade, "tcp");
  }
  if (!body.empty()) {
    req.set(http::field::content_type, "application/json");
    req.body() = body;
  }
  req.prepare_payload();
  if (Status st = exchange->Write(req, deadline); !st) return st.error();
  if (Status st = exchange->ReadHeader(deadline); !st) return st.error();
  return exchange;
}

Result<EngineClient::Response> EngineClient::Call(std::string_view method, const std::string& path,
                                                  bool versioned, const std::string& body,
                                                  std::chrono::milliseconds timeout) {
  std::string target = path;
  if (versioned) {
    auto prefix = Prefix();
    if (!prefix) return prefix.error();
    target = *prefix + path;
  }
  auto deadline = Clock::now() + timeout;
  auto exchange = Open(method, target, deadline, body);
  if (!exchange) return exchange.error();
  Response response;
  response.status = (*exchange)->status();
  response.api_version_header = (*exchange)->header("Api-Version");
  auto text = (*exchange)->ReadAll(deadline);
  if (!text) return text.error();
  response.body = std::move(*text);
  return response;
}

Error EngineClient::ApiError(const Response& response, std::string_view what) const {
  std::string message;
  boost::system::error_code ec;
  json::value v = json::parse(response.body, ec);
  if (!ec && v.is_object()) message = JsonString(v.as_object(), "message");
  if (message.empty()) message = response.body.substr(0, 300);
  std::string code = response.status == 404 ? "not_found" : "internal";
  return MakeError(code, "Docker " + std::string(what) + " failed (HTTP " +
                             std::to_string(response.status) + "): " + message);
}

Result<std::string> EngineClient::Prefix() {
  auto version = ApiVersion();
  if (!version) return version.error();
  return "/v" + *version;
}

Result<std::string> EngineClient::Ping() {
  auto r = Call("GET", "/_ping", false, "", options_.quick_timeout);
  if (!r) return r.error();
  if (r->status != 200) return ApiError(*r, "ping");
  if (r->api_version_header.empty()) {
    return MakeError("internal", "unix://" + socket_path_ +
                                     " answered /_ping without an Api-Version header: is it a "
                                     "Docker daemon?");
  }
  return r->api_version_header;
}

Result<VersionInfo> EngineClient::Version() {
  auto r = Call("GET", "/version", false, "", options_.quick_timeout);
  if (!r) return r.error();
  if (r->status != 200) return ApiError(*r, "version");
  auto obj = ParseObject(r->body, "/version");
  if (!obj) return obj.error();
  VersionInfo info{JsonString(*obj, "Version"), JsonString(*obj, "ApiVersion"),
                   JsonString(*obj, "MinAPIVersion")};
  if (info.api_version.empty()) {
    return MakeError("internal", "the Docker daemon's /version lacks ApiVersion");
  }
  return info;
}

Result<std::string> EngineClient::ApiVersion() {
  {
    std::lock_guard lock(mu_);
    if (!api_version_.empty()) return api_version_;
  }
  // Negotiated outside the lock: concurrent first callers may both ask, and
  // both get the same answer.
  auto ping = Ping();
  if (!ping) return ping.error();
  auto version = Version();
  if (!version) return version.error();
  // The /_ping header and /version agree on real daemons; trust the lower.
  std::string daemon_api = ApiMinor(*ping) >= 0 && ApiMinor(*ping) < ApiMinor(version->api_version)
                               ? *ping
                               : version->api_version;
  auto chosen = NegotiateApiVersion(daemon_api, version->min_api_version);
  if (!chosen) return chosen.error();
  std::lock_guard lock(mu_);
  if (api_version_.empty()) {
    api_version_ = *chosen;
    spdlog::info("docker api negotiated version={} engine={} socket={}", api_version_,
                 version->version, socket_path_);
  }
  return api_version_;
}

Result<json::object> EngineClient::Info() {
  auto r = Call("GET", "/info", true, "", options_.quick_timeout);
  if (!r) return r.error();
  if (r->status != 200) return ApiError(*r, "info");
  return ParseObject(r->body, "/info");
}

Result<json::object> EngineClient::ImageInspect(std::string_view image) {
  auto r = Call("GET", "/images/" + std::string(image) + "/json", true, "", options_.quick_timeout);
  if (!r) return r.error();
  if (r->status == 404) {
    return MakeError("image_not_found", "the image \"" + std::string(image) +
                                            "\" is not on this Docker host: " + BuildHint(image));
  }
  if (r->status != 200) return ApiError(*r, "image inspect");
  return ParseObject(r->body, "image inspect");
}

Result<std::string> EngineClient::ContainerCreate(const json::object& config,
                                                  std::string_view name) {
  std::string path = "/containers/create";
  if (!name.empty()) path += "?name=" + PercentEncode(name);
  auto r = Call("POST", path, true, json::serialize(config), options_.call_timeout);
  if (!r) return r.error();
  if (r->status == 404) {
    auto e = ApiError(*r, "container create");
    const json::value* image = config.if_contains("Image");
    std::string image_name =
        image != nullptr && image->is_string() ? std::string(image->as_string()) : "";
    return MakeError("image_not_found", "the image \"" + image_name +
                                            "\" is not on this Docker host (" + e.message +
                                            "): " + BuildHint(image_name));
  }
  if (r->status != 201) return ApiError(*r, "container create");
  auto obj = ParseObject(r->body, "container create");
  if (!obj) return obj.error();
  std::string id = JsonString(*obj, "Id");
  if (id.empty()) return MakeError("internal", "container create answered without an Id");
  return id;
}

Status EngineClient::ContainerStart(std::string_view id) {
  auto r =
      Call("POST", "/containers/" + std::string(id) + "/start", true, "", options_.call_timeout);
  if (!r) return r.error();
  if (r->status != 204 && r->status != 304) return ApiError(*r, "container start");
  return {};
}

Result<std::unique_ptr<PendingWait>> EngineClient::ContainerWaitBegin(std::string_view id,
                                                                      std::string_view condition) {
  auto prefix = Prefix();
  if (!prefix) return prefix.error();
  auto exchange =
      Open("POST",
           *prefix + "/containers/" + std::string(id) + "/wait?condition=" + std::string(condition),
           Clock::now() + options_.call_timeout);
  if (!exchange) return exchange.error();
  if ((*exchange)->status() != 200) {
    Response resp;
    resp.status = (*exchange)->status();
    auto body = (*exchange)->ReadAll(Clock::now() + options_.quick_timeout);
    if (body) resp.body = *body;
    return ApiError(resp, "container wait");
  }
  return std::make_unique<PendingWait>(std::move(*exchange));
}

Result<json::object> EngineClient::ContainerInspect(std::string_view id) {
  auto r =
      Call("GET", "/containers/" + std::string(id) + "/json", true, "", options_.quick_timeout);
  if (!r) return r.error();
  if (r->status != 200) return ApiError(*r, "container inspect");
  return ParseObject(r->body, "container inspect");
}

Result<ContainerState> EngineClient::ContainerInspectState(std::string_view id) {
  auto obj = ContainerInspect(id);
  if (!obj) return obj.error();
  const json::value* state = obj->if_contains("State");
  if (state == nullptr || !state->is_object()) {
    return MakeError("internal", "container inspect lacks State");
  }
  const json::object& s = state->as_object();
  ContainerState out;
  out.status = JsonString(s, "Status");
  if (const json::value* v = s.if_contains("Running"); v != nullptr && v->is_bool()) {
    out.running = v->as_bool();
  }
  if (const json::value* v = s.if_contains("OOMKilled"); v != nullptr && v->is_bool()) {
    out.oom_killed = v->as_bool();
  }
  if (const json::value* v = s.if_contains("ExitCode"); v != nullptr && v->is_number()) {
    out.exit_code = v->to_number<int>();
  }
  out.error = JsonString(s, "Error");
  out.started_at = JsonString(s, "StartedAt");
  out.finished_at = JsonString(s, "FinishedAt");
  return out;
}

Result<std::unique_ptr<HttpExchange>> EngineClient::OpenStream(const std::string& target,
                                                               Clock::time_point deadline,
                                                               std::string_view what) {
  auto prefix = Prefix();
  if (!prefix) return prefix.error();
  auto exchange =
      Open("GET", *prefix + target, std::min(deadline, Clock::now() + options_.call_timeout));
  if (!exchange) return exchange.error();
  HttpExchange& ex = **exchange;
  if (ex.status() != 200) {
    Response resp;
    resp.status = ex.status();
    auto body = ex.ReadAll(Clock::now() + options_.quick_timeout);
    if (body) resp.body = *body;
    return ApiError(resp, what);
  }
  return exchange;
}

Result<EngineClient::StreamEnd> EngineClient::ReadStream(
    HttpExchange& ex, std::stop_token stop, Clock::time_point deadline,
    const std::function<Result<bool>(std::string_view)>& on_chunk) {
  while (!ex.body_done()) {
    if (stop.stop_requested()) return StreamEnd::kStopped;
    if (Clock::now() >= deadline) return StreamEnd::kDeadline;
    if (!ex.PollBody(std::min(deadline, Clock::now() + std::chrono::milliseconds(100)))) continue;
    if (Status st = ex.ReadError(); !st) return st.error();
    auto more = on_chunk(ex.TakeChunk());
    if (!more) return more.error();
    if (!*more) return StreamEnd::kSinkDone;
  }
  return StreamEnd::kBodyDone;
}

Status EngineClient::ContainerLogs(std::string_view id, const LogsOptions& options,
                                   const FrameSink& sink, std::stop_token stop,
                                   Clock::time_point deadline) {
  std::string target = "/containers/" + std::string(id) +
                       "/logs?follow=" + (options.follow ? "1" : "0") +
                       "&stdout=" + (options.stdout_stream ? "1" : "0") +
                       "&stderr=" + (options.stderr_stream ? "1" : "0");
  auto exchange = OpenStream(target, deadline, "container logs");
  if (!exchange) return exchange.error();
  FrameDemuxer demux;
  auto end = ReadStream(**exchange, stop, deadline, [&](std::string_view chunk) -> Result<bool> {
    if (Status st = demux.Feed(chunk, sink); !st) return st.error();
    return true;
  });
  if (!end) return end.error();
  if (*end == StreamEnd::kStopped) return MakeError("cancelled", "log streaming stopped");
  if (*end == StreamEnd::kDeadline) return (*exchange)->Timeout("streaming logs");
  return {};
}

Result<ContainerStats> EngineClient::ContainerStatsOnce(std::string_view id) {
  auto r = Call("GET", "/containers/" + std::string(id) + "/stats?stream=false&one-shot=true", true,
                "", options_.quick_timeout);
  if (!r) return r.error();
  if (r->status != 200) return ApiError(*r, "container stats");
  return ParseContainerStats(r->body);
}

Status EngineClient::ContainerStatsStream(
    std::string_view id, const std::function<bool(const ContainerStats&)>& on_sample,
    std::stop_token stop, Clock::time_point deadline) {
  auto exchange = OpenStream("/containers/" + std::string(id) + "/stats?stream=true", deadline,
                             "container stats");
  if (!exchange) return exchange.error();
  // One JSON document per line; a stop or the deadline ends it quietly.
  std::string pending;
  auto end = ReadStream(**exchange, stop, deadline, [&](std::string_view chunk) -> Result<bool> {
    pending.append(chunk);
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      if (line.empty()) continue;
      auto stats = ParseContainerStats(line);
      if (!stats) return stats.error();
      if (!on_sample(*stats)) return false;
    }
    if (pending.size() > kMaxBodyBytes) return MakeError("internal", "stats line too long");
    return true;
  });
  if (!end) return end.error();
  return {};
}

Status EngineClient::ContainerKill(std::string_view id, std::string_view signal) {
  auto r = Call("POST", "/containers/" + std::string(id) + "/kill?signal=" + std::string(signal),
                true, "", options_.call_timeout);
  if (!r) return r.error();
  // 409: not running any more, which is what we wanted.
  if (r->status != 204 && r->status != 409) return ApiError(*r, "container kill");
  return {};
}

Status EngineClient::ContainerStop(std::string_view id, std::chrono::seconds grace) {
  auto r =
      Call("POST", "/containers/" + std::string(id) + "/stop?t=" + std::to_string(grace.count()),
           true, "", options_.call_timeout + grace);
  if (!r) return r.error();
  if (r->status != 204 && r->status != 304) return ApiError(*r, "container stop");
  return {};
}

Status EngineClient::ContainerRemove(std::string_view id, bool force) {
  auto r = Call("DELETE", "/containers/" + std::string(id) + "?v=1&force=" + (force ? "1" : "0"),
                true, "", options_.call_timeout);
  if (!r) return r.error();
  if (r->status == 404) return {};  // already gone
  if (r->status == 409 && r->body.find("in progress") != std::string::npos) {
    // Another caller (autoremove, a concurrent reaper) is removing it: done
    // once it is gone, not before (a reaper that went on at once requeued a
    // task whose first container was still being killed).
    const auto until = Clock::now() + options_.call_timeout;
    while (Clock::now() < until) {
      auto inspect =
          Call("GET", "/containers/" + std::string(id) + "/json", true, "", options_.quick_timeout);
      if (!inspect) return inspect.error();
      if (inspect->status == 404) return {};
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return MakeError("unavailable", "Docker container remove: " + std::string(id) +
                                        " was still being removed by another caller after " +
                                        std::to_string(options_.call_timeout.count()) + " ms");
  }
  if (r->status != 204) return ApiError(*r, "container remove");
  return {};
}

Result<std::vector<ContainerSummary>> EngineClient::ContainerList(
    const std::vector<std::string>& labels) {
  json::array label_filters;
  for (const auto& l : labels) label_filters.emplace_back(l);
  json::object filters;
  filters["label"] = std::move(label_filters);
  auto r = Call("GET", "/containers/json?all=1&filters=" + PercentEncode(json::serialize(filters)),
                true, "", options_.quick_timeout);
  if (!r) return r.error();
  if (r->status != 200) return ApiError(*r, "container list");
  boost::system::error_code ec;
  json::value v = json::parse(r->body, ec);
  if (ec || !v.is_array()) {
    return MakeError("internal", "container list answered with something that is not a JSON array");
  }
  std::vector<ContainerSummary> out;
  for (const json::value& item : v.as_array()) {
    if (!item.is_object()) continue;
    const json::object& o = item.as_object();
    ContainerSummary s;
    s.id = JsonString(o, "Id");
    s.state = JsonString(o, "State");
    if (const json::value* lv = o.if_contains("Labels"); lv != nullptr && lv->is_object()) {
      for (const auto& kv : lv->as_object()) {
        if (kv.value().is_string())
          s.labels[std::string(kv.key())] = std::string(kv.value().as_string());
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

Result<std::unique_ptr<AttachedOutput>> EngineClient::ContainerAttach(std::string_view id,
                                                                      std::string_view data) {
  auto prefix = Prefix();
  if (!prefix) return prefix.error();
  const auto deadline = Clock::now() + options_.call_timeout;
  auto exchange = Open(
      "POST",
      *prefix + "/containers/" + std::string(id) + "/attach?stream=1&stdin=1&stdout=1&stderr=1",
      deadline, {}, /*upgrade=*/true);
  if (!exchange) return exchange.error();
  HttpExchange& ex = **exchange;
  if (ex.status() != 101 && ex.status() != 200) {
    Response response;
    response.status = ex.status();
    auto text = ex.ReadAll(deadline);
    if (text) response.body = std::move(*text);
    return ApiError(response, "container attach");
  }
  if (Status st = ex.WriteRaw(data, deadline); !st) return st.error();
  ex.CloseSend();
  return std::make_unique<AttachedOutput>(std::move(*exchange));
}

Status EngineClient::ContainerUpdate(std::string_view id, const json::object& resources) {
  auto r = Call("POST", "/containers/" + std::string(id) + "/update", true,
                json::serialize(resources), options_.call_timeout);
  if (!r) return r.error();
  if (r->status != 200) return ApiError(*r, "container update");
  return {};
}

}  // namespace runner::isolation::docker
