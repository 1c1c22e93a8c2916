#include "app/client/api_client.h"

#include <httplib.h>

namespace runner::app {
namespace {

namespace json = boost::json;

Error FromResponse(const httplib::Response& res) {
  json::error_code ec;
  json::value v = json::parse(res.body, ec);
  if (!ec && v.is_object()) {
    if (const auto* e = v.get_object().if_contains("error"); e != nullptr && e->is_object()) {
      const auto& o = e->get_object();
      std::string code = "internal";
      std::string message = "HTTP " + std::to_string(res.status);
      if (const auto* c = o.if_contains("code"); c != nullptr && c->is_string()) {
        code = std::string(c->get_string());
      }
      if (const auto* m = o.if_contains("message"); m != nullptr && m->is_string()) {
        message = std::string(m->get_string());
      }
      return MakeError(code, message);
    }
  }
  return MakeError(res.status >= 500 ? "internal" : "bad_request",
                   "HTTP " + std::to_string(res.status) + ": " + res.body.substr(0, 200));
}

Result<json::value> ParseJsonBody(const httplib::Response& res) {
  json::error_code ec;
  json::value v = json::parse(res.body, ec);
  if (ec) return MakeError("internal", "the server sent a body that is not JSON: " + ec.message());
  return v;
}

}  // namespace

ApiClient::ApiClient(ClientOptions options) : options_(std::move(options)) {
  http_ = std::make_unique<httplib::Client>(options_.server);
  http_->set_connection_timeout(options_.timeout);
  http_->set_read_timeout(options_.timeout);
  http_->set_write_timeout(options_.timeout);
  if (options_.token && !options_.token->empty()) http_->set_bearer_token_auth(*options_.token);
}

ApiClient::~ApiClient() = default;

Error ApiClient::Unreachable(const std::string& path, const std::string& why) const {
  return MakeError("unavailable", "cannot reach the runner server at " + options_.server + path +
                                      " (" + why +
                                      "); is `runner serve` running? Set --server or "
                                      "RUNNER_SERVER");
}

Result<json::value> ApiClient::GetJson(const std::string& path) {
  auto res = http_->Get(path.c_str());
  if (!res) return Unreachable(path, httplib::to_string(res.error()));
  if (res->status >= 400) return FromResponse(*res);
  return ParseJsonBody(*res);
}

Result<json::value> ApiClient::PostJson(const std::string& path, const json::value& body) {
  int status = 0;
  return PostJson(path, body, status);
}

Result<json::value> ApiClient::PostJson(const std::string& path, const json::value& body,
                                        int& status) {
  auto res = http_->Post(path.c_str(), json::serialize(body), "application/json");
  if (!res) return Unreachable(path, httplib::to_string(res.error()));
  status = res->status;
  if (res->status >= 400) return FromResponse(*res);
  return ParseJsonBody(*res);
}

Result<json::value> ApiClient::PutJson(const std::string& path, const json::value& body) {
  auto res = http_->Put(path.c_str(), json::serialize(body), "application/json");
  if (!res) return Unreachable(path, httplib::to_string(res.error()));
  if (res->status >= 400) return FromResponse(*res);
  return ParseJsonBody(*res);
}

Status ApiClient::Delete(const std::string& path) {
  auto res = http_->Delete(path.c_str());
  if (!res) return Unreachable(path, httplib::to_string(res.error()));
  if (res->status >= 400) return FromResponse(*res);
  return {};
}

Result<std::string> ApiClient::GetText(const std::string& path) {
  auto res = http_->Get(path.c_str());
  if (!res) return Unreachable(path, httplib::to_string(res.error()));
  if (res->status >= 400) return FromResponse(*res);
  return res->body;
}

Status ApiClient::Stream(const std::string& path,
                         const std::function<bool(const SseMessage&)>& on_message) {
  httplib::Client client(options_.server);
  client.set_connection_timeout(options_.timeout);
  client.set_read_timeout(options_.stream_idle_timeout);
  if (options_.token && !options_.token->empty()) client.set_bearer_token_auth(*options_.token);
  SseParser parser;
  bool stopped = false;
  std::string error_body;
  int status = 0;
  auto res = client.Get(
      path.c_str(), httplib::Headers{{"Accept", "text/event-stream"}},
      [&](const httplib::Response& r) {
        status = r.status;
        return true;
      },
      [&](const char* data, size_t len) {
        if (status >= 400) {
          if (error_body.size() < 65536) error_body.append(data, len);
          return true;
        }
        if (!parser.Feed(std::string_view(data, len), on_message)) {
          stopped = true;
          return false;
        }
        return true;
      });
  if (stopped) return {};
  if (status >= 400) {
    httplib::Response r;
    r.status = status;
    r.body = error_body;
    return FromResponse(r);
  }
  if (!res) return Unreachable(path, httplib::to_string(res.error()));
  return {};
}

bool SseParser::Feed(std::string_view bytes,
                     const std::function<bool(const SseMessage&)>& on_message) {
  for (char ch : bytes) {
    if (ch != '\n') {
      line_ += ch;
      continue;
    }
    if (!line_.empty() && line_.back() == '\r') line_.pop_back();
    if (line_.empty()) {
      if (has_data_) {
        if (current_.event.empty()) current_.event = "message";
        bool go_on = on_message(current_);
        current_ = SseMessage{};
        has_data_ = false;
        if (!go_on) return false;
      } else {
        current_.event.clear();
      }
    } else if (line_[0] != ':') {
      auto colon = line_.find(':');
      std::string field = line_.substr(0, colon);
      std::string value = colon == std::string::npos ? "" : line_.substr(colon + 1);
      if (!value.empty() && value[0] == ' ') value.erase(0, 1);
      if (field == "data") {
        if (has_data_) current_.data += '\n';
        current_.data += value;
        has_data_ = true;
      } else if (field == "event") {
        current_.event = value;
      } else if (field == "id") {
        current_.id = value;
      }
    }
    line_.clear();
  }
  return true;
}

}  // namespace runner::app
