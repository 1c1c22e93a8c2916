#include "api/http_reply.h"

#include <algorithm>
#include <charconv>
#include <string>

#include "api/json_text.h"
#include "api/task_json.h"
#include "base/error_codes.h"

namespace runner::api {

namespace json = boost::json;
using httplib::Request;
using httplib::Response;

void SendError(Response& res, const Error& error) {
  res.status = errc::HttpStatusFor(error.code);
  res.set_content(ErrorBody(error), kJsonType);
}

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

void SendJson(Response& res, int status, const json::value& value) {
  res.status = status;
  res.set_content(WriteJson(value), kJsonType);
}

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

}  // namespace runner::api
