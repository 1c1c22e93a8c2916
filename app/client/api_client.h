#pragma once

// A small HTTP client of the REST API (docs/api.md) for the CLI. Server errors come
// back as Error{code, message} exactly as the server sent them; a server that
// cannot be reached is `unavailable` with a message naming the URL.
//
// Thread-safety: one ApiClient per thread.

#include <boost/json.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "base/result.h"

namespace httplib {
class Client;
}

namespace runner::app {

struct ClientOptions {
  std::string server = "http://127.0.0.1:8080";  // --server, RUNNER_SERVER
  std::optional<std::string> token;              // --token, RUNNER_API_TOKEN
  std::chrono::seconds timeout{30};
  std::chrono::seconds stream_idle_timeout{60};  // SSE: > the server's heartbeat
};

struct SseMessage {
  std::string id;
  std::string event;  // "message" when the server named none
  std::string data;
};

class ApiClient {
 public:
  explicit ApiClient(ClientOptions options);
  ~ApiClient();
  ApiClient(const ApiClient&) = delete;
  ApiClient& operator=(const ApiClient&) = delete;

  Result<boost::json::value> GetJson(const std::string& path);
  Result<boost::json::value> PostJson(const std::string& path, const boost::json::value& body);
  // Also returns the HTTP status (201 vs 200 on submit).
  Result<boost::json::value> PostJson(const std::string& path, const boost::json::value& body,
                                      int& status);
  Result<boost::json::value> PutJson(const std::string& path, const boost::json::value& body);
  // DELETE; the answer has no body.
  Status Delete(const std::string& path);
  Result<std::string> GetText(const std::string& path);
  // Reads an SSE stream until it ends or on_message returns false.
  Status Stream(const std::string& path, const std::function<bool(const SseMessage&)>& on_message);

 private:
  Error Unreachable(const std::string& path, const std::string& why) const;

  ClientOptions options_;
  std::unique_ptr<httplib::Client> http_;
};

// Incremental SSE parser: feed bytes, get whole messages.
class SseParser {
 public:
  // Returns false when a callback asked to stop.
  bool Feed(std::string_view bytes, const std::function<bool(const SseMessage&)>& on_message);

 private:
  std::string line_;
  SseMessage current_;
  bool has_data_ = false;
};

}  // namespace runner::app
